/**
 * The SDK's errors: one tree rooted in `HyperSDKAPIError`. The Python SDK
 * (src/hypersdk/client/_errors.py) has the same classes, names and status mapping;
 * tests/client/test_error_parity.py in the repository holds the two equal.
 *
 *     HyperSDKAPIError           status, code, message (from {"error": {"code","message"}});
 *     │                          also any other 4xx status
 *     ├── InvalidRequestError    400 bad_request, 413 body_too_large, 415 unsupported_media_type,
 *     │                          421 misdirected_request, 422 invalid_argument: fix the request
 *     ├── UnauthorizedError      401 unauthorized: missing or wrong token
 *     ├── ForbiddenError         403 forbidden_path: a path outside the allowed folders
 *     ├── NotFoundError          404 not_found: unknown VM, job or generation
 *     ├── ConflictError          409 conflict, locked, cancelled; 429 too_many_streams: busy
 *     ├── ProviderError          502 provider_error, connection_failed, nbd_error, ...
 *     ├── ServerError            other 5xx: internal_error, repository_error, ...
 *     ├── NetworkError           status null: no HTTP answer (network_error), or none
 *     │                          within the request's `timeoutMs` (timeout)
 *     └── JobTimeoutError        status null, code timeout: `waitForExport` ran out of time
 *
 * Errors of `fetch` itself are translated at the boundary and kept as `cause`; no other
 * error type leaves the client.
 */

import type { ErrorInfo } from './types.js';

export interface HyperSDKAPIErrorInit {
  status?: number | null;
  code: string;
  message: string;
  /** The parsed response body, when there was one. */
  body?: unknown;
  cause?: unknown;
}

export class HyperSDKAPIError extends Error {
  /** The HTTP status; null when no HTTP answer came (network error, timeout). */
  readonly status: number | null;
  /** The server's error code (`not_found`, `locked`, ...) or the SDK's own. */
  readonly code: string;
  /** The parsed response body, when there was one. */
  readonly body: unknown;

  constructor(init: HyperSDKAPIErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.status = init.status ?? null;
    this.code = init.code;
    this.body = init.body;
  }
}

/** 400, 413, 415, 421, 422: the request as sent is refused (body, media type, Host, a field). */
export class InvalidRequestError extends HyperSDKAPIError {}
/** 401: the token is missing or wrong. */
export class UnauthorizedError extends HyperSDKAPIError {}
/** 403: a path outside the daemon's allowed folders. */
export class ForbiddenError extends HyperSDKAPIError {}
/** 404: unknown VM, job or generation. */
export class NotFoundError extends HyperSDKAPIError {}
/** 409: e.g. an export of that VM is already running; 429: too many event streams. */
export class ConflictError extends HyperSDKAPIError {}
/** 502: the hypervisor (vSphere, QEMU, NBD) failed or is unreachable. */
export class ProviderError extends HyperSDKAPIError {}
/** Any other 5xx: the daemon failed (internal_error, repository_error, ...). */
export class ServerError extends HyperSDKAPIError {}

/**
 * No HTTP answer: connection refused, reset, DNS failure, a broken stream
 * (`network_error`), or no answer within the request's `timeoutMs` (`timeout`).
 */
export class NetworkError extends HyperSDKAPIError {
  constructor(message: string, options: { cause?: unknown; code?: 'network_error' | 'timeout' } = {}) {
    super({ status: null, code: options.code ?? 'network_error', message, cause: options.cause });
  }
}

/** `waitForExport` ran out of time (`timeoutMs`); `job` is the job as last seen. */
export class JobTimeoutError extends HyperSDKAPIError {
  readonly job: unknown;

  constructor(message: string, options: { job?: unknown } = {}) {
    super({ status: null, code: 'timeout', message });
    this.job = options.job;
  }
}

type HttpErrorClass = new (init: HyperSDKAPIErrorInit) => HyperSDKAPIError;

const BY_STATUS: Readonly<Record<number, HttpErrorClass>> = {
  400: InvalidRequestError,
  401: UnauthorizedError,
  403: ForbiddenError,
  404: NotFoundError,
  409: ConflictError,
  413: InvalidRequestError,
  415: InvalidRequestError,
  421: InvalidRequestError,
  422: InvalidRequestError,
  429: ConflictError,
  502: ProviderError,
};

/** The class for an HTTP error status (one table, the same in the Python SDK). */
export function errorClass(status: number): HttpErrorClass {
  return BY_STATUS[status] ?? (status >= 500 ? ServerError : HyperSDKAPIError);
}

const DEFAULT_CODE: Readonly<Record<number, string>> = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden_path',
  404: 'not_found',
  409: 'conflict',
  413: 'body_too_large',
  415: 'unsupported_media_type',
  421: 'misdirected_request',
  422: 'invalid_argument',
  429: 'too_many_streams',
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
export function errorFromResponse(status: number, statusText: string, body: unknown): HyperSDKAPIError {
  const Cls = errorClass(status);
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
