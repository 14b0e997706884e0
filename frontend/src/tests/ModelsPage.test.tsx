import { render, screen, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ModelsPage } from '../pages/ModelsPage';
import type { ModelsPublic, ReferencesPublic } from '../services/types';

const references: ReferencesPublic = {
  data: [
    {
      name: 'vla',
      description: 'TinyVLA (6M) trained on the reaching task',
      kind: 'torch_policy',
      format: 'torch_state_dict',
      trained: true,
      task: 'reaching',
      simulator: 'reaching',
    },
    {
      name: 'hf_smolvlm',
      description: "SmolVLM (SmolVLA's backbone)",
      kind: 'hf_directory',
      format: 'hf_directory',
      trained: false,
      task: null,
      simulator: null,
    },
  ],
  count: 2,
};
const models: ModelsPublic = { data: [], count: 0 };

const reply = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

describe('ModelsPage', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it('lists the reference models the API returns under the uploads', async () => {
    const fetch = vi.fn((url: string) => Promise.resolve(reply(url.endsWith('/references') ? references : models)));
    vi.stubGlobal('fetch', fetch);
    render(<ModelsPage />);

    expect(await screen.findByText('TinyVLA (6M) trained on the reaching task')).toBeInTheDocument();
    expect(fetch).toHaveBeenCalledWith('/api/v1/references', expect.anything());
    const table = screen.getByText('Judged with').closest('table') as HTMLElement;
    const rows = within(table)
      .getAllByRole('row')
      .filter((row) => row.querySelector('td') && !row.classList.contains('ant-table-placeholder'));
    expect(rows).toHaveLength(2);
    expect(within(rows[0]).getByText('vla')).toBeInTheDocument();
    expect(within(rows[0]).getByText('reaching')).toBeInTheDocument();
    expect(within(rows[0]).getByText('trained')).toBeInTheDocument();
    expect(within(rows[1]).getByText('hf_smolvlm')).toBeInTheDocument();
    expect(within(rows[1]).getByText('synthetic inputs')).toBeInTheDocument();
    expect(within(rows[1]).getByText('random')).toBeInTheDocument();
    expect(screen.getByText('Reference models')).toBeInTheDocument();
  });
});
