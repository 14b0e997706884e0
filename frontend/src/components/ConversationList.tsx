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

// The service's chat reply tells API clients how to upload a model; on the page, point to the Models page instead.
const API_UPLOAD_HINT =
  /\s*Upload the model \(POST \/api\/v1\/models\) and send its model_id, or name a reference model \(GET \/api\/v1\/references\), to start\./;

function AssistantText({ content }: { content: string }) {
  if (!API_UPLOAD_HINT.test(content)) return <Typography.Text>{content}</Typography.Text>;
  return (
    <Typography.Text>
      {content.replace(API_UPLOAD_HINT, '')} Upload the model on the <a href="#/models">Models page</a>, then pick it
      (or a reference model) above to start.
    </Typography.Text>
  );
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
          ) : turn.role === 'assistant' ? (
            <AssistantText content={turn.content} />
          ) : (
            <Typography.Text>{turn.content}</Typography.Text>
          )}
          {turn.goal ? <CriteriaTable goal={turn.goal} /> : null}
        </li>
      ))}
    </ol>
  );
}
