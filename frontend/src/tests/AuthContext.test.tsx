import { render, screen, waitFor, fireEvent } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AuthProvider } from '../context/AuthContext';
import { getApiKey, setApiKey } from '../services/api';
import { JobsPage } from '../pages/JobsPage';

const unauthorized = () =>
  new Response(
    JSON.stringify({
      code: 'unauthorized',
      message: 'this server needs an API key',
      detail: {},
      hint: 'send `Authorization: Bearer <ROBOPT_API_KEY>`',
    }),
    { status: 401 },
  );

describe('AuthContext', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    setApiKey(null);
  });

  it('asks for the key once on a 401, keeps it, and retries with the bearer header', async () => {
    const fetch = vi
      .fn()
      .mockResolvedValueOnce(unauthorized())
      .mockResolvedValueOnce(new Response(JSON.stringify({ data: [], count: 0 }), { status: 200 }));
    vi.stubGlobal('fetch', fetch);
    render(
      <AuthProvider>
        <JobsPage />
      </AuthProvider>,
    );
    const input = await screen.findByLabelText('API key');
    fireEvent.change(input, { target: { value: 'sekret' } });
    await userEvent.click(screen.getByRole('button', { name: 'Use this API key' }));

    await waitFor(() => expect(fetch).toHaveBeenCalledTimes(2));
    const headers = new Headers((fetch.mock.calls[1][1] as RequestInit).headers);
    expect(headers.get('Authorization')).toBe('Bearer sekret');
    expect(getApiKey()).toBe('sekret');
    expect(sessionStorage.getItem('robopt.apiKey')).toBe('sekret');
  });

  it('asks again, saying so, while the service refuses the key given', async () => {
    const fetch = vi
      .fn()
      .mockResolvedValueOnce(unauthorized())
      .mockResolvedValueOnce(unauthorized())
      .mockResolvedValueOnce(new Response(JSON.stringify({ data: [], count: 0 }), { status: 200 }));
    vi.stubGlobal('fetch', fetch);
    render(
      <AuthProvider>
        <JobsPage />
      </AuthProvider>,
    );
    fireEvent.change(await screen.findByLabelText('API key'), { target: { value: 'wrong' } });
    expect(screen.queryByText(/refused that key/)).toBeNull();
    await userEvent.click(screen.getByRole('button', { name: 'Use this API key' }));

    expect(await screen.findByText(/refused that key/)).toBeInTheDocument();
    fireEvent.change(screen.getByLabelText('API key'), { target: { value: 'right' } });
    await userEvent.click(screen.getByRole('button', { name: 'Use this API key' }));

    await waitFor(() => expect(fetch).toHaveBeenCalledTimes(3));
    const sent = fetch.mock.calls.map((call) => new Headers((call[1] as RequestInit).headers).get('Authorization'));
    expect(sent).toEqual([null, 'Bearer wrong', 'Bearer right']);
    expect(getApiKey()).toBe('right');
  });
});
