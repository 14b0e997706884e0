// Jobs, newest first, each linking to its live view and its report.
import { Button, Card, Table, Tag } from 'antd';
import { useCallback, useEffect, useState } from 'react';
import { ErrorAlert } from '../components/ErrorAlert';
import { listJobs, toApiError } from '../services/api';
import type { ApiError } from '../services/api';
import type { JobPublic } from '../services/types';
import { jobHref } from '../routing';

const STATUS_COLOR: Record<string, string> = {
  queued: 'default',
  running: 'blue',
  succeeded: 'green',
  best_effort: 'gold',
  failed: 'red',
  cancelled: 'orange',
  needs_input: 'purple',
};

export function JobsPage() {
  const [jobs, setJobs] = useState<JobPublic[]>([]);
  const [error, setError] = useState<ApiError | null>(null);
  const refresh = useCallback(() => {
    listJobs()
      .then((answer) => setJobs(answer.data))
      .catch((raw) => setError(toApiError(raw)));
  }, []);
  useEffect(refresh, [refresh]);

  return (
    <Card title="Jobs" extra={<Button aria-label="Refresh jobs" onClick={refresh}>Refresh</Button>}>
      <ErrorAlert error={error} onClose={() => setError(null)} />
      <Table<JobPublic>
        aria-label="Jobs"
        size="small"
        rowKey="id"
        dataSource={jobs}
        columns={[
          { title: 'Job', dataIndex: 'id', render: (id: string) => <a href={jobHref(id)}>{id}</a> },
          { title: 'Goal', dataIndex: 'goal', ellipsis: true },
          { title: 'Model', dataIndex: 'model' },
          {
            title: 'Status',
            dataIndex: 'status',
            render: (s: string) => <Tag color={STATUS_COLOR[s] ?? 'default'}>{s}</Tag>,
          },
          {
            title: 'Goal met',
            dataIndex: 'goal_met',
            render: (m: boolean | null) => (m == null ? '-' : m ? 'yes' : 'no'),
          },
          { title: 'Attempts', dataIndex: 'attempts_count' },
          {
            title: 'Report',
            key: 'report',
            render: (_: unknown, job: JobPublic) =>
              job.finished ? <a href={jobHref(job.id, true)} aria-label={`Report of ${job.id}`}>report</a> : '-',
          },
        ]}
      />
    </Card>
  );
}
