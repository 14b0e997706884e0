// Chat: type a goal, see the criteria intake read (or its question), keep the conversation, start the job.
import { Button, Card, Checkbox, Input, Space, Typography } from 'antd';
import { useState } from 'react';
import { ConversationList } from '../components/ConversationList';
import type { Turn } from '../components/ConversationList';
import { ErrorAlert } from '../components/ErrorAlert';
import { ModelSelect, choiceFields } from '../components/ModelSelect';
import type { ModelChoice } from '../components/ModelSelect';
import { chat, toApiError } from '../services/api';
import type { ApiError } from '../services/api';
import type { ChatMessage, ChatRequest } from '../services/types';
import { jobHref, navigate } from '../routing';

function wire(turns: Turn[]): ChatMessage[] {
  return turns.map((t) => ({ role: t.role, content: t.content.slice(0, 4000) }));
}

/** The fields that name the model, and the simulator of a reference's task when the user keeps it on. */
function modelFields(choice: ModelChoice | null, closedLoop: boolean): Partial<ChatRequest> {
  const simulator = choice?.kind === 'reference' && closedLoop ? choice.simulator : null;
  return { ...choiceFields(choice), ...(simulator ? { simulator } : {}) };
}

export function ChatPage() {
  const [turns, setTurns] = useState<Turn[]>([]);
  const [draft, setDraft] = useState('');
  const [choice, setChoice] = useState<ModelChoice | null>(null);
  const [closedLoop, setClosedLoop] = useState(true);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);

  const last = turns[turns.length - 1];
  const goalClear = Boolean(last && last.role === 'assistant' && last.goal && !last.goal.question);

  async function send() {
    const text = draft.trim();
    if (!text) return;
    const next: Turn[] = [...turns, { role: 'user', content: text }];
    setTurns(next);
    setDraft('');
    setError(null);
    setBusy(true);
    try {
      const answer = await chat({ messages: wire(next), ...modelFields(choice, closedLoop), start: false });
      setTurns([...next, { role: 'assistant', content: answer.reply, goal: answer.goal }]);
    } catch (raw) {
      const err = toApiError(raw);
      if (err.code === 'goal_unclear') {
        setTurns([...next, { role: 'assistant', content: err.message, question: true, hint: err.hint }]);
      } else {
        setError(err);
      }
    } finally {
      setBusy(false);
    }
  }

  async function start() {
    if (!choice) return;
    setError(null);
    setBusy(true);
    try {
      const answer = await chat({ messages: wire(turns), ...modelFields(choice, closedLoop), start: true });
      if (answer.job) navigate(jobHref(answer.job.id));
      else setTurns([...turns, { role: 'assistant', content: answer.reply, goal: answer.goal }]);
    } catch (raw) {
      setError(toApiError(raw));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Card title="Describe your goal">
      <Space direction="vertical" style={{ width: '100%' }}>
        <ModelSelect value={choice} onChange={setChoice} />
        {choice?.kind === 'reference' && choice.simulator ? (
          <Checkbox
            aria-label="Judge by closed-loop success in the simulator"
            checked={closedLoop}
            onChange={(e) => setClosedLoop(e.target.checked)}
          >
            Judge by closed-loop success in the <Typography.Text code>{choice.simulator}</Typography.Text> simulator (as{' '}
            <Typography.Text code>robopt demo</Typography.Text> does)
          </Checkbox>
        ) : null}
        <ConversationList turns={turns} />
        <ErrorAlert error={error} onClose={() => setError(null)} />
        <Input.TextArea
          aria-label="Goal"
          placeholder='e.g. "under 8 MB and 2 ms on a Jetson Orin Nano, lose at most 2 points"'
          autoSize={{ minRows: 2, maxRows: 6 }}
          value={draft}
          maxLength={2000}
          onChange={(e) => setDraft(e.target.value)}
          onPressEnter={(e) => {
            if (!e.shiftKey) {
              e.preventDefault();
              void send();
            }
          }}
        />
        <Space>
          <Button type="primary" aria-label="Send goal" onClick={() => void send()} loading={busy} disabled={!draft.trim()}>
            Send
          </Button>
          <Button aria-label="Start optimization job" onClick={() => void start()} disabled={!goalClear || !choice || busy}>
            Start
          </Button>
          {goalClear && !choice ? (
            <Typography.Text type="secondary">Pick an uploaded or a reference model to start a job.</Typography.Text>
          ) : null}
        </Space>
      </Space>
    </Card>
  );
}
