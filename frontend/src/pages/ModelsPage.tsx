// Models: upload a file (its measured profile comes back), list the uploads and the bundled reference models;
// refusals show message and hint.
import { Button, Card, Input, Space, Table, Tag, Upload } from 'antd';
import type { UploadProps } from 'antd';
import { useCallback, useEffect, useState } from 'react';
import { ErrorAlert } from '../components/ErrorAlert';
import { ModelProfile } from '../components/ModelProfile';
import { getReferences, listModels, toApiError, uploadModel } from '../services/api';
import type { ApiError } from '../services/api';
import type { ModelPublic, ReferencePublic } from '../services/types';

export function ModelsPage() {
  const [models, setModels] = useState<ModelPublic[]>([]);
  const [references, setReferences] = useState<ReferencePublic[]>([]);
  const [uploaded, setUploaded] = useState<ModelPublic | null>(null);
  const [name, setName] = useState('');
  const [error, setError] = useState<ApiError | null>(null);
  const [uploading, setUploading] = useState(false);

  const refresh = useCallback(() => {
    listModels()
      .then((answer) => setModels(answer.data))
      .catch((raw) => setError(toApiError(raw)));
  }, []);
  useEffect(refresh, [refresh]);
  useEffect(() => {
    let live = true;
    getReferences()
      .then((answer) => live && setReferences(answer.data))
      .catch((raw) => live && setError(toApiError(raw)));
    return () => {
      live = false;
    };
  }, []);

  const customRequest: UploadProps['customRequest'] = ({ file, onSuccess, onError }) => {
    setError(null);
    setUploading(true);
    uploadModel({ file: file as File, name: name.trim() || undefined })
      .then((model) => {
        setUploaded(model);
        onSuccess?.(model);
        refresh();
      })
      .catch((raw) => {
        const err = toApiError(raw);
        setError(err);
        onError?.(err);
      })
      .finally(() => setUploading(false));
  };

  return (
    <Space direction="vertical" style={{ width: '100%' }} size="large">
      <Card title="Upload a model">
        <Space direction="vertical" style={{ width: '100%' }}>
          <Input
            aria-label="Model name (optional)"
            placeholder="Name (optional)"
            value={name}
            onChange={(e) => setName(e.target.value)}
            style={{ maxWidth: 320 }}
          />
          <Upload.Dragger
            aria-label="Model file"
            name="file"
            multiple={false}
            showUploadList={false}
            disabled={uploading}
            customRequest={customRequest}
          >
            <p>{uploading ? 'Uploading and profiling…' : 'Click or drop a model file (.onnx, .pt, .safetensors, .zip, .tar.gz)'}</p>
          </Upload.Dragger>
          <ErrorAlert error={error} onClose={() => setError(null)} />
          {uploaded ? <ModelProfile model={uploaded} /> : null}
        </Space>
      </Card>
      <Card title="Uploaded models" extra={<Button aria-label="Refresh models" onClick={refresh}>Refresh</Button>}>
        <Table<ModelPublic>
          aria-label="Uploaded models"
          size="small"
          rowKey="id"
          dataSource={models}
          onRow={(m) => ({ onClick: () => setUploaded(m) })}
          columns={[
            { title: 'Name', dataIndex: 'name' },
            { title: 'Id', dataIndex: 'id' },
            { title: 'Format', dataIndex: 'format' },
            { title: 'Params', dataIndex: 'params', render: (p: number) => p.toLocaleString() },
            { title: 'Size (MiB)', dataIndex: 'size_bytes', render: (b: number) => (b / 1048576).toFixed(2) },
          ]}
        />
      </Card>
      <Card title="Reference models">
        <p>Bundled models a job can start from by name (POST /api/v1/jobs with &quot;reference&quot;), built on first use.</p>
        <Table<ReferencePublic>
          aria-label="Reference models"
          size="small"
          rowKey="name"
          pagination={false}
          dataSource={references}
          columns={[
            { title: 'Name', dataIndex: 'name' },
            { title: 'Description', dataIndex: 'description' },
            { title: 'Kind', dataIndex: 'kind' },
            { title: 'Format', dataIndex: 'format' },
            {
              title: 'Weights',
              dataIndex: 'trained',
              render: (trained: boolean) => (trained ? <Tag color="green">trained</Tag> : <Tag>random</Tag>),
            },
            { title: 'Judged with', dataIndex: 'task', render: (task: string | null) => task ?? 'synthetic inputs' },
          ]}
        />
      </Card>
    </Space>
  );
}
