// The service's API key: asked for once when a call answers 401 (or the socket is refused), and again while the
// service refuses the key given; kept in memory and sessionStorage, sent as `Authorization: Bearer <key>` by services/api.ts and as the socket's auth token.
import { Alert, Form, Input, Modal } from 'antd';
import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState } from 'react';
import type { ReactNode } from 'react';
import { getApiKey, setApiKey, setKeyPrompt } from '../services/api';

export interface AuthState {
  apiKey: string | null;
  /** Ask the user for a key (one dialog however many callers ask); resolves null when they cancel. `refused`:
   * the service turned down the key sent, which the dialog says. */
  requestKey: (refused?: boolean) => Promise<string | null>;
  clearKey: () => void;
}

const AuthContext = createContext<AuthState | null>(null);

export function AuthProvider({ children }: { children: ReactNode }) {
  const [apiKey, setKeyState] = useState<string | null>(() => getApiKey());
  const [open, setOpen] = useState(false);
  const [draft, setDraft] = useState('');
  const [refused, setRefused] = useState(false);
  const pending = useRef<{ promise: Promise<string | null>; resolve: (key: string | null) => void } | null>(
    null,
  );

  const requestKey = useCallback((wasRefused = false): Promise<string | null> => {
    if (pending.current) return pending.current.promise;
    setRefused(wasRefused);
    let resolve: (key: string | null) => void = () => undefined;
    const promise = new Promise<string | null>((r) => {
      resolve = r;
    });
    pending.current = { promise, resolve };
    setDraft('');
    setOpen(true);
    return promise;
  }, []);

  const finish = useCallback((key: string | null) => {
    if (key) {
      setApiKey(key);
      setKeyState(key);
    }
    setOpen(false);
    setRefused(false);
    pending.current?.resolve(key);
    pending.current = null;
  }, []);

  const clearKey = useCallback(() => {
    setApiKey(null);
    setKeyState(null);
  }, []);

  useEffect(() => {
    setKeyPrompt(requestKey);
    return () => setKeyPrompt(null);
  }, [requestKey]);

  const value = useMemo(() => ({ apiKey, requestKey, clearKey }), [apiKey, requestKey, clearKey]);
  return (
    <AuthContext.Provider value={value}>
      {children}
      <Modal
        title="API key needed"
        open={open}
        okText="Use key"
        onOk={() => finish(draft.trim() || null)}
        onCancel={() => finish(null)}
        okButtonProps={{ disabled: !draft.trim(), 'aria-label': 'Use this API key' }}
      >
        <p>This robopt service needs its API key (ROBOPT_API_KEY). It is kept for this browser tab only.</p>
        {refused ? (
          <Alert
            type="error"
            showIcon
            style={{ marginBottom: 12 }}
            message="The service refused that key: check it and enter it again."
          />
        ) : null}
        <Form layout="vertical" onFinish={() => finish(draft.trim() || null)}>
          <Form.Item label="API key" htmlFor="api-key-input">
            <Input.Password
              id="api-key-input"
              aria-label="API key"
              autoFocus
              value={draft}
              onChange={(e) => setDraft(e.target.value)}
            />
          </Form.Item>
        </Form>
      </Modal>
    </AuthContext.Provider>
  );
}

export function useAuth(): AuthState {
  const state = useContext(AuthContext);
  if (!state) throw new Error('useAuth needs an <AuthProvider>');
  return state;
}
