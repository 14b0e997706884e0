import { describe, expect, it } from 'vitest';
import {
  deriveJobView,
  initialJobEvents,
  jobEventsReducer,
  mergeEvents,
  statusText,
} from '../state/jobEvents';
import type { JobEventsState } from '../state/jobEvents';
import { event } from './fakeSocket';

const attempt = (seq: number, index: number, status: string, extra: Record<string, unknown> = {}) =>
  event(seq, 'attempt', { index, technique: `t${index}`, status, reason: `r${index}`, ...extra });

function apply(state: JobEventsState, ...batches: ReturnType<typeof event>[][]): JobEventsState {
  return batches.reduce((s, events) => jobEventsReducer(s, { type: 'events', events }), state);
}

describe('jobEventsReducer', () => {
  it('keeps events in seq order whatever order they arrive in', () => {
    const state = apply(initialJobEvents, [event(3, 'status', {}), event(1, 'progress', {}), event(2, 'status', {})]);
    expect(state.events.map((e) => e.seq)).toEqual([1, 2, 3]);
    expect(state.lastSeq).toBe(3);
  });

  it('drops a seq it already has and returns the same state when nothing is new', () => {
    const once = apply(initialJobEvents, [event(1, 'progress', { step: 'analyze', percent: 10 })]);
    const again = jobEventsReducer(once, { type: 'events', events: [event(1, 'progress', { percent: 99 })] });
    expect(again).toBe(once);
    const dupInBatch = apply(initialJobEvents, [event(5, 'status', {}), event(5, 'status', {})]);
    expect(dupInBatch.events).toHaveLength(1);
  });

  it('a reconnect replaying from an earlier seq adds no duplicate attempt rows', () => {
    const live = apply(initialJobEvents, [attempt(1, 1, 'accepted'), attempt(2, 2, 'rejected')]);
    // the socket reconnects and the server replays from seq 0 (or from the last seen seq) plus one new event
    const replayed = apply(live, [attempt(1, 1, 'accepted'), attempt(2, 2, 'rejected'), attempt(3, 3, 'failed')]);
    const view = deriveJobView(replayed.events);
    expect(view.attempts.map((a) => a.index)).toEqual([1, 2, 3]);
    expect(replayed.events.map((e) => e.seq)).toEqual([1, 2, 3]);
  });

  it('stream end marks the stream ended and reset empties it', () => {
    const ended = jobEventsReducer(apply(initialJobEvents, [event(1, 'status', {})]), { type: 'end', lastSeq: 4 });
    expect(ended.ended).toBe(true);
    expect(ended.lastSeq).toBe(4);
    expect(jobEventsReducer(ended, { type: 'reset' })).toEqual(initialJobEvents);
  });

  it('mergeEvents ignores events without an integer seq', () => {
    const bad = { ...event(1, 'status', {}), seq: Number.NaN };
    expect(mergeEvents([], [bad])).toEqual([]);
  });
});

describe('deriveJobView', () => {
  it('derives progress, steps, attempts, timeline and the end', () => {
    const view = deriveJobView([
      event(1, 'progress', { step: 'analyze', percent: 0, message: 'start' }),
      event(2, 'progress', { step: 'analyze', percent: 100, message: 'done' }),
      event(3, 'status', { state: 'planned', steps: [{ type: 'ort_int8_dynamic' }], rationale: 'fast' }),
      event(4, 'progress', { step: 'evaluate', percent: 50, message: 'half' }),
      attempt(5, 1, 'accepted', { p50_ms: 1.5, size_mb: 2.25, accuracy: { metric: 'mse', value: 0.01 } }),
      attempt(6, 1, 'accepted', { p50_ms: 1.4, size_mb: 2.25 }),
      event(7, 'complete', { status: 'succeeded', goal_met: true, final_version: 'v0002' }),
    ]);
    expect(view.current).toEqual({ step: 'evaluate', percent: 50, message: 'half' });
    expect(view.steps.map((s) => [s.step, s.percent])).toEqual([
      ['analyze', 100],
      ['evaluate', 50],
    ]);
    expect(view.attempts).toHaveLength(1);
    expect(view.attempts[0].p50_ms).toBe(1.4);
    expect(view.timeline.map((t) => t.text)).toEqual([
      'analyze',
      'plan: ort_int8_dynamic (fast)',
      'evaluate',
      'done: goal met',
    ]);
    expect(view.complete?.final_version).toBe('v0002');
  });

  it('an error event becomes the view error', () => {
    const view = deriveJobView([event(1, 'error', { code: 'child_crashed', message: 'boom', hint: 'retry' })]);
    expect(view.error).toEqual({ code: 'child_crashed', message: 'boom', hint: 'retry' });
  });

  it('statusText skips events a user does not need', () => {
    expect(statusText({ state: 'heartbeat' })).toBeNull();
    expect(statusText({ state: 'rolled_back', attempt: 2, to_version: 'v0001' })).toBe(
      'rollback: attempt 2 failed; staying at v0001',
    );
  });
});
