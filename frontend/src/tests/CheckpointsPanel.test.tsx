import { fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CheckpointsPanel } from '../components/CheckpointsPanel';
import type { CheckpointsPublic, JobAccepted, JobPublic } from '../services/types';

const checkpoints: CheckpointsPublic = {
  data: [
    {
      checkpoint_id: 'ckpt-a',
      step: 1,
      node: 'analyze',
      next: ['plan'],
      created: '2026-12-07T10:00:00Z',
      current_version: 'v0000',
      attempts: 0,
      status: 'running',
    },
    {
      checkpoint_id: 'ckpt-b',
      step: 4,
      node: 'evaluate',
      next: ['decide'],
      created: '2026-12-07T10:01:00Z',
      current_version: 'v0002',
      attempts: 2,
      status: null,
    },
  ],
  count: 2,
};

const forked: JobPublic = {
  id: 'job-2',
  goal: 'under 6 MB',
  model: 'policy',
  target: null,
  reasoner: 'rules',
  status: 'queued',
  created: '2026-12-07T10:05:00Z',
  updated: '2026-12-07T10:05:00Z',
  finished: null,
  parent_job_id: 'job-1',
  fork_checkpoint_id: 'ckpt-b',
  goal_met: null,
  best_version: null,
  error: null,
  attempts_count: 0,
  queue_position: 1,
  attempts: [],
  links: { events: '', websocket: '', report: '', checkpoints: '' },
};

const accepted: JobAccepted = { job: forked, goal: null, estimated_memory_mb: 120.5 };

const reply = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

function checkpointRows(): HTMLElement[] {
  const table = screen.getByText('Current version').closest('table') as HTMLElement;
  return within(table)
    .getAllByRole('row')
    .filter((row) => row.querySelector('td') && !row.classList.contains('ant-table-placeholder'));
}

describe('CheckpointsPanel', () => {
  beforeEach(() => {
    window.location.hash = '#/jobs/job-1';
  });

  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it('lists the checkpoints the API returns', async () => {
    const fetch = vi.fn().mockResolvedValue(reply(checkpoints));
    vi.stubGlobal('fetch', fetch);
    render(<CheckpointsPanel jobId="job-1" />);

    expect(await screen.findByText('evaluate')).toBeInTheDocument();
    expect(fetch).toHaveBeenCalledWith('/api/v1/jobs/job-1/checkpoints', expect.anything());
    const rows = checkpointRows();
    expect(rows).toHaveLength(2);
    expect(rows[0]).toHaveTextContent('analyze');
    expect(rows[0]).toHaveTextContent('plan');
    expect(rows[0]).toHaveTextContent('v0000');
    expect(rows[0]).toHaveTextContent('running');
    expect(rows[1]).toHaveTextContent('4');
    expect(rows[1]).toHaveTextContent('v0002');
    expect(rows[1]).toHaveTextContent('decide');
    expect(within(rows[1]).getByRole('button', { name: 'Replay from step 4' })).toHaveTextContent(
      'Replay from here',
    );
  });

  it('replay POSTs the checkpoint id (and the new goal) and opens the new job', async () => {
    const fetch = vi.fn().mockResolvedValueOnce(reply(checkpoints)).mockResolvedValueOnce(reply(accepted, 202));
    vi.stubGlobal('fetch', fetch);
    render(<CheckpointsPanel jobId="job-1" />);
    await screen.findByText('evaluate');

    fireEvent.change(screen.getByLabelText('Replay goal'), { target: { value: '  under 6 MB  ' } });
    await userEvent.click(screen.getByRole('button', { name: 'Replay from step 4' }));

    await waitFor(() => expect(window.location.hash).toBe('#/jobs/job-2'));
    expect(fetch).toHaveBeenCalledTimes(2);
    const [url, init] = fetch.mock.calls[1] as [string, RequestInit];
    expect(url).toBe('/api/v1/jobs/job-1/replay');
    expect(init.method).toBe('POST');
    expect(JSON.parse(String(init.body))).toEqual({ checkpoint_id: 'ckpt-b', goal: 'under 6 MB' });
  });

  it('replay without a new goal sends only the checkpoint id', async () => {
    const fetch = vi.fn().mockResolvedValueOnce(reply(checkpoints)).mockResolvedValueOnce(reply(accepted, 202));
    vi.stubGlobal('fetch', fetch);
    render(<CheckpointsPanel jobId="job-1" />);
    await screen.findByText('analyze');

    await userEvent.click(screen.getByRole('button', { name: 'Replay from step 1' }));

    await waitFor(() => expect(window.location.hash).toBe('#/jobs/job-2'));
    const [url, init] = fetch.mock.calls[1] as [string, RequestInit];
    expect(url).toBe('/api/v1/jobs/job-1/replay');
    expect(JSON.parse(String(init.body))).toEqual({ checkpoint_id: 'ckpt-a' });
  });

  it('a refused replay shows the message and hint and stays on the job', async () => {
    const refusal = {
      code: 'goal_unclear',
      message: 'Is 0.1 ms on the Jetson a hard limit?',
      detail: {},
      hint: 'answer with a reachable latency',
    };
    const fetch = vi.fn().mockResolvedValueOnce(reply(checkpoints)).mockResolvedValueOnce(reply(refusal, 422));
    vi.stubGlobal('fetch', fetch);
    render(<CheckpointsPanel jobId="job-1" />);
    await screen.findByText('evaluate');

    fireEvent.change(screen.getByLabelText('Replay goal'), { target: { value: 'under 0.1 ms' } });
    await userEvent.click(screen.getByRole('button', { name: 'Replay from step 4' }));

    const alert = await screen.findByRole('alert');
    expect(alert).toHaveTextContent('Is 0.1 ms on the Jetson a hard limit?');
    expect(alert).toHaveTextContent('Hint: answer with a reachable latency');
    expect(alert).toHaveTextContent('code: goal_unclear');
    expect(window.location.hash).toBe('#/jobs/job-1');
  });

  it('a failed listing shows the API error', async () => {
    const missing = {
      code: 'not_found',
      message: "job 'job-x' not found",
      detail: {},
      hint: 'list jobs with GET /api/v1/jobs',
    };
    vi.stubGlobal('fetch', vi.fn().mockResolvedValue(reply(missing, 404)));
    render(<CheckpointsPanel jobId="job-x" />);

    const alert = await screen.findByRole('alert');
    expect(alert).toHaveTextContent("job 'job-x' not found");
    expect(alert).toHaveTextContent('Hint: list jobs with GET /api/v1/jobs');
    expect(screen.getByText('no checkpoint yet')).toBeInTheDocument();
  });
});
