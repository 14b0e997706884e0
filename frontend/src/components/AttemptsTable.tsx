// One row per attempt (by index, from attempt events): status, reason and the headline figures.
import { Table, Tag } from 'antd';
import type { AttemptRow } from '../state/jobEvents';

const STATUS_COLOR: Record<string, string> = { accepted: 'green', rejected: 'orange', failed: 'red' };
const fixed = (value: number | null, digits: number) => (value == null ? '-' : value.toFixed(digits));

export function AttemptsTable({ attempts }: { attempts: AttemptRow[] }) {
  return (
    <Table<AttemptRow>
      aria-label="Attempts"
      size="small"
      rowKey="index"
      pagination={false}
      dataSource={attempts}
      locale={{ emptyText: 'no attempt yet' }}
      columns={[
        { title: '#', dataIndex: 'index', width: 50 },
        { title: 'Technique', dataIndex: 'technique' },
        {
          title: 'Status',
          dataIndex: 'status',
          render: (status: string) => <Tag color={STATUS_COLOR[status] ?? 'default'}>{status}</Tag>,
        },
        { title: 'p50 (ms)', dataIndex: 'p50_ms', render: (v: number | null) => fixed(v, 3) },
        { title: 'Size (MB)', dataIndex: 'size_mb', render: (v: number | null) => fixed(v, 2) },
        {
          title: 'Accuracy',
          dataIndex: 'accuracy',
          render: (a: AttemptRow['accuracy']) => (a ? `${a.metric} ${a.value.toPrecision(4)}` : '-'),
        },
        { title: 'Reason', dataIndex: 'reason' },
      ]}
    />
  );
}
