import { render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import { ErrorAlert } from '../components/ErrorAlert';
import * as api from '../services/api';
import { ModelsPage } from '../pages/ModelsPage';

vi.mock('../services/api', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../services/api')>();
  return { ...actual, listModels: vi.fn(), uploadModel: vi.fn() };
});

describe('ErrorAlert', () => {
  it('renders the message, the hint and the code', () => {
    const error = new api.ApiError(404, {
      code: 'not_found',
      message: "job 'job-x' not found",
      detail: {},
      hint: 'list jobs with GET /api/v1/jobs',
    });
    render(<ErrorAlert error={error} />);
    const alert = screen.getByRole('alert');
    expect(alert).toHaveTextContent("job 'job-x' not found");
    expect(alert).toHaveTextContent('Hint: list jobs with GET /api/v1/jobs');
    expect(alert).toHaveTextContent('code: not_found');
  });

  it('renders nothing without an error', () => {
    const { container } = render(<ErrorAlert error={null} />);
    expect(container).toBeEmptyDOMElement();
  });

  it('a refused upload shows the service message and hint', async () => {
    vi.mocked(api.listModels).mockResolvedValue({ data: [], count: 0 });
    vi.mocked(api.uploadModel).mockRejectedValue(
      new api.ApiError(422, {
        code: 'unsafe_file',
        message: 'policy.pt needs pickle to load',
        detail: {},
        hint: 'upload safetensors or ONNX',
      }),
    );
    const { container } = render(<ModelsPage />);
    const input = container.querySelector('input[type="file"]') as HTMLInputElement;
    await userEvent.upload(input, new File(['x'], 'policy.pt'));
    expect(await screen.findByRole('alert')).toHaveTextContent('policy.pt needs pickle to load');
    expect(screen.getByRole('alert')).toHaveTextContent('Hint: upload safetensors or ONNX');
    expect(api.uploadModel).toHaveBeenCalledWith({ file: expect.any(File), name: undefined });
  });
});

describe('api error parsing', () => {
  it('turns an error answer into a typed ApiError, and a failed fetch into network_error', async () => {
    const actual = await vi.importActual<typeof import('../services/api')>('../services/api');
    const body = { code: 'conflict', message: 'job ended', detail: {}, hint: 'nothing to cancel' };
    vi.stubGlobal('fetch', vi.fn().mockResolvedValue(new Response(JSON.stringify(body), { status: 409 })));
    await expect(actual.cancelJob('job-1')).rejects.toMatchObject({
      name: 'ApiError',
      status: 409,
      code: 'conflict',
      message: 'job ended',
      hint: 'nothing to cancel',
    });
    vi.stubGlobal('fetch', vi.fn().mockRejectedValue(new TypeError('Failed to fetch')));
    await expect(actual.getJob('job-1')).rejects.toMatchObject({ code: 'network_error', status: 0 });
    vi.unstubAllGlobals();
  });
});
