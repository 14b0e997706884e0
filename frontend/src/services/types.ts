// Request and response bodies of robopt's HTTP API (/api/v1). Every type the OpenAPI document describes comes
// from the generated ./openapi.ts (`npm run gen:api`, checked by tests/server/test_openapi_types.py), so the page
// cannot drift from the service's Pydantic models. Written by hand below: only what the document cannot express
// (the report's JSON, which GET /jobs/{id}/report serves as a file, and the event stream's payloads).
import type { components } from './openapi';

type Schemas = components['schemas'];

/**
 * A request body: the fields listed may be left out (the service fills in their defaults). openapi-typescript
 * reads a field with a default as always present, which is right for answers (the service always sends it) but
 * not for what the page sends. Distributes over unions (JobCreate names a model_id or a reference).
 */
type RequestBody<T, K extends keyof T> = T extends unknown ? Omit<T, K> & Partial<Pick<T, K>> : never;

/** Datetimes come as ISO-8601 strings. */
export type IsoDateTime = string;

/** server/schemas.py ErrorPublic: every error answer. */
export type ErrorPublic = Schemas['ErrorPublic'];

/** server/schemas.py ModelPublic. */
export type ModelPublic = Schemas['ModelPublic'];
export type ModelsPublic = Schemas['ModelsPublic'];

/** server/schemas.py ReferencePublic: a bundled reference model a job can start from by name. */
export type ReferencePublic = Schemas['ReferencePublic'];
export type ReferencesPublic = Schemas['ReferencesPublic'];

/** tools/evaluation/criteria.py Criteria. */
export type Criteria = Schemas['Criteria'];

/** agents/intake.py GoalSpec. */
export type GoalSpec = Schemas['GoalSpec'];

/** server/schemas.py JobCreate: a model_id or a reference. */
export type JobCreate = RequestBody<Schemas['JobCreate'], 'stop_at_first'>;

/** server/schemas.py AttemptPublic. */
export type AttemptPublic = Schemas['AttemptPublic'];
export type JobLinks = Schemas['JobLinks'];

/** server/schemas.py JobPublic. */
export type JobPublic = Schemas['JobPublic'];
export type JobsPublic = Schemas['JobsPublic'];

/** server/schemas.py JobAccepted (202 of POST /jobs, /chat and /jobs/{id}/replay). */
export type JobAccepted = Schemas['JobAccepted'];
export type CancelPublic = Schemas['CancelPublic'];

/** server/schemas.py CheckpointPublic: one point a job can be replayed from. */
export type CheckpointPublic = Schemas['CheckpointPublic'];

/** server/schemas.py CheckpointsPublic (GET /jobs/{id}/checkpoints, oldest first). */
export type CheckpointsPublic = Schemas['CheckpointsPublic'];

/** server/schemas.py ReplayCreate (POST /jobs/{id}/replay answers 202 with a JobAccepted). */
export type ReplayCreate = Schemas['ReplayCreate'];

/** server/schemas.py ChatMessage. */
export type ChatMessage = Schemas['ChatMessage'];

/** server/schemas.py ChatRequest. */
export type ChatRequest = RequestBody<Schemas['ChatRequest'], 'start' | 'stop_at_first'>;

/** server/schemas.py ChatResponse. */
export type ChatResponse = Schemas['ChatResponse'];

/** tools/evaluation/comparison.py AccuracyChange. */
export interface AccuracyChange {
  label: string;
  level: string;
  metric: string;
  higher_is_better: boolean;
  before: number;
  after: number;
  change: number;
  relative_pct: number | null;
  improved: boolean;
}

/** tools/evaluation/comparison.py Comparison. */
export interface Comparison {
  baseline_version: string;
  candidate_version: string;
  accuracy: AccuracyChange | null;
  size_mb_before: number | null;
  size_mb_after: number | null;
  compression: number | null;
  params_before: number | null;
  params_after: number | null;
  latency_ms_before: number | null;
  latency_ms_after: number | null;
  speedup: number | null;
  per_sample_ms_before: number | null;
  per_sample_ms_after: number | null;
  peak_memory_mb_before: number | null;
  peak_memory_mb_after: number | null;
}

/** tools/evaluation/criteria.py CriterionResult (the fields the page shows). */
export interface CriterionResult {
  name: string;
  value: number | null;
  limit: number;
  unit: string;
  note?: string | null;
}

/** tools/evaluation/report.py Report: the fields the page reads (the JSON has more). */
export interface ReportJson {
  schema_version: number;
  goal: string;
  criteria: Criteria;
  comparison: Comparison;
  goal_met: boolean;
  missing: CriterionResult[];
  notes: string[];
  created: IsoDateTime;
}

/** graph/events.py EventType. */
export type JobEventType = 'progress' | 'status' | 'attempt' | 'checkpoint' | 'error' | 'complete';

/** graph/events.py Event: what SSE, WebSocket and Socket.io (`optimization:<type>`) carry. */
export interface JobEvent {
  type: JobEventType;
  job_id: string;
  seq: number;
  time: IsoDateTime;
  data: Record<string, unknown>;
}

/** Socket.io `stream:end`: nothing more follows on this subscription. */
export interface StreamEnd {
  job_id: string;
  last_seq: number;
}

/** The ack of the Socket.io `subscribe` message. */
export type SubscribeAck = { job_id: string; after_seq: number } | { error: ErrorPublic };
