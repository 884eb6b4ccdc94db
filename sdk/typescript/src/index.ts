/**
 * HyperSDK for TypeScript: a client of the hypervisord REST daemon.
 *
 *     import { HyperSDK } from 'hypersdk';
 *     const client = new HyperSDK('http://localhost:8080');
 *     const status = await client.getCBTStatus('/Datacenter/vm/my-vm');
 */

export {
  HyperSDK,
  VERSION,
  DEFAULT_BASE_URL,
  DEFAULT_TIMEOUT_MS,
  DEFAULT_POLL_INTERVAL_MS,
} from './client.js';
export {
  HyperSDKAPIError,
  InvalidRequestError,
  UnauthorizedError,
  ForbiddenError,
  NotFoundError,
  ConflictError,
  ProviderError,
  ServerError,
  NetworkError,
  JobTimeoutError,
  errorClass,
  errorFromResponse,
} from './errors.js';
export type { HyperSDKAPIErrorInit } from './errors.js';
export { parseSSE } from './sse.js';
export type { ServerSentEvent } from './sse.js';
export { TERMINAL_JOB_STATES } from './types.js';
export type * from './types.js';
