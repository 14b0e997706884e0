// A job's events as a pure reducer: kept in seq order, each seq once, so a reconnect that replays events
// from the last seen seq (or from 0) never adds a duplicate row. The views (progress, steps, attempts,
// timeline) are derived from the ordered events.
import type { JobEvent } from '../services/types';

export interface JobEventsState {
  events: JobEvent[];
  lastSeq: number;
  /** `stream:end` arrived: nothing more follows. */
  ended: boolean;
}

export type JobEventsAction =
  | { type: 'events'; events: JobEvent[] }
  | { type: 'end'; lastSeq: number }
  | { type: 'reset' };

export const initialJobEvents: JobEventsState = { events: [], lastSeq: 0, ended: false };

/** Merge events into a seq-ordered list, dropping any seq already present (pure). */
export function mergeEvents(current: JobEvent[], incoming: JobEvent[]): JobEvent[] {
  const seen = new Set(current.map((e) => e.seq));
  const fresh: JobEvent[] = [];
  for (const event of incoming) {
    if (!Number.isInteger(event.seq) || seen.has(event.seq)) continue;
    seen.add(event.seq);
    fresh.push(event);
  }
  if (fresh.length === 0) return current;
  return [...current, ...fresh].sort((a, b) => a.seq - b.seq);
}

export function jobEventsReducer(state: JobEventsState, action: JobEventsAction): JobEventsState {
  switch (action.type) {
    case 'events': {
      const events = mergeEvents(state.events, action.events);
      if (events === state.events) return state;
      return { ...state, events, lastSeq: events[events.length - 1].seq };
    }
    case 'end':
      return { ...state, ended: true, lastSeq: Math.max(state.lastSeq, action.lastSeq) };
    case 'reset':
      return initialJobEvents;
  }
}

// --- derived views ---

export interface StepProgress {
  step: string;
  percent: number;
  message: string;
}

export interface AttemptRow {
  index: number;
  technique: string;
  status: string;
  reason: string;
  version: string | null;
  p50_ms: number | null;
  size_mb: number | null;
  accuracy: { metric: string; value: number } | null;
  duration_s: number | null;
  seq: number;
}

export interface TimelineItem {
  seq: number;
  kind: 'step' | 'status' | 'error' | 'complete';
  text: string;
}

export interface JobView {
  current: StepProgress | null;
  steps: StepProgress[];
  attempts: AttemptRow[];
  timeline: TimelineItem[];
  complete: Record<string, unknown> | null;
  error: { code: string; message: string; hint: string | null } | null;
}

const num = (value: unknown): number | null =>
  typeof value === 'number' && Number.isFinite(value) ? value : null;
const str = (value: unknown, fallback = ''): string =>
  value === undefined || value === null ? fallback : String(value);

function attemptRow(event: JobEvent): AttemptRow {
  const d = event.data;
  const acc = d.accuracy;
  let accuracy: AttemptRow['accuracy'] = null;
  if (acc && typeof acc === 'object') {
    const a = acc as Record<string, unknown>;
    const value = num(a.value);
    if (value !== null) accuracy = { metric: str(a.metric, 'accuracy'), value };
  }
  return {
    index: num(d.index) ?? 0,
    technique: str(d.technique),
    status: str(d.status),
    reason: str(d.reason),
    version: d.version ? str(d.version) : null,
    p50_ms: num(d.p50_ms),
    size_mb: num(d.size_mb),
    accuracy,
    duration_s: num(d.duration_s),
    seq: event.seq,
  };
}

/** One line for the status events a user wants to see (as server/progress.py status_line), null for the rest. */
export function statusText(data: Record<string, unknown>): string | null {
  const state = data.state;
  if (state === 'node') return `${str(data.node)}: ${str(data.message)}`.replace(/: $/, '');
  if (state === 'planned') {
    if (data.action === 'finish') return `plan: finish (${str(data.rationale)})`;
    const steps = Array.isArray(data.steps) ? data.steps : [];
    const names = steps.map((s) => str((s as Record<string, unknown>)?.type)).join(' -> ');
    return `plan: ${names} (${str(data.rationale)})`;
  }
  if (state === 'rolled_back') {
    if (data.from_version == null)
      return `rollback: attempt ${str(data.attempt)} failed; staying at ${str(data.to_version)}`;
    return `rollback: ${str(data.from_version)} rejected, back to ${str(data.to_version)}`;
  }
  if (state === 'analyzed') return `analysis: ${str(data.summary)}`;
  if (state === 'needs_input' || state === 'resumed' || state === 'forked' || state === 'budget_spent') {
    const detail = data.question ?? data.message ?? data.parent_job ?? data.next;
    return `${String(state).replace('_', ' ')}: ${str(detail)}`;
  }
  return null;
}

/** The page's view of the events: latest step's progress, each step's last percent, attempts by index. */
export function deriveJobView(events: JobEvent[]): JobView {
  const steps = new Map<string, StepProgress>();
  const attempts = new Map<number, AttemptRow>();
  const timeline: TimelineItem[] = [];
  let current: StepProgress | null = null;
  let complete: JobView['complete'] = null;
  let error: JobView['error'] = null;
  for (const event of events) {
    const d = event.data;
    if (event.type === 'progress') {
      const step = str(d.step, 'working');
      current = { step, percent: Math.min(100, Math.max(0, num(d.percent) ?? 0)), message: str(d.message) };
      if (!steps.has(step)) timeline.push({ seq: event.seq, kind: 'step', text: step });
      steps.set(step, current);
    } else if (event.type === 'attempt') {
      const row = attemptRow(event);
      attempts.set(row.index, row);
    } else if (event.type === 'status') {
      const text = statusText(d);
      if (text) timeline.push({ seq: event.seq, kind: 'status', text });
    } else if (event.type === 'error') {
      error = { code: str(d.code, 'error'), message: str(d.message), hint: d.hint ? str(d.hint) : null };
      timeline.push({ seq: event.seq, kind: 'error', text: `error: [${error.code}] ${error.message}` });
    } else if (event.type === 'complete') {
      complete = d;
      const verdict = d.goal_met ? 'goal met' : str(d.status, 'done').replace(/_/g, ' ');
      timeline.push({ seq: event.seq, kind: 'complete', text: `done: ${verdict}` });
    }
  }
  return {
    current,
    steps: [...steps.values()],
    attempts: [...attempts.values()].sort((a, b) => a.index - b.index),
    timeline,
    complete,
    error,
  };
}
