/**
 * Wire types of the hypervisord REST API (docs/api.md).
 *
 * Every field keeps the exact snake_case name the daemon sends, so `status.cbt_enabled`
 * and `analysis.estimated_savings_bytes` read as in the spec's examples. Objects the
 * daemon may grow carry an index signature so newer fields stay reachable.
 */

// ---------------------------------------------------------------------------- CBT

/** `POST /cbt/enable` and `POST /cbt/disable`. */
export interface CBTToggleResponse {
  success: boolean;
  /** `CBT enabled successfully for <vm_path>` (or `disabled`). */
  message: string;
}

/** One disk of a VM as the platform reports it now. */
export interface DiskInfo {
  /** `disk-2000` on vSphere, the block node name on QEMU. */
  key: string;
  path: string;
  capacity_bytes: number;
  /** The disk's current change id; empty when the platform has none. */
  change_id: string;
  backing_info: string;
  /** false for a disk that cannot be tracked; absent or null otherwise. */
  cbt_supported?: boolean | null;
  /** Why the disk cannot be tracked, with `cbt_supported: false`. */
  cbt_reason?: string | null;
  [field: string]: unknown;
}

/** One disk as recorded by the last export. */
export interface LastExportDisk {
  key: string;
  capacity_bytes: number;
  change_id: string;
  [field: string]: unknown;
}

/** The newest export of a VM in the history (`last_export`). */
export interface LastExport {
  vm_id: string;
  /** ISO 8601, UTC. */
  export_time: string;
  total_size: number;
  /** In `/cbt/status` (not in `/incremental/analyze`). */
  disk_info?: LastExportDisk[] | null;
  generation?: string | null;
  export_path?: string | null;
  [field: string]: unknown;
}

/** `POST /cbt/status`. */
export interface CBTStatus {
  vm_path: string;
  cbt_enabled: boolean;
  disks: DiskInfo[];
  /** null when the VM was never exported. */
  last_export: LastExport | null;
  can_incremental: boolean;
  reason: string;
  [field: string]: unknown;
}

/** `POST /incremental/analyze`. */
export interface IncrementalAnalysis {
  vm_path: string;
  can_incremental: boolean;
  reason: string;
  last_export: LastExport | null;
  current_disks: DiskInfo[];
  /** What an incremental export would read now; null when unknown. */
  estimated_changed_bytes: number | null;
  estimated_savings_bytes: number;
  /** Human text (`2 minutes`), from the measured throughput of earlier exports. */
  estimated_duration: string;
  [field: string]: unknown;
}

// --------------------------------------------------------------------------- Jobs

export type JobKind = 'export' | 'restore' | 'verify' | 'gc';
export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
/** States a job never leaves. */
export const TERMINAL_JOB_STATES: readonly JobState[] = ['succeeded', 'failed', 'cancelled'];
export type ExportMode = 'full' | 'incremental';
export type Compression = 'zstd' | 'lz4' | 'none';
export type RestoreFormat = 'raw' | 'qcow2' | 'vmdk';

/** `{"code", "message"}`: the error of a failed job, and of every error response. */
export interface ErrorInfo {
  code: string;
  message: string;
}

/** One disk of an export's result. */
export interface ExportResultDisk {
  key: string;
  capacity_bytes: number;
  change_id: string | null;
  bytes_read: number;
  bytes_stored: number;
  [field: string]: unknown;
}

/** `result` of a succeeded export: the `hyperexport --json` object. */
export interface ExportResult {
  vm: string;
  vm_name?: string;
  generation: string;
  mode: ExportMode;
  reason: string;
  bytes_read: number;
  bytes_stored: number;
  duration_s: number;
  throughput_mib_s?: number;
  output?: string;
  disks: ExportResultDisk[];
  [field: string]: unknown;
}

/** `result` of a succeeded restore. */
export interface RestoreResult {
  vm_id: string;
  generation: string;
  disk: string;
  path: string;
  format: RestoreFormat;
  capacity_bytes: number;
  bytes_written: number;
  zero_blocks: number;
  [field: string]: unknown;
}

