// A job live: progress bar, step timeline, attempts table and Pareto plot, fed by the job's socket events;
// below them its checkpoints, each one a point to replay the job from. A replayed job links back to its parent.
import { Button, Card, Descriptions, Space, Tag, Typography } from 'antd';
import { useEffect, useState } from 'react';
import { AttemptsTable } from '../components/AttemptsTable';
import { CheckpointsPanel } from '../components/CheckpointsPanel';
import { ErrorAlert } from '../components/ErrorAlert';
import { JobProgress } from '../components/JobProgress';
import { ParetoPlot } from '../components/ParetoPlot';
import { StepTimeline } from '../components/StepTimeline';
import { useJobEvents } from '../hooks/useJobEvents';
import { cancelJob, getJob, toApiError } from '../services/api';
import type { ApiError } from '../services/api';
import type { JobPublic } from '../services/types';
import { jobHref } from '../routing';

export function JobView({ jobId }: { jobId: string }) {
  const { state, view, connected, streamError } = useJobEvents(jobId);
  const [job, setJob] = useState<JobPublic | null>(null);
  const [error, setError] = useState<ApiError | null>(null);
  const done = view.complete !== null || state.ended;

  useEffect(() => {
    let live = true;
    getJob(jobId)
      .then((answer) => live && setJob(answer))
      .catch((raw) => live && setError(toApiError(raw)));
    return () => {
      live = false;
    };
  }, [jobId, done]);

  async function cancel() {
    try {
      await cancelJob(jobId);
    } catch (raw) {
      setError(toApiError(raw));
    }
  }

  // the job record is read when the page opens and when the job ends; in between its own events say it runs
  const running = !done && state.events.some((e) => e.type !== 'complete' && e.type !== 'error');
  const status =
    (view.complete?.status as string | undefined) ?? (running ? 'running' : job?.status) ?? 'unknown';
  return (
    <Space direction="vertical" style={{ width: '100%' }} size="large">
      <Card
        title={<span>Job {jobId}</span>}
        extra={
          <Space>
            <Tag color={connected ? 'green' : 'default'}>{connected ? 'live' : 'offline'}</Tag>
            <Button aria-label="Cancel job" danger disabled={done} onClick={() => void cancel()}>
              Cancel
            </Button>
            <Button aria-label="Open report" href={jobHref(jobId, true)} disabled={!done}>
              Report
            </Button>
          </Space>
        }
      >
        <ErrorAlert error={error} onClose={() => setError(null)} />
        <ErrorAlert error={streamError} />
        {view.error ? <ErrorAlert error={view.error} /> : null}
        {job ? (
          <Descriptions size="small" column={2}>
            <Descriptions.Item label="Goal">{job.goal}</Descriptions.Item>
            <Descriptions.Item label="Model">{job.model}</Descriptions.Item>
            <Descriptions.Item label="Status">{status}</Descriptions.Item>
            <Descriptions.Item label="Target">{job.target ?? '-'}</Descriptions.Item>
            {job.parent_job_id ? (
              <Descriptions.Item label="Replayed from">
                <a href={jobHref(job.parent_job_id)} aria-label={`Parent job ${job.parent_job_id}`}>
                  job {job.parent_job_id}
                </a>
                {job.fork_checkpoint_id ? (
                  <Typography.Text type="secondary"> at checkpoint {job.fork_checkpoint_id}</Typography.Text>
                ) : null}
              </Descriptions.Item>
            ) : null}
          </Descriptions>
        ) : null}
        <JobProgress current={view.current} done={done} />
        {view.complete ? (
          <Typography.Paragraph>
            {view.complete.goal_met ? 'Goal met' : 'Goal not met'}; final version{' '}
            {String(view.complete.final_version ?? '-')}
          </Typography.Paragraph>
        ) : null}
      </Card>
      <Card title="Attempts">
        <AttemptsTable attempts={view.attempts} />
        <ParetoPlot attempts={view.attempts} />
      </Card>
      <Card title="Steps">
        <StepTimeline items={view.timeline} steps={view.steps} />
      </Card>
      <Card title="Checkpoints">
        <CheckpointsPanel jobId={jobId} refresh={done} />
      </Card>
    </Space>
  );
}
