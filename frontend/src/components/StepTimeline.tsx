// The job's steps and decisions in order (progress steps, plans, rollbacks, errors, the end).
import { Timeline } from 'antd';
import type { StepProgress, TimelineItem } from '../state/jobEvents';

const COLORS: Record<TimelineItem['kind'], string> = {
  step: 'blue',
  status: 'gray',
  error: 'red',
  complete: 'green',
};

export function StepTimeline({ items, steps }: { items: TimelineItem[]; steps: StepProgress[] }) {
  const percentOf = new Map(steps.map((s) => [s.step, s.percent]));
  return (
    <div aria-label="Step timeline" role="list">
      <Timeline
        items={items.map((item) => ({
          key: item.seq,
          color: COLORS[item.kind],
          children: (
            <span role="listitem">
              {item.kind === 'step' ? `${item.text} (${percentOf.get(item.text) ?? 0}%)` : item.text}
            </span>
          ),
        }))}
      />
    </div>
  );
}
