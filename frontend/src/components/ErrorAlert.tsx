// A refusal or failure of the service: its message, and its hint (what to do) when it has one.
import { Alert } from 'antd';
import type { ApiError } from '../services/api';
import type { ErrorPublic } from '../services/types';

export function ErrorAlert({
  error,
  onClose,
}: {
  error: Pick<ApiError | ErrorPublic, 'code' | 'message' | 'hint'> | null;
  onClose?: () => void;
}) {
  if (!error) return null;
  return (
    <Alert
      type="error"
      showIcon
      role="alert"
      message={error.message}
      description={
        <>
          {error.hint ? <div>Hint: {error.hint}</div> : null}
          <div style={{ opacity: 0.6 }}>code: {error.code}</div>
        </>
      }
      closable={Boolean(onClose)}
      onClose={onClose}
      style={{ marginBottom: 16 }}
    />
  );
}
