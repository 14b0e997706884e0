// The goal as intake read it: each criterion set, the objective and what was assumed.
import { Table, Tag } from 'antd';
import type { Criteria, GoalSpec } from '../services/types';

interface Row {
  key: string;
  criterion: string;
  value: string;
}

/** A limit as people write it: at most 4 significant digits (7.62939453125 -> 7.629). */
export const fmt = (value: number): string => String(Number(value.toPrecision(4)));

export function criteriaRows(criteria: Criteria): Row[] {
  const c = criteria;
  const rows: Row[] = [];
  const add = (key: string, criterion: string, value: string) => rows.push({ key, criterion, value });
  if (c.max_size_mb != null) add('size', 'max size', `${fmt(c.max_size_mb)} MiB`);
  if (c.max_latency_ms != null) add('latency', 'max p50 latency', `${fmt(c.max_latency_ms)} ms on ${c.latency_target}`);
  if (c.max_memory_mb != null) add('memory', 'max peak memory', `${fmt(c.max_memory_mb)} MB`);
  if (c.min_speedup != null) add('speedup', 'min speedup', `${fmt(c.min_speedup)}x`);
  if (c.min_compression != null) add('compression', 'min compression', `${fmt(c.min_compression)}x`);
  if (c.accuracy_floor != null) add('floor', `min ${c.accuracy_metric ?? 'accuracy'}`, `${fmt(c.accuracy_floor)}`);
  if (c.max_accuracy_drop != null) {
    const unit = c.accuracy_drop_unit === 'absolute' ? '' : '%';
    add('drop', `max ${c.accuracy_metric ?? 'accuracy'} drop`, `${fmt(c.max_accuracy_drop)}${unit}`);
  }
  return rows;
}

export function CriteriaTable({ goal }: { goal: GoalSpec }) {
  // The document lets the service leave out the fields that have defaults (it sends them today).
  const targets = goal.targets ?? [];
  const assumptions = goal.assumptions ?? [];
  return (
    <div>
      <Table<Row>
        size="small"
        pagination={false}
        aria-label="Parsed criteria"
        dataSource={goal.criteria ? criteriaRows(goal.criteria) : []}
        locale={{ emptyText: 'no hard limit' }}
        columns={[
          { title: 'Criterion', dataIndex: 'criterion' },
          { title: 'Limit', dataIndex: 'value' },
        ]}
      />
      <div style={{ marginTop: 8 }}>
        Objective: <Tag>{goal.objective}</Tag>
        {goal.stop_at_first ? <Tag color="blue">stop at first</Tag> : null}
        {targets.map((t) => (
          <Tag key={t} color="geekblue">
            {t}
          </Tag>
        ))}
      </div>
      {assumptions.length > 0 ? (
        <ul aria-label="Assumptions" style={{ marginTop: 8 }}>
          {assumptions.map((a) => (
            <li key={a}>Assumed: {a}</li>
          ))}
        </ul>
      ) : null}
    </div>
  );
}
