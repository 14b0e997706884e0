import { act, render, screen, waitFor, within } from '@testing-library/react';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { AuthProvider } from '../context/AuthContext';
import { WebSocketProvider } from '../context/WebSocketContext';
import * as api from '../services/api';
import type { JobPublic } from '../services/types';
import { JobView } from '../pages/JobView';
import { FakeSocket, event } from './fakeSocket';

const sockets = vi.hoisted(() => ({ created: [] as unknown[], options: [] as unknown[] }));

vi.mock('socket.io-client', async () => {
  const { FakeSocket: Fake } = await import('./fakeSocket');
  return {
    io: vi.fn((options: unknown) => {
      const socket = new Fake();
      sockets.created.push(socket);
      sockets.options.push(options);
      return socket;
    }),
  };
});

vi.mock('../services/api', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../services/api')>();
  return { ...actual, getJob: vi.fn(), cancelJob: vi.fn(), getCheckpoints: vi.fn() };
});

const job: JobPublic = {
  id: 'job-1',
  goal: 'under 8 MB',
  model: 'policy',
  target: null,
  reasoner: 'rules',
  status: 'running',
  created: '2026-12-07T10:00:00Z',
  updated: '2026-12-07T10:00:00Z',
  finished: null,
  parent_job_id: null,
  fork_checkpoint_id: null,
  goal_met: null,
  best_version: null,
  error: null,
  attempts_count: 0,
  queue_position: null,
  attempts: [],
  links: { events: '', websocket: '', report: '', checkpoints: '' },
};

const attempt = (seq: number, index: number, technique: string, status: string, reason: string) =>
  event(seq, 'attempt', { index, technique, status, reason, p50_ms: 1.25 * index, size_mb: 4 / index });

function socket(): FakeSocket {
  return sockets.created[sockets.created.length - 1] as FakeSocket;
}

function attemptRows(): HTMLElement[] {
  const table = screen.getByText('Technique').closest('table') as HTMLElement;
  return within(table)
    .getAllByRole('row')
    .filter((row) => row.querySelector('td') && !row.classList.contains('ant-table-placeholder'));
}

describe('JobView', () => {
  beforeEach(() => {
    sockets.created.length = 0;
    sockets.options.length = 0;
    vi.mocked(api.getJob).mockClear().mockResolvedValue(job);
    vi.mocked(api.getCheckpoints).mockResolvedValue({ data: [], count: 0 });
  });

  function renderView() {
    return render(
      <AuthProvider>
        <WebSocketProvider>
          <JobView jobId="job-1" />
        </WebSocketProvider>
      </AuthProvider>,
    );
  }

  it('events update the progress bar and the attempts table', async () => {
    renderView();
    act(() => socket().fire('connect'));
    expect(socket().subscriptions()).toEqual([{ job_id: 'job-1', after_seq: 0 }]);
    expect(await screen.findByText('under 8 MB')).toBeInTheDocument();

    act(() => socket().send(event(1, 'progress', { step: 'analyze', percent: 40, message: 'profiling' })));
    expect(screen.getByRole('progressbar', { name: 'Job progress' })).toHaveAttribute('aria-valuenow', '40');
    expect(screen.getByText('analyze: profiling')).toBeInTheDocument();

    act(() => {
      socket().send(attempt(2, 1, 'ort_int8_dynamic', 'accepted', 'meets size'));
      socket().send(attempt(3, 2, 'prune_30', 'rejected', 'accuracy dropped 5 points'));
    });
    const rows = attemptRows();
    expect(rows).toHaveLength(2);
    expect(rows[0]).toHaveTextContent('ort_int8_dynamic');
    expect(rows[0]).toHaveTextContent('accepted');
    expect(rows[0]).toHaveTextContent('1.250');
    expect(rows[0]).toHaveTextContent('4.00');
    expect(rows[1]).toHaveTextContent('rejected');
    expect(rows[1]).toHaveTextContent('accuracy dropped 5 points');

    act(() => socket().send(event(4, 'complete', { status: 'succeeded', goal_met: true, final_version: 'v0002' })));
    expect(screen.getByRole('progressbar', { name: 'Job progress' })).toHaveAttribute('aria-valuenow', '100');
    expect(screen.getByText(/Goal met; final version v0002/)).toBeInTheDocument();
  });

  it('shows the job running once its events arrive, though it was queued when the page opened', async () => {
    vi.mocked(api.getJob).mockResolvedValue({ ...job, status: 'queued', queue_position: 0 });
    renderView();
    act(() => socket().fire('connect'));
    const status = () =>
      screen.getByText('Status', { selector: '.ant-descriptions-item-label' }).closest('.ant-descriptions-item') as HTMLElement;
    expect(await screen.findByText('under 8 MB')).toBeInTheDocument();
    expect(status()).toHaveTextContent('queued');

    act(() => socket().send(event(1, 'status', { state: 'running', goal: 'under 8 MB' })));
    expect(status()).toHaveTextContent('running');
    expect(status()).not.toHaveTextContent('queued');

    act(() => socket().send(event(2, 'complete', { status: 'best_effort', goal_met: false })));
    expect(status()).toHaveTextContent('best_effort');
  });

  it('after a reconnect it resumes from the last seen seq and shows no duplicate rows', async () => {
    renderView();
    act(() => socket().fire('connect'));
    act(() => {
      socket().send(attempt(1, 1, 'ort_int8_dynamic', 'accepted', 'ok'));
      socket().send(attempt(2, 2, 'prune_30', 'rejected', 'too slow'));
    });
    expect(attemptRows()).toHaveLength(2);

    act(() => socket().fire('disconnect'));
    act(() => socket().fire('connect'));
    expect(socket().subscriptions()).toEqual([
      { job_id: 'job-1', after_seq: 0 },
      { job_id: 'job-1', after_seq: 2 },
    ]);
    // a replay that overlaps what was already seen, then a new attempt
    act(() => {
      socket().send(attempt(2, 2, 'prune_30', 'rejected', 'too slow'));
      socket().send(attempt(3, 3, 'fp16', 'failed', 'child crashed'));
    });
    const rows = attemptRows();
    expect(rows).toHaveLength(3);
    expect(rows.map((r) => r.textContent)).toEqual([
      expect.stringContaining('ort_int8_dynamic'),
      expect.stringContaining('prune_30'),
      expect.stringContaining('fp16'),
    ]);

    act(() => socket().fire('stream:end', { job_id: 'job-1', last_seq: 3 }));
    act(() => socket().fire('disconnect'));
    act(() => socket().fire('connect'));
    expect(socket().subscriptions()).toHaveLength(2); // an ended stream is not followed again
    await waitFor(() => expect(api.getJob).toHaveBeenCalledTimes(2)); // the job is read again once it ended
  });

  it('sends the API key as the socket auth token', () => {
    api.setApiKey('secret');
    renderView();
    expect(sockets.options[0]).toMatchObject({ path: '/socket.io', auth: { token: 'secret' } });
    api.setApiKey(null);
  });

  it('links a replayed job back to its parent', async () => {
    vi.mocked(api.getJob).mockResolvedValue({ ...job, parent_job_id: 'job-0', fork_checkpoint_id: 'cp-3' });
    renderView();
    const link = await screen.findByRole('link', { name: 'Parent job job-0' });
    expect(link).toHaveAttribute('href', '#/jobs/job-0');
    expect(screen.getByText(/at checkpoint cp-3/)).toBeInTheDocument();
  });
});
