// The job's checkpoints (GET /jobs/<id>/checkpoints) and, per row, a replay from there as a new job.
import { Button, Input, Space, Table, Tag, Typography } from 'antd';
import { useCallback, useEffect, useState } from 'react';
import { getCheckpoints, replayJob, toApiError } from '../services/api';
import type { ApiError } from '../services/api';
import type { CheckpointPublic, ReplayCreate } from '../services/types';
import { jobHref, navigate } from '../routing';
import { ErrorAlert } from './ErrorAlert';

const STATUS_COLOR: Record<string, string> = { succeeded: 'green', failed: 'red', cancelled: 'default' };

/** `refresh` re-reads the list when it changes (the job view passes whether the job has ended). */
export function CheckpointsPanel({ jobId, refresh }: { jobId: string; refresh?: unknown }) {
  const [checkpoints, setCheckpoints] = useState<CheckpointPublic[]>([]);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<ApiError | null>(null);
  const [goal, setGoal] = useState('');
  const [replaying, setReplaying] = useState<string | null>(null);

  const load = useCallback(
    (isLive: () => boolean = () => true) => {
      setLoading(true);
      getCheckpoints(jobId)
        .then((answer) => {
          if (!isLive()) return;
          setCheckpoints(answer.data);
          setError(null);
        })
        .catch((raw) => isLive() && setError(toApiError(raw)))
        .finally(() => isLive() && setLoading(false));
    },
    [jobId],
  );

  useEffect(() => {
    let live = true;
    load(() => live);
    return () => {
      live = false;
    };
  }, [load, refresh]);

  async function replay(checkpointId: string) {
    setReplaying(checkpointId);
    setError(null);
    const newGoal = goal.trim();
    const body: ReplayCreate = newGoal ? { checkpoint_id: checkpointId, goal: newGoal } : { checkpoint_id: checkpointId };
    try {
      const answer = await replayJob(jobId, body);
      navigate(jobHref(answer.job.id));
    } catch (raw) {
      setError(toApiError(raw));
    } finally {
      setReplaying(null);
    }
  }

  return (
    <Space direction="vertical" style={{ width: '100%' }}>
      <ErrorAlert error={error} onClose={() => setError(null)} />
      <Space wrap>
        <Input
          aria-label="Replay goal"
          placeholder="New goal for the replay (optional; empty keeps the job's goal)"
          value={goal}
          maxLength={2000}
          onChange={(e) => setGoal(e.target.value)}
          style={{ width: 420 }}
        />
        <Button aria-label="Reload checkpoints" onClick={() => load()} loading={loading && checkpoints.length > 0}>
          Reload
        </Button>
      </Space>
      <Table<CheckpointPublic>
        aria-label="Checkpoints"
        size="small"
        rowKey="checkpoint_id"
        pagination={false}
        loading={loading && checkpoints.length === 0}
        dataSource={checkpoints}
        locale={{ emptyText: 'no checkpoint yet' }}
        columns={[
          { title: 'Step', dataIndex: 'step', width: 60 },
          { title: 'Node', dataIndex: 'node', render: (node: string | null) => node ?? '-' },
          {
            title: 'Next',
            dataIndex: 'next',
            render: (next: string[]) => (next.length ? next.join(', ') : '-'),
          },
          {
            title: 'Status',
            dataIndex: 'status',
            render: (status: string | null) =>
              status ? <Tag color={STATUS_COLOR[status] ?? 'blue'}>{status}</Tag> : '-',
          },
          {
            title: 'Current version',
            dataIndex: 'current_version',
            render: (version: string | null) => version ?? '-',
          },
          { title: 'Attempts', dataIndex: 'attempts', width: 90 },
          {
            title: 'Created',
            dataIndex: 'created',
            render: (created: string | null) =>
              created ? <Typography.Text type="secondary">{new Date(created).toLocaleString()}</Typography.Text> : '-',
          },
          {
            title: '',
            key: 'replay',
            render: (_: unknown, row: CheckpointPublic) => (
              <Button
                aria-label={`Replay from step ${row.step}`}
                size="small"
                loading={replaying === row.checkpoint_id}
                disabled={replaying !== null && replaying !== row.checkpoint_id}
                onClick={() => void replay(row.checkpoint_id)}
              >
                Replay from here
              </Button>
            ),
          },
        ]}
      />
    </Space>
  );
}
