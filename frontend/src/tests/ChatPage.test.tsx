import { fireEvent, render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import * as api from '../services/api';
import type { ChatResponse, GoalSpec, JobPublic, ReferencesPublic } from '../services/types';
import { ChatPage } from '../pages/ChatPage';

vi.mock('../services/api', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../services/api')>();
  return { ...actual, chat: vi.fn(), listModels: vi.fn(), getReferences: vi.fn() };
});

const goal: GoalSpec = {
  criteria: {
    max_size_mb: 8,
    max_latency_ms: 2,
    latency_target: 'jetson-orin-nano-8gb',
    max_memory_mb: null,
    accuracy_floor: null,
    max_accuracy_drop: 2,
    accuracy_drop_unit: 'absolute',
    accuracy_level: null,
    accuracy_metric: 'success_rate',
    min_speedup: null,
    min_compression: null,
  },
  objective: 'meet',
  stop_at_first: false,
  targets: ['jetson-orin-nano-8gb'],
  assumptions: ['accuracy measured by closed-loop success rate'],
  question: null,
};

const references: ReferencesPublic = {
  data: [
    {
      name: 'vla',
      description: 'TinyVLA (6M) trained on the reaching task',
      kind: 'torch_policy',
      format: 'torch_state_dict',
      trained: true,
      task: 'reaching',
      simulator: 'reaching',
    },
    {
      name: 'hf_smolvlm',
      description: "SmolVLM (SmolVLA's backbone)",
      kind: 'hf_directory',
      format: 'hf_directory',
      trained: false,
      task: null,
      simulator: null,
    },
  ],
  count: 2,
};

function typeGoal(text: string) {
  fireEvent.change(screen.getByLabelText('Goal'), { target: { value: text } });
}

