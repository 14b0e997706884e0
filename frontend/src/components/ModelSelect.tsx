// Pick the model a job starts on: one of the uploaded models (GET /models) or a bundled reference model
// (GET /references), each list loaded once and shown as its own option group.
import { Select } from 'antd';
import { useEffect, useState } from 'react';
import { getReferences, listModels } from '../services/api';
import type { ModelPublic, ReferencePublic } from '../services/types';

/** What the chat starts a job on: an uploaded model by id, or a reference model by name (with the simulator of
 * its task, when it has one). */
export type ModelChoice =
  | { kind: 'model'; id: string }
  | { kind: 'reference'; name: string; simulator: string | null };

// Select values are strings; the prefix keeps a model id and a reference name of the same spelling apart.
function encode(choice: ModelChoice): string {
  return choice.kind === 'model' ? `model:${choice.id}` : `reference:${choice.name}`;
}

function decode(value: string, references: ReferencePublic[]): ModelChoice {
  if (!value.startsWith('reference:')) return { kind: 'model', id: value.slice('model:'.length) };
  const name = value.slice('reference:'.length);
  return { kind: 'reference', name, simulator: references.find((r) => r.name === name)?.simulator ?? null };
}

/** The request fields that name the choice: `model_id` for an uploaded model, `reference` for a reference. */
export function choiceFields(choice: ModelChoice | null): { model_id?: string; reference?: string } {
  if (choice === null) return {};
  return choice.kind === 'model' ? { model_id: choice.id } : { reference: choice.name };
}

export function ModelSelect({
  value,
  onChange,
}: {
  value: ModelChoice | null;
  onChange: (choice: ModelChoice | null) => void;
}) {
  const [models, setModels] = useState<ModelPublic[]>([]);
  const [references, setReferences] = useState<ReferencePublic[]>([]);
  useEffect(() => {
    let live = true;
    listModels()
      .then((answer) => live && setModels(answer?.data ?? []))
      .catch(() => live && setModels([]));
    getReferences()
      .then((answer) => live && setReferences(answer?.data ?? []))
      .catch(() => live && setReferences([]));
    return () => {
      live = false;
    };
  }, []);
  const groups = [
    {
      label: 'Uploaded models',
      options: models.map((m) => ({ value: encode({ kind: 'model', id: m.id }), label: `${m.name} (${m.format}, ${m.id})` })),
    },
    {
      label: 'Reference models',
      options: references.map((r) => ({
        value: encode({ kind: 'reference', name: r.name, simulator: r.simulator ?? null }),
        label: `${r.name}: ${r.description} (${r.format}${r.trained ? ', trained' : ', random weights'})`,
      })),
    },
  ].filter((group) => group.options.length > 0);
  return (
    <Select
      aria-label="Model to optimize"
      placeholder="Uploaded or reference model (needed to start a job)"
      allowClear
      style={{ minWidth: 320 }}
      value={value ? encode(value) : undefined}
      onChange={(picked: string | undefined) => onChange(picked ? decode(picked, references) : null)}
      options={groups}
    />
  );
}
