// The before/after report of a finished job, and the final artifact's download.
import { Button, Card, Space, Table, Tag, Typography } from 'antd';
import { useEffect, useState } from 'react';
import { ErrorAlert } from '../components/ErrorAlert';
import { downloadArtifact, getReport, toApiError } from '../services/api';
import type { ApiError } from '../services/api';
import type { Comparison, ReportJson } from '../services/types';
import { jobHref } from '../routing';

interface Row {
  key: string;
  figure: string;
  before: string;
  after: string;
  change: string;
}

const cell = (v: number | null | undefined, digits: number) => (v == null ? '-' : v.toFixed(digits));

export function comparisonRows(c: Comparison): Row[] {
  const rows: Row[] = [
    {
      key: 'size',
      figure: 'size (MB)',
      before: cell(c.size_mb_before, 2),
      after: cell(c.size_mb_after, 2),
      change: c.compression ? `${c.compression.toFixed(2)}x smaller` : '',
    },
    {
      key: 'latency',
      figure: 'p50 here (ms)',
      before: cell(c.latency_ms_before, 3),
      after: cell(c.latency_ms_after, 3),
      change: c.speedup ? `${c.speedup.toFixed(2)}x faster` : '',
    },
  ];
  if (c.peak_memory_mb_before != null || c.peak_memory_mb_after != null) {
    rows.push({
      key: 'memory',
      figure: 'peak memory (MB)',
      before: cell(c.peak_memory_mb_before, 1),
      after: cell(c.peak_memory_mb_after, 1),
      change: '',
    });
  }
  if (c.accuracy) {
    const a = c.accuracy;
    rows.push({
      key: 'accuracy',
      figure: a.label,
      before: cell(a.before, 4),
      after: cell(a.after, 4),
      change: `change ${a.change >= 0 ? '+' : ''}${a.change.toFixed(4)}`,
    });
  }
  return rows;
}

export function ReportPage({ jobId }: { jobId: string }) {
  const [report, setReport] = useState<ReportJson | null>(null);
  const [error, setError] = useState<ApiError | null>(null);
  const [downloading, setDownloading] = useState(false);

  useEffect(() => {
    let live = true;
    getReport(jobId)
      .then((answer) => live && setReport(answer))
      .catch((raw) => live && setError(toApiError(raw)));
    return () => {
      live = false;
    };
  }, [jobId]);

  async function download(version: string) {
    setDownloading(true);
    try {
      const file = await downloadArtifact(jobId, version);
      const url = URL.createObjectURL(file.blob);
      const link = document.createElement('a');
      link.href = url;
      link.download = file.filename;
      link.click();
      URL.revokeObjectURL(url);
    } catch (raw) {
      setError(toApiError(raw));
    } finally {
      setDownloading(false);
    }
  }

  const final = report?.comparison.candidate_version;
  return (
    <Card title={`Report of job ${jobId}`} extra={<a href={jobHref(jobId)}>Back to the job</a>}>
      <ErrorAlert error={error} />
      {report ? (
        <Space direction="vertical" style={{ width: '100%' }}>
          <Typography.Paragraph>
            Goal: {report.goal}{' '}
            {report.goal_met ? <Tag color="green">goal met</Tag> : <Tag color="orange">best effort: goal not met</Tag>}
          </Typography.Paragraph>
          <Table<Row>
            aria-label="Before and after"
            size="small"
            pagination={false}
            dataSource={comparisonRows(report.comparison)}
            columns={[
              { title: '', dataIndex: 'figure' },
              { title: 'Before', dataIndex: 'before' },
              { title: 'After', dataIndex: 'after' },
              { title: 'Change', dataIndex: 'change' },
            ]}
          />
          {report.missing.length > 0 ? (
            <ul aria-label="Criteria not met">
              {report.missing.map((m) => (
                <li key={m.name}>
                  missing {m.name}: {m.note ?? ''} value {String(m.value)} limit {m.limit}
                </li>
              ))}
            </ul>
          ) : null}
          {final ? (
            <Button
              type="primary"
              aria-label={`Download final artifact ${final}`}
              loading={downloading}
              onClick={() => void download(final)}
            >
              Download final artifact ({final})
            </Button>
          ) : null}
        </Space>
      ) : null}
    </Card>
  );
}
