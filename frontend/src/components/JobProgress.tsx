// The current step's progress bar, from the job's progress events.
import { Progress, Typography } from 'antd';
import type { StepProgress } from '../state/jobEvents';

export function JobProgress({ current, done }: { current: StepProgress | null; done: boolean }) {
  const percent = done ? 100 : (current?.percent ?? 0);
  const label = current ? `${current.step}: ${current.message}` : 'waiting for the first event';
  return (
    <div>
      <Typography.Text>{done ? 'finished' : label}</Typography.Text>
      <Progress
        percent={percent}
        status={done ? 'success' : 'active'}
        aria-label="Job progress"
      />
    </div>
  );
}
