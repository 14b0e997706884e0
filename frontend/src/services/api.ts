// Every HTTP call of the page goes through this module (robopt's API under /api/v1).
import type {
  CancelPublic,
  ChatRequest,
  ChatResponse,
  CheckpointsPublic,
  ErrorPublic,
  JobAccepted,
  JobCreate,
  JobPublic,
  JobsPublic,
  ModelPublic,
  ModelsPublic,
  ReferencesPublic,
  ReplayCreate,
  ReportJson,
} from './types';

export type * from './types';

export const API_PREFIX = '/api/v1';
const KEY_STORAGE = 'robopt.apiKey';

/** An error answer of the service ({code, message, detail, hint}) or a failed request, typed. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly hint: string | null;
  readonly detail: Record<string, unknown>;

  constructor(status: number, body: ErrorPublic) {
    super(body.message);
    this.name = 'ApiError';
    this.status = status;
    this.code = body.code;
    this.hint = body.hint ?? null;
    this.detail = body.detail ?? {};
  }
}

export function isApiError(error: unknown): error is ApiError {
  return error instanceof ApiError;
}

/** Any thrown value as an ApiError (network failures get code `network_error`). */
export function toApiError(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new ApiError(0, {
    code: 'network_error',
    message,
    detail: {},
    hint: 'is `robopt serve` running on the address the page proxies to?',
  });
}

// --- API key: kept in memory and sessionStorage; asked for (once) when a call answers 401 ---

let apiKey: string | null = readStoredKey();
/** Asks the user for a key; `refused` says the service turned down the key the page sent. */
export type KeyPrompt = (refused: boolean) => Promise<string | null>;

let askForKey: KeyPrompt | null = null;

function readStoredKey(): string | null {
  try {
    return typeof sessionStorage === 'undefined' ? null : sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

export function getApiKey(): string | null {
  return apiKey;
}

export function setApiKey(key: string | null): void {
  apiKey = key;
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage unavailable: memory only
  }
}

/** The AuthContext registers how to ask the user for a key; null clears it. */
export function setKeyPrompt(prompt: KeyPrompt | null): void {
  askForKey = prompt;
}

function asErrorBody(status: number, body: unknown, fallback: string): ErrorPublic {
  if (body && typeof body === 'object' && 'code' in body && 'message' in body) {
    const b = body as Partial<ErrorPublic>;
    return {
      code: String(b.code),
      message: String(b.message),
      detail: b.detail ?? {},
      hint: b.hint ?? null,
    };
  }
  return { code: `http_${status}`, message: fallback, detail: {}, hint: null };
}

async function fetchWithKey(path: string, init: RequestInit): Promise<{ response: Response; sentKey: boolean }> {
  const headers = new Headers(init.headers);
  if (apiKey) headers.set('Authorization', `Bearer ${apiKey}`);
  try {
    return { response: await fetch(`${API_PREFIX}${path}`, { ...init, headers }), sentKey: Boolean(apiKey) };
  } catch (error) {
    throw toApiError(error);
  }
}

/** One call; on a 401 the user is asked for the key (again, as long as the service refuses the key they give,
 * until they cancel) and the call is sent again with it. */
async function send(path: string, init: RequestInit): Promise<Response> {
  let { response, sentKey } = await fetchWithKey(path, init);
  while (response.status === 401 && askForKey) {
    const key = await askForKey(sentKey);
    if (!key) break;
    setApiKey(key);
    ({ response, sentKey } = await fetchWithKey(path, init));
  }
  if (!response.ok) {
    let body: unknown = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    throw new ApiError(response.status, asErrorBody(response.status, body, response.statusText));
  }
  return response;
}

async function json<T>(path: string, init: RequestInit = {}): Promise<T> {
  const response = await send(path, init);
  return (await response.json()) as T;
}

function jsonBody(method: string, body: unknown): RequestInit {
  return { method, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) };
}

// --- models ---

export interface ModelUpload {
  file: File;
  name?: string;
  config?: File;
  /** JSON text: {"architecture": "mod:Class", "input_specs": [...], ...} */
  options?: string;
}

export function uploadModel(upload: ModelUpload): Promise<ModelPublic> {
  const form = new FormData();
  form.append('file', upload.file);
  if (upload.config) form.append('config', upload.config);
  if (upload.name) form.append('name', upload.name);
  if (upload.options) form.append('options', upload.options);
  return json<ModelPublic>('/models', { method: 'POST', body: form });
}

export function listModels(): Promise<ModelsPublic> {
  return json<ModelsPublic>('/models');
}

/** The bundled reference models a job can start from (`reference: name` instead of `model_id`). */
export function getReferences(): Promise<ReferencesPublic> {
  return json<ReferencesPublic>('/references');
}

export function getModel(modelId: string): Promise<ModelPublic> {
  return json<ModelPublic>(`/models/${encodeURIComponent(modelId)}`);
}

// --- chat and jobs ---

/** One chat turn: 200 with the criteria, 202 with a started job, ApiError `goal_unclear` with the question. */
export function chat(request: ChatRequest): Promise<ChatResponse> {
  return json<ChatResponse>('/chat', jsonBody('POST', request));
}

export function createJob(body: JobCreate): Promise<JobAccepted> {
  return json<JobAccepted>('/jobs', jsonBody('POST', body));
}

export function listJobs(params: { status?: string; limit?: number } = {}): Promise<JobsPublic> {
  const query = new URLSearchParams();
  if (params.status) query.set('status', params.status);
  if (params.limit) query.set('limit', String(params.limit));
  const suffix = query.toString() ? `?${query.toString()}` : '';
  return json<JobsPublic>(`/jobs${suffix}`);
}

export function getJob(jobId: string): Promise<JobPublic> {
  return json<JobPublic>(`/jobs/${encodeURIComponent(jobId)}`);
}

export function cancelJob(jobId: string): Promise<CancelPublic> {
  return json<CancelPublic>(`/jobs/${encodeURIComponent(jobId)}/cancel`, { method: 'POST' });
}

/** The job's checkpoints, oldest first: the points a replay can start from. */
export function getCheckpoints(jobId: string): Promise<CheckpointsPublic> {
  return json<CheckpointsPublic>(`/jobs/${encodeURIComponent(jobId)}/checkpoints`);
}

/** Replay the job from a checkpoint (optionally with a changed goal) as a new job: 202 with that job. */
export function replayJob(jobId: string, body: ReplayCreate): Promise<JobAccepted> {
  return json<JobAccepted>(`/jobs/${encodeURIComponent(jobId)}/replay`, jsonBody('POST', body));
}

export function getReport(jobId: string): Promise<ReportJson> {
  return json<ReportJson>(`/jobs/${encodeURIComponent(jobId)}/report`);
}

export function artifactPath(jobId: string, versionId: string): string {
  return `${API_PREFIX}/jobs/${encodeURIComponent(jobId)}/artifacts/${encodeURIComponent(versionId)}`;
}

export interface Download {
  blob: Blob;
  filename: string;
  sha256: string | null;
}

/** A version's artifact (with the key header, which a plain link could not send). */
export async function downloadArtifact(jobId: string, versionId: string): Promise<Download> {
  const path = artifactPath(jobId, versionId).slice(API_PREFIX.length);
  const response = await send(path, {});
  const disposition = response.headers.get('content-disposition') ?? '';
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  return {
    blob: await response.blob(),
    filename: match ? decodeURIComponent(match[1]) : `${jobId}-${versionId}`,
    sha256: response.headers.get('x-robopt-sha256'),
  };
}
