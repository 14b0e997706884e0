// What intake found in an uploaded model: its facts, the profile's figures, and the rest as JSON.
import { Collapse, Descriptions } from 'antd';
import type { ModelPublic } from '../services/types';

const isScalar = (v: unknown): v is string | number | boolean =>
  typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean';

// Already shown from the model's own fields above the profile's figures.
const SHOWN = new Set(['format', 'parameters']);
const show = (v: unknown) =>
  typeof v === 'number' && !Number.isInteger(v) ? String(Number(v.toPrecision(6))) : String(v);

export function ModelProfile({ model }: { model: ModelPublic }) {
  const scalars = Object.entries(model.profile).filter(([k, v]) => isScalar(v) && !SHOWN.has(k));
  const nested = Object.fromEntries(Object.entries(model.profile).filter(([, v]) => !isScalar(v)));
  return (
    <div aria-label={`Profile of ${model.name}`}>
      <Descriptions size="small" bordered column={2} title={model.name}>
        <Descriptions.Item label="id">{model.id}</Descriptions.Item>
        <Descriptions.Item label="format">{model.format}</Descriptions.Item>
        <Descriptions.Item label="file">{model.filename}</Descriptions.Item>
        <Descriptions.Item label="size">{(model.size_bytes / 1024 / 1024).toFixed(2)} MiB</Descriptions.Item>
        <Descriptions.Item label="parameters">{model.params.toLocaleString()}</Descriptions.Item>
        <Descriptions.Item label="sha256">{model.sha256.slice(0, 16)}…</Descriptions.Item>
        {scalars.map(([key, value]) => (
          <Descriptions.Item key={key} label={key}>
            {show(value)}
          </Descriptions.Item>
        ))}
      </Descriptions>
      {Object.keys(nested).length > 0 ? (
        <Collapse
          size="small"
          style={{ marginTop: 8 }}
          items={[
            {
              key: 'profile',
              label: 'Full profile (JSON)',
              children: <pre style={{ maxHeight: 320, overflow: 'auto' }}>{JSON.stringify(nested, null, 2)}</pre>,
            },
          ]}
        />
      ) : null}
    </div>
  );
}