/** `result` of a succeeded restore into an existing disk (`since` or `compare`). */
export interface RestoreIntoResult {
  vm_id: string;
  generation: string;
  since: string | null;
  mode: 'since' | 'compare';
  disk: string;
  target: string;
  target_format: 'raw' | 'block-device' | 'qcow2' | 'qemu';
  capacity_bytes: number;
  block_size: number;
  blocks_total: number;
  blocks_changed: number;
  blocks_zeroed: number;
  bytes_read_repository: number;
  bytes_read_target: number;
  bytes_written: number;
  resized_from: number | null;
  seconds: number;
  [field: string]: unknown;
}

/** One problem a verification found. */
export interface Damage {
  vm: string;
  generation: string;
  disk: string;
  problem: string;
  /** Hex chunk id; empty when the index itself is damaged. */
  chunk?: string;
  /** `[start, end)` byte offsets. */
  ranges?: Array<[number, number]>;
  [field: string]: unknown;
}

/** `result` of a succeeded verification (`ok` is false when damage was found). */
export interface VerifyResult {
  ok: boolean;
  generations: number;
  disks: number;
  chunks_checked: number;
  bytes_checked: number;
  damage: Damage[];
  [field: string]: unknown;
}

/** A gc job's `result`: `hyperctl gc --json`'s object. */
export interface GcResult {
  dry_run: boolean;
  chunks_kept: number;
  chunks_removed: number;
  bytes_removed: number;
  indexes_removed: number;
  temp_files_removed: number;
  [field: string]: unknown;
}

export type JobResult = ExportResult | RestoreResult | RestoreIntoResult | VerifyResult | GcResult;

/** An export, restore or verification run by the daemon. */
export interface Job<R = JobResult> {
  /** `j-6f1c2a9e0b7d` */
  id: string;
  kind: JobKind;
  vm_path: string | null;
  output: string | null;
  state: JobState;
  /** Free text: `queued`, `deciding`, `copying`, `committing`, `done`, ... */
  phase: string;
  bytes_done: number;
  bytes_total: number | null;
  throughput_bytes_per_s: number | null;
  /** The export decision; null until decided, and for other kinds. */
  mode: ExportMode | null;
  reason: string | null;
  created: string;
  started: string | null;
  finished: string | null;
  /** Set on success. */
  result: R | null;
  /** Set on failure (`daemon restarted` for a job that was running at a restart). */
  error: ErrorInfo | null;
  [field: string]: unknown;
}

export type ExportJob = Job<ExportResult>;
export type RestoreJob = Job<RestoreResult | RestoreIntoResult>;
export type VerifyJob = Job<VerifyResult>;
export type GcJob = Job<GcResult>;

/** `GET /exports` */
export interface JobList {
  jobs: Job[];
}

/** One event of `GET /exports/{id}/events`: `job` whenever the job changes, then `end`. */
export interface JobEvent<R = JobResult> {
  type: 'job' | 'end';
  job: Job<R>;
}

// -------------------------------------------------------------------- Repositories

export interface GenerationDisk {
  key: string;
  capacity_bytes: number;
  change_id: string;
  [field: string]: unknown;
}

/** One generation as `hyperctl generations --json` prints it. */
export interface Generation {
  id: string;
  vm: string;
  vm_name: string;
  platform: string;
  /** The VM as hyperexport was pointed at it (canonical form); null for older exports. */
  locator?: string | null;
  type: ExportMode;
  reason: string;
  /** The generation this one builds on; null for a full one. */
  parent: string | null;
  created: string;
  completed: string | null;
  block_size: number;
  total_size: number;
  bytes_read: number;
  bytes_stored: number;
  disks: GenerationDisk[];
  /** The CBT audit this generation made (`hyperexport --audit`); null when none. */
  audit?: GenerationAudit | null;
  /** A later CBT audit found blocks that tracking missed since this generation. */
  suspect?: boolean;
  [field: string]: unknown;
}

/** `Generation.audit` */
export interface GenerationAudit {
  performed: boolean;
  previous: string | null;
  clean: boolean;
  blocks_checked: number;
  blocks_missed: number;
}

/** `GET /generations` */
export interface GenerationList {
  generations: Generation[];
}

