// Latency against size for every measured attempt, accepted and rejected marked apart.
import { CartesianGrid, Legend, Scatter, ScatterChart, Tooltip, XAxis, YAxis } from 'recharts';
import type { AttemptRow } from '../state/jobEvents';

interface Point {
  size_mb: number;
  p50_ms: number;
  label: string;
}

function points(attempts: AttemptRow[], accepted: boolean): Point[] {
  return attempts
    .filter((a) => a.p50_ms != null && a.size_mb != null && (a.status === 'accepted') === accepted)
    .map((a) => ({ size_mb: a.size_mb as number, p50_ms: a.p50_ms as number, label: `#${a.index} ${a.technique}` }));
}

export function ParetoPlot({ attempts }: { attempts: AttemptRow[] }) {
  const accepted = points(attempts, true);
  const rejected = points(attempts, false);
  if (accepted.length + rejected.length === 0) return null;
  return (
    <figure aria-label="Latency against size of each attempt" style={{ margin: 0 }}>
      <ScatterChart width={560} height={300} margin={{ top: 10, right: 20, bottom: 20, left: 10 }}>
        <CartesianGrid />
        <XAxis type="number" dataKey="size_mb" name="size" unit=" MB" />
        <YAxis type="number" dataKey="p50_ms" name="p50" unit=" ms" />
        <Tooltip />
        <Legend />
        <Scatter name="accepted" data={accepted} fill="#52c41a" shape="circle" />
        <Scatter name="rejected / failed" data={rejected} fill="#fa541c" shape="cross" />
      </ScatterChart>
      <figcaption>p50 latency here against artifact size; green accepted, red rejected.</figcaption>
    </figure>
  );
}
