/**
 * `HyperSDK`: a client of the hypervisord REST API (docs/api.md) on the global `fetch`.
 */

import {
  HyperSDKAPIError,
  NetworkError,
  JobTimeoutError,
  errorFromResponse,
} from './errors.js';
import { parseSSE, readBody } from './sse.js';
import { findToken } from './token.js';
import {
  TERMINAL_JOB_STATES,
  type CBTStatus,
  type CBTToggleResponse,
  type ExportJob,
  type ExportOptions,
  type Generation,
  type GenerationList,
  type HealthResponse,
  type HyperSDKOptions,
  type IncrementalAnalysis,
  type Job,
  type JobEvent,
  type JobList,
  type JobResult,
  type ListExportsFilters,
  type Policy,
  type PolicyList,
  type PolicyOptions,
  type PolicyRun,
  type PolicyRunList,
  type RepositoryStats,
  type RestoreJob,
  type RestoreOptions,
  type ServeSession,
  type ServeSessionList,
  type ServeSessionOptions,
  type StreamOptions,
  type VerifyJob,
  type VerifyOptions,
  type GcJob,
  type GcOptions,
  type WaitOptions,
} from './types.js';

export const VERSION = '0.1.0';
export const DEFAULT_BASE_URL = 'http://localhost:8080';
export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_POLL_INTERVAL_MS = 1_000;

type Query = Record<string, string | number | boolean | undefined>;

interface RequestOptions {
  body?: Record<string, unknown>;
  query?: Query;
  signal?: AbortSignal;
}

function policyPath(name: string): string {
  if (!name) throw new TypeError('policy name is empty');
  return `/policies/${encodeURIComponent(name)}`;
}

