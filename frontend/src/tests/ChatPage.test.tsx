import { fireEvent, render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import * as api from '../services/api';
import type { ChatResponse, GoalSpec } from '../services/types';
import { ChatPage } from '../pages/ChatPage';

vi.mock('../services/api', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../services/api')>();
  return { ...actual, chat: vi.fn(), listModels: vi.fn() };
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

function typeGoal(text: string) {
  fireEvent.change(screen.getByLabelText('Goal'), { target: { value: text } });
}

describe('ChatPage', () => {
  beforeEach(() => {
    vi.mocked(api.listModels).mockResolvedValue({ data: [], count: 0 });
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
      model_id: null,
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
    const reply = 'Goal: at most 8 MiB; objective: meet. Upload the model (POST /api/v1/models) and send its model_id to start.';
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
});