/** `GET /repository`: one listing of the chunk store, no chunk read. */
export interface RepositoryStats {
  /** The repository (resolved). */
  output: string;
  encrypted: boolean;
  compression: string;
  vms: number;
  generations: number;
  chunk_count: number;
  /** Bytes of all chunk objects (after compression). */
  stored_bytes: number;
  /** Sum of every generation's disk sizes. */
  logical_bytes: number;
  /** `logical_bytes / stored_bytes`; null while nothing is stored. */
  dedup_ratio: number | null;
  /** The newest finished verification job. */
  last_verify: Job<VerifyResult> | null;
  /** The newest finished gc job. */
  last_gc: Job<GcResult> | null;
  [field: string]: unknown;
}

/** A generation's disk served over NBD by the daemon (instant access). */
export interface ServeSession {
  id: string;
  output: string;
  /** The VM id the name resolved to. */
  vm: string;
  generation: string;
  disk: string;
  size: number;
  writable: boolean;
  /** `nbd+unix:///?socket=...`: a unix socket on the daemon's host. */
  uri: string;
  socket: string;
  created: string;
  /** NBD clients connected now. */
  connections: number;
  bytes_read: number;
}

export interface ServeSessionList {
  sessions: ServeSession[];
}

// ------------------------------------------------------------------------ Policies

/** A policy's retention rules (restic's `forget --keep-*`, docs/retention.md); 0 or absent: off. */
export interface RetentionRules {
  keep_last?: number;
  keep_hourly?: number;
  keep_daily?: number;
  keep_weekly?: number;
  keep_monthly?: number;
  keep_yearly?: number;
  /** A duration such as `7d` or `1y6m`; empty: off. */
  keep_within?: string;
}

/** A VM of a policy and its placement, the keys of `max_per_host` / `max_per_datastore`. */
export interface PolicyVm {
  vm: string;
  host?: string | null;
  datastore?: string | null;
}

/** A VM of a policy: its locator, or the locator with its placement. */
export type PolicyVmEntry = string | PolicyVm;

/** Where a policy comes from: the daemon's policies file (read-only here) or the API. */
export type PolicySource = 'file' | 'api';

/** `GET /policies/{name}`. */
export interface Policy {
  name: string;
  vms: PolicyVm[];
  /** Cron, UTC: 5 fields, or 6 with seconds first. */
  schedule: string;
  output: string;
  retention: RetentionRules;
  full_every_days: number | null;
  audit_every_days: number | null;
  max_concurrent: number;
  max_per_host: number | null;
  max_per_datastore: number | null;
  source: PolicySource;
  /** The next scheduled time (ISO 8601, UTC). */
  next_run: string;
  /** The id of the run going, if any. */
  running: string | null;
  [field: string]: unknown;
}

/** `GET /policies`. */
export interface PolicyList {
  policies: Policy[];
}

/** What the policy asked of one VM's export. */
export type PolicyExportMode = 'incremental' | 'full' | 'audit';
export type PolicyRunState = 'running' | 'succeeded' | 'failed' | 'skipped';
export type PolicyTrigger = 'schedule' | 'catch-up' | 'manual';

/** One VM's export in a policy run. */
export interface PolicyRunExport {
  vm: string;
  mode: PolicyExportMode;
  /** Why that mode (e.g. the audit that found blocks CBT missed). */
  why: string;
  /** The daemon's export job; null until submitted. */
  job_id: string | null;
  /** `pending`, then the export job's state. */
  state: string;
  generation: string | null;
  /** What the export did: `full` or `incremental`. */
  result_mode: string | null;
  /** The CBT audit's count of missed blocks, when one was made. */
  blocks_missed: number | null;
  error: string | null;
}

/** The prune report of a run (`hyperctl prune --json`). */
export type PruneResult = Record<string, unknown>;

/** A run of a policy (`POST /policies/{name}/run`, `GET /policies/{name}/history`). */
export interface PolicyRun {
  id: string;
  policy: string;
  trigger: PolicyTrigger;
  /** The cron time the run is for; null when run by hand. */
  scheduled: string | null;
  state: PolicyRunState;
  /** Why it failed or was skipped. */
  reason: string | null;
  started: string | null;
  finished: string | null;
  exports: PolicyRunExport[];
  prune: PruneResult | null;
}

/** `GET /policies/{name}/history`. */
export interface PolicyRunList {
  runs: PolicyRun[];
}

// ------------------------------------------------------------------------- Service

