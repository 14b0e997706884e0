// Pick one of the uploaded models (listed once from GET /models).
import { Select } from 'antd';
import { useEffect, useState } from 'react';
import { listModels } from '../services/api';
import type { ModelPublic } from '../services/types';

export function ModelSelect({
  value,
  onChange,
}: {
  value: string | null;
  onChange: (modelId: string | null) => void;
}) {
  const [models, setModels] = useState<ModelPublic[]>([]);
  useEffect(() => {
    let live = true;
    listModels()
      .then((answer) => live && setModels(answer?.data ?? []))
      .catch(() => live && setModels([]));
    return () => {
      live = false;
    };
  }, []);
  return (
    <Select
      aria-label="Model to optimize"
      placeholder="Uploaded model (needed to start a job)"
      allowClear
      style={{ minWidth: 320 }}
      value={value ?? undefined}
      onChange={(id: string | undefined) => onChange(id ?? null)}
      options={models.map((m) => ({ value: m.id, label: `${m.name} (${m.format}, ${m.id})` }))}
    />
  );
}
