// One Socket.io client for the page (/socket.io). A job view subscribes to a job from a seq; on every
// (re)connect each live subscription is sent again with the last seq it saw, so the server resumes the
// stream there (no polling; the reducer drops any seq it already has).
import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState } from 'react';
import type { ReactNode } from 'react';
import { io } from 'socket.io-client';
import type { Socket } from 'socket.io-client';
import type { ErrorPublic, JobEvent, JobEventType, StreamEnd, SubscribeAck } from '../services/types';
import { useAuth } from './AuthContext';

export const JOB_EVENT_TYPES: JobEventType[] = [
  'progress',
  'status',
  'attempt',
  'checkpoint',
  'error',
  'complete',
];

export interface JobStreamHandlers {
  onEvent: (event: JobEvent) => void;
  onEnd?: (end: StreamEnd) => void;
  onError?: (error: ErrorPublic) => void;
}

export interface WebSocketState {
  connected: boolean;
  /** Why the last connection attempt failed, when it did. */
  connectError: string | null;
  /** Follow a job's events after `afterSeq`; returns the function that stops following. */
  subscribe: (jobId: string, afterSeq: number, handlers: JobStreamHandlers) => () => void;
}

interface Subscription {
  lastSeq: number;
  ended: boolean;
  handlers: JobStreamHandlers;
}

const WebSocketContext = createContext<WebSocketState | null>(null);

function isUnauthorized(error: Error & { data?: unknown }): boolean {
  const data = error.data as { code?: string } | undefined;
  return data?.code === 'unauthorized' || /api key/i.test(error.message);
}

export function WebSocketProvider({ children }: { children: ReactNode }) {
  const { apiKey, requestKey } = useAuth();
  const socketRef = useRef<Socket | null>(null);
  const subs = useRef(new Map<string, Subscription>());
  const [connected, setConnected] = useState(false);
  const [connectError, setConnectError] = useState<string | null>(null);

  const sendSubscribe = useCallback((socket: Socket, jobId: string) => {
    const sub = subs.current.get(jobId);
    if (!sub || sub.ended) return;
    socket.emit('subscribe', { job_id: jobId, after_seq: sub.lastSeq }, (ack: SubscribeAck) => {
      if ('error' in ack) subs.current.get(jobId)?.handlers.onError?.(ack.error);
    });
  }, []);

  useEffect(() => {
    const socket = io({ path: '/socket.io', auth: apiKey ? { token: apiKey } : {} });
    socketRef.current = socket;
    socket.on('connect', () => {
      setConnected(true);
      setConnectError(null);
      for (const jobId of subs.current.keys()) sendSubscribe(socket, jobId);
    });
    socket.on('disconnect', () => setConnected(false));
    socket.on('connect_error', (error: Error & { data?: unknown }) => {
      setConnected(false);
      setConnectError(error.message);
      if (isUnauthorized(error)) void requestKey(Boolean(apiKey)); // a new key makes a new socket (this effect re-runs)
    });
    for (const type of JOB_EVENT_TYPES) {
      socket.on(`optimization:${type}`, (event: JobEvent) => {
        const sub = subs.current.get(event.job_id);
        if (!sub) return;
        sub.lastSeq = Math.max(sub.lastSeq, event.seq);
        sub.handlers.onEvent(event);
      });
    }
    socket.on('stream:end', (end: StreamEnd) => {
      const sub = subs.current.get(end.job_id);
      if (!sub) return;
      sub.ended = true;
      sub.lastSeq = Math.max(sub.lastSeq, end.last_seq);
      sub.handlers.onEnd?.(end);
    });
    return () => {
      socket.removeAllListeners();
      socket.disconnect();
      socketRef.current = null;
    };
  }, [apiKey, requestKey, sendSubscribe]);

  const subscribe = useCallback(
    (jobId: string, afterSeq: number, handlers: JobStreamHandlers) => {
      const sub: Subscription = { lastSeq: afterSeq, ended: false, handlers };
      subs.current.set(jobId, sub);
      const socket = socketRef.current;
      if (socket?.connected) sendSubscribe(socket, jobId);
      return () => {
        if (subs.current.get(jobId) !== sub) return;
        subs.current.delete(jobId);
        if (socketRef.current?.connected) socketRef.current.emit('unsubscribe', { job_id: jobId });
      };
    },
    [sendSubscribe],
  );

  const value = useMemo(
    () => ({ connected, connectError, subscribe }),
    [connected, connectError, subscribe],
  );
  return <WebSocketContext.Provider value={value}>{children}</WebSocketContext.Provider>;
}

export function useWebSocket(): WebSocketState {
  const state = useContext(WebSocketContext);
  if (!state) throw new Error('useWebSocket needs a <WebSocketProvider>');
  return state;
}