/** `GET /health` */
export interface HealthResponse {
  status: string;
  version: string;
  [field: string]: unknown;
}

/** The error body of every non-2xx response. */
export interface ErrorResponse {
  error: ErrorInfo;
}

// ----------------------------------------------------------------- Request options

/** `exportVM` options (sent as the snake_case fields of `POST /exports`). */
export interface ExportOptions {
  /** Repository folder; the daemon's default repository when left out. */
  output?: string;
  /** Export only what changed since the last export when possible. */
  incremental?: boolean;
  /** Full export even when an incremental one is possible. */
  forceFull?: boolean;
  compression?: Compression;
  compressionLevel?: number;
  blockSize?: number;
  parallel?: number;
  maxIncrementalAgeDays?: number;
  /** Read every block and report the blocks CBT missed since the previous generation. */
  audit?: boolean;
}

/**
 * `putPolicy`: a policy document, with the fields of the policies file (snake_case, as in
 * the YAML or TOML file, so one document serves both).
 */
export interface PolicyOptions {
  /** Must be the name the call gives, when present. */
  name?: string;
  vms: PolicyVmEntry[];
  schedule: string;
  /** Repository folder; the daemon's default repository when left out. */
  output?: string;
  retention?: RetentionRules;
  full_every_days?: number;
  audit_every_days?: number;
  max_concurrent?: number;
  max_per_host?: number;
  max_per_datastore?: number;
}

/** `listExports` filters (query parameters of `GET /exports`). */
export interface ListExportsFilters {
  state?: JobState;
  kind?: JobKind;
  vmPath?: string;
  limit?: number;
}

/** `restore` options (`POST /restores`). */
export interface RestoreOptions {
  /** The VM: its id in the repository, the locator it was exported with, or its name. */
  vm: string;
  /** File to write; with `since`/`compare` an existing raw file, block device, qcow2 file or `qemu:` locator. */
  to: string;
  output?: string;
  /** Generation id or `latest` (the default). */
  generation?: string;
  /** Disk key; may be left out when the VM has one disk. */
  disk?: string;
  format?: RestoreFormat;
  /** Overwrite an existing file. */
  force?: boolean;
  /** The target already holds this generation: write only the blocks that differ from it. */
  since?: string;
  /** Read the target and write the blocks that differ (excludes `since`). */
  compare?: boolean;
}

/** `verify` options (`POST /verifications`). */
export interface VerifyOptions {
  output?: string;
  vm?: string;
  generation?: string;
}

/** `gc` options (`POST /gc`). */
export interface GcOptions {
  output?: string;
  /** Only count what gc would remove. */
  dryRun?: boolean;
}

/** `startServeSession` options (`POST /serve-sessions`). */
export interface ServeSessionOptions {
  /** The VM: its id in the repository, the locator it was exported with, or its name. */
  vm: string;
  output?: string;
  /** Generation id or `latest` (the default). */
  generation?: string;
  /** Disk key; may be left out when the VM has one disk. */
  disk?: string;
  /** Accept writes into a temporary overlay dropped when the session stops. */
  writable?: boolean;
}

/** `waitForExport` options. */
export interface WaitOptions<R = JobResult> {
  /** Give up (JobTimeoutError) after this long; no limit by default. */
  timeoutMs?: number;
  /** Time between two polls; 1000 ms by default. */
  pollIntervalMs?: number;
  /** Called with the job after every poll, the final one included. */
  onProgress?: (job: Job<R>) => void;
  /** Stop waiting (the job keeps running). */
  signal?: AbortSignal;
}

/** `streamExportEvents` options. */
export interface StreamOptions {
  /** Close the stream. */
  signal?: AbortSignal;
}

/** Options of the `HyperSDK` constructor. */
export interface HyperSDKOptions {
  /**
   * Sent as `Authorization: Bearer <token>`. Left out: under Node, `HYPERSDK_API_TOKEN`,
   * else (loopback URLs only) the daemon's `$HYPERSDK_STATE_DIR/api-token` or
   * `~/.hypersdk/api-token`; in a browser, none. An empty string sends no token.
   */
  token?: string;
  /** Per-request time limit (until the response is read); 30 000 ms by default. */
  timeoutMs?: number;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
  /** Extra headers sent with every request. */
  headers?: Record<string, string>;
}