/** Drop the keys whose value is undefined (the daemon then uses its defaults). */
function compact(doc: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(doc)) if (v !== undefined) out[k] = v;
  return out;
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortReason(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * One call of `fetch` with a time limit and an optional caller's signal. `settle()`
 * stops the clock (for streams, once the headers are in); `dispose()` detaches from the
 * caller's signal.
 */
class Deadline {
  readonly controller = new AbortController();
  timedOut = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly onAbort: () => void;

  constructor(
    timeoutMs: number,
    private readonly outer?: AbortSignal,
  ) {
    this.onAbort = () => this.controller.abort(abortReason(outer!));
    if (outer?.aborted) this.controller.abort(abortReason(outer));
    else outer?.addEventListener('abort', this.onAbort, { once: true });
    if (timeoutMs > 0 && Number.isFinite(timeoutMs)) {
      this.timer = setTimeout(() => {
        this.timedOut = true;
        this.controller.abort(new DOMException('The request timed out', 'TimeoutError'));
      }, timeoutMs);
    }
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  settle(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  dispose(): void {
    this.settle();
    this.outer?.removeEventListener('abort', this.onAbort);
  }
}

export class HyperSDK {
  /** Without a trailing slash. */
  readonly baseUrl: string;
  readonly timeoutMs: number;
  private readonly tokenOption: string | undefined;
  private token: Promise<string | undefined> | undefined;
  private readonly fetchImpl: typeof fetch;
  private readonly extraHeaders: Record<string, string>;

  constructor(baseUrl: string = DEFAULT_BASE_URL, options: HyperSDKOptions = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.tokenOption = options.token;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.extraHeaders = { ...(options.headers ?? {}) };
    const f = options.fetch ?? (globalThis as { fetch?: typeof fetch }).fetch;
    if (typeof f !== 'function') {
      throw new TypeError('HyperSDK: no global fetch (Node 18+ has one); pass options.fetch');
    }
    // Called as a plain function: a browser's fetch throws "Illegal invocation" when
    // called as a method of another object (this client).
    this.fetchImpl = (input, init) => f.call(globalThis, input, init);
  }

  // ----------------------------------------------------------------------- CBT

  /** `POST /cbt/enable` */
  enableCBT(vmPath: string): Promise<CBTToggleResponse> {
    return this.request('POST', '/cbt/enable', { body: { vm_path: vmPath } });
  }

  /** `POST /cbt/disable` */
  disableCBT(vmPath: string): Promise<CBTToggleResponse> {
    return this.request('POST', '/cbt/disable', { body: { vm_path: vmPath } });
  }

  /** `POST /cbt/status`; `output` is the repository the last export is looked up in. */
  getCBTStatus(vmPath: string, output?: string): Promise<CBTStatus> {
    return this.request('POST', '/cbt/status', { body: { vm_path: vmPath, output } });
  }

  /** `POST /incremental/analyze` */
  analyzeIncrementalExport(vmPath: string, output?: string): Promise<IncrementalAnalysis> {
    return this.request('POST', '/incremental/analyze', { body: { vm_path: vmPath, output } });
  }

  // ---------------------------------------------------------------------- Jobs

  /** `POST /exports`: start an export job (202). */
  exportVM(vmPath: string, options: ExportOptions = {}): Promise<ExportJob> {
    return this.request('POST', '/exports', {
      body: {
        vm_path: vmPath,
        output: options.output,
        incremental: options.incremental,
        force_full: options.forceFull,
        compression: options.compression,
        compression_level: options.compressionLevel,
        block_size: options.blockSize,
        parallel: options.parallel,
        max_incremental_age_days: options.maxIncrementalAgeDays,
        audit: options.audit,
      },
    });
  }

  /** `GET /exports/{id}`: a job of any kind. */
  getExport<R = JobResult>(id: string): Promise<Job<R>> {
    return this.request('GET', `/exports/${encodeURIComponent(id)}`);
  }

  /** `GET /exports`: jobs, newest first. */
  async listExports(filters: ListExportsFilters = {}): Promise<Job[]> {
    const doc = await this.request<JobList>('GET', '/exports', {
      query: { state: filters.state, kind: filters.kind, vm_path: filters.vmPath, limit: filters.limit },
    });
    return doc.jobs;
  }

  /** `DELETE /exports/{id}`: the job after cancelling; ConflictError when it already finished. */
  cancelExport<R = JobResult>(id: string): Promise<Job<R>> {
    return this.request('DELETE', `/exports/${encodeURIComponent(id)}`);
  }

  /**
   * Poll a job until it is `succeeded`, `failed` or `cancelled` and return it (a failed
   * job is returned, not thrown: look at `job.state` and `job.error`). Throws
   * JobTimeoutError (with `.job`) when `timeoutMs` runs out.
   */
  async waitForExport<R = JobResult>(id: string, options: WaitOptions<R> = {}): Promise<Job<R>> {
    const interval = Math.max(1, options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS);
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    for (;;) {
      if (options.signal?.aborted) throw abortReason(options.signal);
      const job = await this.request<Job<R>>('GET', `/exports/${encodeURIComponent(id)}`, {
        signal: options.signal,
      });
      options.onProgress?.(job);
      if (TERMINAL_JOB_STATES.includes(job.state)) return job;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new JobTimeoutError(
          `job ${id} still ${job.state} (${job.phase}) after ${options.timeoutMs} ms`,
          { job },
        );
      }
      await sleep(Math.min(interval, left), options.signal);
    }
  }

  /**
   * `GET /exports/{id}/events`: `{type: 'job', job}` whenever the job changes, then one
   * `{type: 'end', job}` with the finished job, after which the iteration ends. Breaking
   * out of the loop or aborting `options.signal` closes the connection.
   */
  async *streamExportEvents<R = JobResult>(
    id: string,
    options: StreamOptions = {},
  ): AsyncGenerator<JobEvent<R>, void, undefined> {
    const path = `/exports/${encodeURIComponent(id)}/events`;
    const deadline = new Deadline(this.timeoutMs, options.signal);
    try {
      const response = await this.send('GET', path, {}, deadline, 'text/event-stream');
      deadline.settle(); // the time limit covers the headers, not the stream
      if (!response.ok) throw await this.errorOf(response);
      if (response.body === null) {
        throw new HyperSDKAPIError({ status: response.status, code: 'invalid_response', message: `${path}: empty body` });
      }
      try {
        for await (const ev of parseSSE(readBody(response.body))) {
          if (ev.event !== 'job' && ev.event !== 'end') continue;
          let job: Job<R>;
          try {
            job = JSON.parse(ev.data) as Job<R>;
          } catch (err) {
            throw new HyperSDKAPIError({
              status: response.status,
              code: 'invalid_response',
              message: `${path}: event data is not JSON`,
              body: ev.data,
              cause: err,
            });
          }
          yield { type: ev.event, job };
          if (ev.event === 'end') return;
        }
      } catch (err) {
        if (err instanceof HyperSDKAPIError) throw err;
        if (options.signal?.aborted) return;
        throw new NetworkError(`${path}: event stream broke: ${describe(err)}`, { cause: err });
      }
      if (options.signal?.aborted) return;
      throw new NetworkError(`${path}: event stream ended before the job finished`);
    } catch (err) {
      if (options.signal?.aborted && !(err instanceof HyperSDKAPIError)) return;
      throw err;
    } finally {
      deadline.dispose();
    }
  }

  // -------------------------------------------------------------- Repositories

  /** `GET /generations`: oldest first; `output` defaults to the daemon's repository. */
  async listGenerations(output?: string, vm?: string): Promise<Generation[]> {
    const doc = await this.request<GenerationList>('GET', '/generations', { query: { output, vm } });
    return doc.generations;
  }

  /** `GET /repository`: size, chunk count, dedup ratio and last verification of a
   * repository (`output` defaults to the daemon's). */
  repositoryStats(output?: string): Promise<RepositoryStats> {
    return this.request('GET', '/repository', { query: { output } });
  }

  /** `POST /restores`: start a restore job (202). */
  restore(options: RestoreOptions): Promise<RestoreJob> {
    return this.request('POST', '/restores', {
      body: {
        output: options.output,
        vm: options.vm,
        generation: options.generation,
        disk: options.disk,
        to: options.to,
        format: options.format,
        force: options.force,
        since: options.since,
        compare: options.compare,
      },
    });
  }

  /** `POST /verifications`: start a verification job (202); `result.ok` false on damage. */
  verify(options: VerifyOptions = {}): Promise<VerifyJob> {
    return this.request('POST', '/verifications', {
      body: { output: options.output, vm: options.vm, generation: options.generation },
    });
  }

  /** `POST /gc`: start a gc job (202); `result` is `hyperctl gc --json`'s object. */
  gc(options: GcOptions = {}): Promise<GcJob> {
    return this.request('POST', '/gc', {
      body: { output: options.output, dry_run: options.dryRun },
    });
  }

  // ------------------------------------------------------------ Serve sessions

  /** `POST /serve-sessions`: serve a disk of a generation over NBD (201); `uri` names it. */
  startServeSession(options: ServeSessionOptions): Promise<ServeSession> {
    return this.request('POST', '/serve-sessions', {
      body: {
        output: options.output,
        vm: options.vm,
        generation: options.generation,
        disk: options.disk,
        writable: options.writable,
      },
    });
  }

  /** `GET /serve-sessions`: the open sessions, oldest first. */
  async listServeSessions(): Promise<ServeSession[]> {
    const doc = await this.request<ServeSessionList>('GET', '/serve-sessions');
    return doc.sessions;
  }

  /** `GET /serve-sessions/{id}`. */
  getServeSession(id: string): Promise<ServeSession> {
    return this.request('GET', `/serve-sessions/${encodeURIComponent(id)}`);
  }

  /** `DELETE /serve-sessions/{id}`: stop serving (socket and overlay removed). */
  stopServeSession(id: string): Promise<ServeSession> {
    return this.request('DELETE', `/serve-sessions/${encodeURIComponent(id)}`);
  }

  // ------------------------------------------------------------------ Policies

  /** `GET /policies`: every policy, with its `next_run` and the `running` run's id. */
  async listPolicies(): Promise<Policy[]> {
    const doc = await this.request<PolicyList>('GET', '/policies');
    return doc.policies;
  }

  /** `GET /policies/{name}`; NotFoundError naming it when there is none. */
  getPolicy(name: string): Promise<Policy> {
    return this.request('GET', policyPath(name));
  }

  /** `PUT /policies/{name}`: create or replace a policy; InvalidRequestError names the wrong field. */
  putPolicy(name: string, policy: PolicyOptions): Promise<Policy> {
    return this.request('PUT', policyPath(name), { body: { ...policy } });
  }

  /** `DELETE /policies/{name}`: a policy made through the API (its runs go with it). */
  deletePolicy(name: string): Promise<Policy> {
    return this.request('DELETE', policyPath(name));
  }

  /** `POST /policies/{name}/run` (202): the run with its first export jobs; ConflictError while one runs. */
  runPolicy(name: string): Promise<PolicyRun> {
    return this.request('POST', `${policyPath(name)}/run`);
  }

  /** `GET /policies/{name}/history`: the policy's runs, newest first (skipped ones too). */
  async policyHistory(name: string, limit?: number): Promise<PolicyRun[]> {
    const doc = await this.request<PolicyRunList>('GET', `${policyPath(name)}/history`, {
      query: { limit },
    });
    return doc.runs;
  }

  // ------------------------------------------------------------------- Service

  /** `GET /health` (needs no token). */
  health(): Promise<HealthResponse> {
    return this.request('GET', '/health');
  }

  /** `GET /metrics`: Prometheus text. */
  metrics(): Promise<string> {
    return this.request('GET', '/metrics', {}, 'text');
  }

  // ---------------------------------------------------------------- Transport

  private url(path: string, query?: Query): string {
    let url = this.baseUrl + path;
    if (query) {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined) params.append(k, String(v));
      const qs = params.toString();
      if (qs) url += `?${qs}`;
    }
    return url;
  }

  private async send(
    method: string,
    path: string,
    options: RequestOptions,
    deadline: Deadline,
    accept: string,
  ): Promise<Response> {
    const headers: Record<string, string> = {
      Accept: accept,
      'User-Agent': `hypersdk-typescript/${VERSION}`,
      ...this.extraHeaders,
    };
    this.token ??= findToken(this.tokenOption, this.baseUrl);
    const token = await this.token;
    if (token !== undefined) headers['Authorization'] = `Bearer ${token}`;
    let body: string | undefined;
    if (options.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(compact(options.body));
    }
    try {
      return await this.fetchImpl(this.url(path, options.query), {
        method,
        headers,
        body,
        signal: deadline.signal,
      });
    } catch (err) {
      throw this.transportError(method, path, err, deadline);
    }
  }

  private transportError(method: string, path: string, err: unknown, deadline: Deadline): unknown {
    if (deadline.timedOut) {
      return new NetworkError(`${method} ${path}: no answer within ${this.timeoutMs} ms`, {
        cause: err,
        code: 'timeout',
      });
    }
    if (deadline.signal.aborted) return deadline.signal.reason ?? err; // the caller aborted
    if (err instanceof HyperSDKAPIError) return err;
    return new NetworkError(`${method} ${path}: ${describe(err)}`, { cause: err });
  }

  private async errorOf(response: Response): Promise<HyperSDKAPIError> {
    let text = '';
    try {
      text = await response.text();
    } catch {
      // the body is lost; the status still says enough
    }
    let body: unknown = text === '' ? undefined : text;
    try {
      if (text !== '') body = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return errorFromResponse(response.status, response.statusText, body);
  }

  private async request<T>(
    method: string,
    path: string,
    options: RequestOptions = {},
    as: 'json' | 'text' = 'json',
  ): Promise<T> {
    const deadline = new Deadline(this.timeoutMs, options.signal);
    try {
      const response = await this.send(
        method,
        path,
        options,
        deadline,
        as === 'json' ? 'application/json' : 'text/plain, */*',
      );
      if (!response.ok) throw await this.errorOf(response);
      let text: string;
      try {
        text = await response.text();
      } catch (err) {
        throw this.transportError(method, path, err, deadline);
      }
      if (as === 'text') return text as T;
      try {
        return JSON.parse(text) as T;
      } catch (err) {
        throw new HyperSDKAPIError({
          status: response.status,
          code: 'invalid_response',
          message: `${method} ${path}: the answer is not JSON`,
          body: text,
          cause: err,
        });
      }
    } finally {
      deadline.dispose();
    }
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    const why = cause instanceof Error ? `: ${cause.message}` : '';
    return `${err.message}${why}`;
  }
  return String(err);
}
