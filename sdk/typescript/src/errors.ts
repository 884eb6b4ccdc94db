/**
 * The SDK's errors: one tree rooted in `HyperSDKError`.
 *
 *     HyperSDKError                status, code, message (from {"error": {"code","message"}})
 *     ├── BadRequestError          400 bad_request: malformed body
 *     ├── UnauthorizedError        401 unauthorized: missing or wrong token
 *     ├── ForbiddenError           403 forbidden_path: a path outside the allowed folders
 *     ├── NotFoundError            404 not_found: unknown VM or job
 *     ├── ConflictError            409 conflict, locked: export already running, job finished
 *     ├── InvalidArgumentError     422 invalid_argument: a field has a bad value
 *     ├── ProviderError            502 provider_error, connection_failed, nbd_error, ...
 *     ├── NetworkError             status null, code network_error: no HTTP answer
 *     └── TimeoutError             status null, code timeout: a time limit ran out
 *
 * Any other HTTP error status is a plain `HyperSDKError`. Errors of `fetch` itself are
 * translated at the boundary and kept as `cause`; no other error type leaves the client.
 */

import type { ErrorInfo } from './types.js';

export interface HyperSDKErrorInit {
  status?: number | null;
  code: string;
  message: string;
  /** The parsed response body, when there was one. */
  body?: unknown;
  cause?: unknown;
}

export class HyperSDKError extends Error {
  /** The HTTP status; null when no HTTP answer came (network error, timeout). */
  readonly status: number | null;
  /** The server's error code (`not_found`, `locked`, ...) or the SDK's own. */
  readonly code: string;
  /** The parsed response body, when there was one. */
  readonly body: unknown;

  constructor(init: HyperSDKErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.status = init.status ?? null;
    this.code = init.code;
    this.body = init.body;
  }
}

/** 400: the request body is malformed. */
export class BadRequestError extends HyperSDKError {}
/** 401: the token is missing or wrong. */
export class UnauthorizedError extends HyperSDKError {}
/** 403: a path outside the daemon's allowed folders. */
export class ForbiddenError extends HyperSDKError {}
/** 404: unknown VM or job. */
export class NotFoundError extends HyperSDKError {}
/** 409: e.g. an export of that VM is already running, a finished job cannot be cancelled. */
export class ConflictError extends HyperSDKError {}
/** 422: a field has an invalid value. */
export class InvalidArgumentError extends HyperSDKError {}
/** 502: the hypervisor (vSphere, QEMU, NBD) failed. */
export class ProviderError extends HyperSDKError {}

/** No HTTP answer: connection refused, reset, DNS failure, ... */
export class NetworkError extends HyperSDKError {
  constructor(message: string, cause?: unknown) {
    super({ status: null, code: 'network_error', message, cause });
  }
}

/** A time limit ran out: a request (`timeoutMs`) or `waitForExport`. */
export class TimeoutError extends HyperSDKError {
  /** For `waitForExport`: the job as last seen. */
  readonly job: unknown;

  constructor(message: string, options: { cause?: unknown; job?: unknown } = {}) {
    super({ status: null, code: 'timeout', message, cause: options.cause });
    this.job = options.job;
  }
}

type HttpErrorClass = new (init: HyperSDKErrorInit) => HyperSDKError;

const BY_STATUS: Readonly<Record<number, HttpErrorClass>> = {
  400: BadRequestError,
  401: UnauthorizedError,
  403: ForbiddenError,
  404: NotFoundError,
  409: ConflictError,
  422: InvalidArgumentError,
  502: ProviderError,
};

const DEFAULT_CODE: Readonly<Record<number, string>> = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden_path',
  404: 'not_found',
  409: 'conflict',
  422: 'invalid_argument',
  502: 'provider_error',
};

function isErrorInfo(value: unknown): value is ErrorInfo {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v['code'] === 'string' && typeof v['message'] === 'string';
}

/**
 * The error for an HTTP error response. `body` is the parsed JSON body (or the raw
 * text when it was not JSON, or undefined when empty).
 */
export function errorFromResponse(status: number, statusText: string, body: unknown): HyperSDKError {
  const Cls = BY_STATUS[status] ?? HyperSDKError;
  let code = DEFAULT_CODE[status] ?? `http_${status}`;
  let message = statusText ? `HTTP ${status} ${statusText}` : `HTTP ${status}`;
  const info =
    typeof body === 'object' && body !== null ? (body as Record<string, unknown>)['error'] : undefined;
  if (isErrorInfo(info)) {
    code = info.code;
    message = info.message;
  } else if (typeof body === 'object' && body !== null && 'detail' in body) {
    // A framework-level error that escaped the daemon's own handler (FastAPI's shape).
    const detail = (body as Record<string, unknown>)['detail'];
    message = typeof detail === 'string' ? detail : `${message}: ${JSON.stringify(detail)}`;
  } else if (typeof body === 'string' && body.trim()) {
    message = `${message}: ${body.trim().split('\n')[0]!.slice(0, 300)}`;
  }
  return new Cls({ status, code, message, body });
}