describe('ChatPage', () => {
  beforeEach(() => {
    vi.mocked(api.listModels).mockResolvedValue({ data: [], count: 0 });
    vi.mocked(api.getReferences).mockResolvedValue(references);
    vi.mocked(api.chat).mockReset();
  });

  it('typing a goal shows the parsed criteria', async () => {
    const answer: ChatResponse = { reply: 'Goal: at most 8 MiB; objective: meet.', goal, job: null };
    vi.mocked(api.chat).mockResolvedValue(answer);
    render(<ChatPage />);
    typeGoal('under 8 MB and 2 ms on a Jetson Orin Nano');
    await userEvent.click(screen.getByRole('button', { name: 'Send goal' }));

    expect(await screen.findByText('8 MiB')).toBeInTheDocument();
    expect(screen.getByText('max p50 latency')).toBeInTheDocument();
    expect(screen.getByText('2 ms on jetson-orin-nano-8gb')).toBeInTheDocument();
    expect(screen.getByText('max success_rate drop')).toBeInTheDocument();
    expect(screen.getByText(/Assumed: accuracy measured/)).toBeInTheDocument();
    expect(screen.getByText('under 8 MB and 2 ms on a Jetson Orin Nano')).toBeInTheDocument();
    expect(api.chat).toHaveBeenCalledWith({
      messages: [{ role: 'user', content: 'under 8 MB and 2 ms on a Jetson Orin Nano' }],
      start: false,
    });
  });

  it('a goal_unclear answer shows the question and keeps the conversation', async () => {
    vi.mocked(api.chat).mockRejectedValueOnce(
      new api.ApiError(422, {
        code: 'goal_unclear',
        message: 'Is 0.1 ms on the Jetson a hard limit? The model needs at least 3 ms there.',
        detail: {},
        hint: 'answer with a reachable latency',
      }),
    );
    render(<ChatPage />);
    typeGoal('under 0.1 ms');
    await userEvent.click(screen.getByRole('button', { name: 'Send goal' }));

    expect(await screen.findByTestId('assistant-question')).toHaveTextContent(
      'Is 0.1 ms on the Jetson a hard limit?',
    );
    expect(screen.getByText('Hint: answer with a reachable latency')).toBeInTheDocument();

    // the answer goes with the whole conversation
    vi.mocked(api.chat).mockResolvedValueOnce({ reply: 'ok', goal, job: null });
    typeGoal('under 4 ms then');
    await userEvent.click(screen.getByRole('button', { name: 'Send goal' }));
    await waitFor(() => expect(api.chat).toHaveBeenCalledTimes(2));
    expect(vi.mocked(api.chat).mock.calls[1][0].messages).toEqual([
      { role: 'user', content: 'under 0.1 ms' },
      { role: 'assistant', content: 'Is 0.1 ms on the Jetson a hard limit? The model needs at least 3 ms there.' },
      { role: 'user', content: 'under 4 ms then' },
    ]);
    expect(await screen.findByText('8 MiB')).toBeInTheDocument();
  });

  it('another refusal shows its message and hint as an error', async () => {
    vi.mocked(api.chat).mockRejectedValueOnce(
      new api.ApiError(503, { code: 'service_busy', message: 'the queue is full', detail: {}, hint: 'retry later' }),
    );
    render(<ChatPage />);
    typeGoal('smaller');
    await userEvent.click(screen.getByRole('button', { name: 'Send goal' }));
    expect(await screen.findByRole('alert')).toHaveTextContent('the queue is full');
    expect(screen.getByRole('alert')).toHaveTextContent('Hint: retry later');
  });

  it('points the user to the Models page, not the upload API, when no model is picked', async () => {
    const reply = 'Goal: at most 8 MiB; objective: meet. Upload the model (POST /api/v1/models) and send its model_id, or name a reference model (GET /api/v1/references), to start.';
    vi.mocked(api.chat).mockResolvedValue({ reply, goal, job: null });
    render(<ChatPage />);
    typeGoal('under 8 MB');
    await userEvent.click(screen.getByRole('button', { name: 'Send goal' }));

    const link = await screen.findByRole('link', { name: 'Models page' });
    expect(link).toHaveAttribute('href', '#/models');
    expect(screen.getByRole('list', { name: 'Conversation' })).not.toHaveTextContent('POST /api/v1/models');
    expect(screen.getByText(/Goal: at most 8 MiB; objective: meet\./)).toBeInTheDocument();
    // the conversation sent back keeps the service's own words
    vi.mocked(api.chat).mockResolvedValueOnce({ reply: 'ok', goal, job: null });
    typeGoal('and 2 ms');
    await userEvent.click(screen.getByRole('button', { name: 'Send goal' }));
    await waitFor(() => expect(api.chat).toHaveBeenCalledTimes(2));
    expect(vi.mocked(api.chat).mock.calls[1][0].messages[1]).toEqual({ role: 'assistant', content: reply });
  });

  it('offers the reference models in their own group beside the uploaded ones', async () => {
    vi.mocked(api.listModels).mockResolvedValue({
      data: [
        {
          id: 'mdl-0123456789',
          name: 'wide-mlp',
          filename: 'policy.onnx',
          format: 'onnx',
          size_bytes: 1,
          sha256: 'x',
          params: 1,
          created: '2026-12-08T00:00:00Z',
          options: {},
          profile: {},
        },
      ],
      count: 1,
    });
    render(<ChatPage />);
    await waitFor(() => expect(api.getReferences).toHaveBeenCalled());
    await userEvent.click(screen.getByRole('combobox', { name: 'Model to optimize' }));

    expect(await screen.findByText('Reference models')).toBeInTheDocument();
    expect(screen.getByText('Uploaded models')).toBeInTheDocument();
    expect(screen.getByText('wide-mlp (onnx, mdl-0123456789)')).toBeInTheDocument();
    expect(
      screen.getByText('vla: TinyVLA (6M) trained on the reaching task (torch_state_dict, trained)'),
    ).toBeInTheDocument();
    expect(
      screen.getByText("hf_smolvlm: SmolVLM (SmolVLA's backbone) (hf_directory, random weights)"),
    ).toBeInTheDocument();
  });

  it('picking a reference sends the goal and starts the job with reference, never model_id', async () => {
    const job = { id: 'job-0000000042', model: 'vla', status: 'queued' } as JobPublic;
    vi.mocked(api.chat)
      .mockResolvedValueOnce({ reply: 'Goal: at least 2x faster; objective: meet.', goal, job: null })
      .mockResolvedValueOnce({ reply: 'Started job job-0000000042', goal, job });
    render(<ChatPage />);
    await userEvent.click(screen.getByRole('combobox', { name: 'Model to optimize' }));
    await userEvent.click(
      await screen.findByText('vla: TinyVLA (6M) trained on the reaching task (torch_state_dict, trained)'),
    );
    typeGoal('at least 2x faster and 3x smaller on this machine, lose at most 2 points of success rate');
    await userEvent.click(screen.getByRole('button', { name: 'Send goal' }));

    await waitFor(() => expect(api.chat).toHaveBeenCalledTimes(1));
    const sent = vi.mocked(api.chat).mock.calls[0][0];
    expect(sent).toEqual({
      messages: [
        {
          role: 'user',
          content: 'at least 2x faster and 3x smaller on this machine, lose at most 2 points of success rate',
        },
      ],
      reference: 'vla',
      simulator: 'reaching',
      start: false,
    });
    expect(sent).not.toHaveProperty('model_id');

    const start = await screen.findByRole('button', { name: 'Start optimization job' });
    await waitFor(() => expect(start).toBeEnabled());
    await userEvent.click(start);
    await waitFor(() => expect(api.chat).toHaveBeenCalledTimes(2));
    const started = vi.mocked(api.chat).mock.calls[1][0];
    expect(started.reference).toBe('vla');
    expect(started.simulator).toBe('reaching');
    expect(started.start).toBe(true);
    expect(started).not.toHaveProperty('model_id');
    await waitFor(() => expect(window.location.hash).toBe('#/jobs/job-0000000042'));
  });

  async function pickReference(label: string) {
    await userEvent.click(screen.getByRole('combobox', { name: 'Model to optimize' }));
    await userEvent.click(await screen.findByText(label));
  }

  it('a reference is judged in its simulator unless the user turns that off', async () => {
    vi.mocked(api.chat).mockResolvedValue({ reply: 'Goal: at least 2x smaller; objective: meet.', goal, job: null });
    render(<ChatPage />);
    await pickReference('vla: TinyVLA (6M) trained on the reaching task (torch_state_dict, trained)');
    const closedLoop = screen.getByRole('checkbox', { name: 'Judge by closed-loop success in the simulator' });
    expect(closedLoop).toBeChecked();
    fireEvent.click(closedLoop);
    expect(closedLoop).not.toBeChecked();
    typeGoal('at least 2x smaller');
    fireEvent.click(screen.getByRole('button', { name: 'Send goal' }));
    await waitFor(() => expect(api.chat).toHaveBeenCalledTimes(1));
    expect(vi.mocked(api.chat).mock.calls[0][0]).toEqual({
      messages: [{ role: 'user', content: 'at least 2x smaller' }],
      reference: 'vla',
      start: false,
    });
  });

  it('a random-weight reference has no simulator to offer and is sent without one', async () => {
    vi.mocked(api.chat).mockResolvedValue({ reply: 'Goal: at least 2x smaller; objective: meet.', goal, job: null });
    render(<ChatPage />);
    await pickReference("hf_smolvlm: SmolVLM (SmolVLA's backbone) (hf_directory, random weights)");
    expect(screen.queryByRole('checkbox', { name: 'Judge by closed-loop success in the simulator' })).toBeNull();
    typeGoal('at least 2x smaller');
    fireEvent.click(screen.getByRole('button', { name: 'Send goal' }));
    await waitFor(() => expect(api.chat).toHaveBeenCalledTimes(1));
    expect(vi.mocked(api.chat).mock.calls[0][0]).toEqual({
      messages: [{ role: 'user', content: 'at least 2x smaller' }],
      reference: 'hf_smolvlm',
      start: false,
    });
  });
});
