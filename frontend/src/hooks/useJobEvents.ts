// A job's events from the socket into the pure reducer; the derived view is memoised.
import { useEffect, useMemo, useReducer, useState } from 'react';
import { useWebSocket } from '../context/WebSocketContext';
import type { ErrorPublic } from '../services/types';
import { deriveJobView, initialJobEvents, jobEventsReducer } from '../state/jobEvents';

export function useJobEvents(jobId: string) {
  const { subscribe, connected } = useWebSocket();
  const [state, dispatch] = useReducer(jobEventsReducer, initialJobEvents);
  const [streamError, setStreamError] = useState<ErrorPublic | null>(null);

  useEffect(() => {
    dispatch({ type: 'reset' });
    setStreamError(null);
    return subscribe(jobId, 0, {
      onEvent: (event) => dispatch({ type: 'events', events: [event] }),
      onEnd: (end) => dispatch({ type: 'end', lastSeq: end.last_seq }),
      onError: setStreamError,
    });
  }, [jobId, subscribe]);

  const view = useMemo(() => deriveJobView(state.events), [state.events]);
  return { state, view, connected, streamError };
}
