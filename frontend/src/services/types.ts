// Request and response bodies of robopt's HTTP API (/api/v1), written by hand from the Pydantic models in
// server/schemas.py, agents/intake.py (GoalSpec), tools/evaluation/criteria.py (Criteria),
// tools/evaluation/comparison.py (Comparison) and graph/events.py (Event). Field names match exactly.
// Next: generate them from /openapi.json.

/** Datetimes come as ISO-8601 strings. */
export type IsoDateTime = string;

/** server/schemas.py ErrorPublic: every error answer. */
export interface ErrorPublic {
  code: string;
  message: string;
  detail: Record<string, unknown>;
  hint: string | null;
}

/** server/schemas.py ModelPublic. */
export interface ModelPublic {
  id: string;
  name: string;
  filename: string;
  format: string;
  size_bytes: number;
  sha256: string;
  params: number;
  created: IsoDateTime;
  options: Record<string, unknown>;
  profile: Record<string, unknown>;
}

export interface ModelsPublic {
  data: ModelPublic[];
  count: number;
}

/** server/schemas.py ReferencePublic: a bundled reference model a job can start from by name. */
export interface ReferencePublic {
  name: string;
  description: string;
  kind: 'torch_policy' | 'hf_directory' | 'archives';
  /** What the job is given: torch_state_dict, hf_directory or zip. */
  format: string;
  /** Ships trained weights (else random weights). */
  trained: boolean;
  /** The task whose data a job judges it with; null: synthetic inputs. */
  task: string | null;
  /** The simulator of its task: sent as `simulator`, it judges the job by closed-loop success; null: none. */
  simulator: string | null;
}

export interface ReferencesPublic {
  data: ReferencePublic[];
  count: number;
}

/** tools/evaluation/criteria.py Criteria. */
export interface Criteria {
  max_size_mb: number | null;
  max_latency_ms: number | null;
  latency_target: string;
  max_memory_mb: number | null;
  accuracy_floor: number | null;
  max_accuracy_drop: number | null;
  accuracy_drop_unit: 'absolute' | 'relative_pct';
  accuracy_level: string | null;
  accuracy_metric: string | null;
  min_speedup: number | null;
  min_compression: number | null;
}

/** agents/intake.py GoalSpec. */
export interface GoalSpec {
  criteria: Criteria;
  objective: string;
  stop_at_first: boolean;
  targets: string[];
  assumptions: string[];
  question: string | null;
}

/** server/schemas.py JobCreate. */
export interface JobCreate {
  model_id?: string | null;
  reference?: string | null;
  goal: string;
  target?: string | null;
  dataset_id?: string | null;
  simulator?: string | null;
  episodes?: number | null;
  max_attempts?: number | null;
  time_budget_s?: number | null;
  stop_at_first?: boolean;
}

/** server/schemas.py AttemptPublic. */
export interface AttemptPublic {
  index: number;
  technique: string;
  params: Record<string, unknown>;
  status: string;
  reason: string;
  version_id: string | null;
  metrics: Record<string, unknown> | null;
  duration_s: number | null;
}

export interface JobLinks {
  events: string;
  websocket: string;
  report: string;
  checkpoints: string;
}

/** server/schemas.py JobPublic. */
export interface JobPublic {
  id: string;
  goal: string;
  model: string;
  target: string | null;
  reasoner: string;
  status: string;
  created: IsoDateTime;
  updated: IsoDateTime;
  finished: IsoDateTime | null;
  parent_job_id: string | null;
  fork_checkpoint_id: string | null;
  goal_met: boolean | null;
  best_version: string | null;
  error: string | null;
  attempts_count: number;
  queue_position: number | null;
  attempts: AttemptPublic[];
  links: JobLinks;
}

export interface JobsPublic {
  data: JobPublic[];
  count: number;
}

/** server/schemas.py JobAccepted (202 of POST /jobs, /chat and /jobs/{id}/replay). */
export interface JobAccepted {
  job: JobPublic;
  goal: GoalSpec | null;
  estimated_memory_mb: number | null;
}

export interface CancelPublic {
  id: string;
  status: string;
}

/** server/schemas.py CheckpointPublic: one point a job can be replayed from. */
export interface CheckpointPublic {
  checkpoint_id: string;
  step: number;
  node: string | null;
  next: string[];
  created: IsoDateTime | null;
  current_version: string | null;
  attempts: number;
  status: string | null;
}

/** server/schemas.py CheckpointsPublic (GET /jobs/{id}/checkpoints, oldest first). */
export interface CheckpointsPublic {
  data: CheckpointPublic[];
  count: number;
}

/** server/schemas.py ReplayCreate (POST /jobs/{id}/replay answers 202 with a JobAccepted). */
export interface ReplayCreate {
  checkpoint_id: string;
  goal?: string | null;
}

/** server/schemas.py ChatMessage. */
export interface ChatMessage {
  role: 'user' | 'assistant';
  content: string;
}

/** server/schemas.py ChatRequest. */
export interface ChatRequest {
  messages: ChatMessage[];
  model_id?: string | null;
  /** A bundled reference model by name (GET /references); not with model_id. */
  reference?: string | null;
  model_params?: number | null;
  target?: string | null;
  simulator?: string | null;
  dataset_id?: string | null;
  start?: boolean;
  max_attempts?: number | null;
  time_budget_s?: number | null;
  stop_at_first?: boolean;
}

/** server/schemas.py ChatResponse. */
export interface ChatResponse {
  reply: string;
  goal: GoalSpec;
  job: JobPublic | null;
}

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
