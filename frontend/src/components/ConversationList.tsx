// The conversation so far: the user's goals, intake's readings (criteria table) and questions.
import { Alert, Typography } from 'antd';
import type { GoalSpec } from '../services/types';
import { CriteriaTable } from './CriteriaTable';

export interface Turn {
  role: 'user' | 'assistant';
  content: string;
  goal?: GoalSpec;
  /** The assistant asks (a goal_unclear answer). */
  question?: boolean;
  hint?: string | null;
}

export function ConversationList({ turns }: { turns: Turn[] }) {
  if (turns.length === 0) return null;
  return (
    <ol aria-label="Conversation" style={{ listStyle: 'none', padding: 0 }}>
      {turns.map((turn, i) => (
        <li key={i} style={{ marginBottom: 12 }}>
          <Typography.Text strong>{turn.role === 'user' ? 'You' : 'robopt'}: </Typography.Text>
          {turn.question ? (
            <Alert
              type="warning"
              showIcon
              message={<span data-testid="assistant-question">{turn.content}</span>}
              description={turn.hint ? `Hint: ${turn.hint}` : 'Answer below to refine the goal.'}
            />
          ) : (
            <Typography.Text>{turn.content}</Typography.Text>
          )}
          {turn.goal ? <CriteriaTable goal={turn.goal} /> : null}
        </li>
      ))}
    </ol>
  );
}
