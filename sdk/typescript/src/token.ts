/**
 * Where the client finds its API token when the caller gives none (as the Python SDK):
 *
 * 1. `options.token` (an empty string: send no token at all);
 * 2. under Node, `HYPERSDK_API_TOKEN`;
 * 3. under Node and for a loopback base URL only, the daemon's token file on this host:
 *    `$HYPERSDK_STATE_DIR/api-token` or `~/.hypersdk/api-token` (that file must never be
 *    sent to another host).
 *
 * In a browser only an explicit token is used. Node's modules are loaded with a dynamic
 * import whose name bundlers do not follow, so a browser bundle never pulls them in.
 */

interface NodeProcess {
  versions?: { node?: string };
  env?: Record<string, string | undefined>;
}

export const TOKEN_FILE = 'api-token';

function nodeProcess(): NodeProcess | undefined {
  const proc = (globalThis as { process?: NodeProcess }).process;
  return typeof proc?.versions?.node === 'string' ? proc : undefined;
}

/** `localhost`, `127.x.x.x` or `[::1]`. */
export function isLoopbackUrl(baseUrl: string): boolean {
  let host: string;
  try {
    host = new URL(baseUrl).hostname.toLowerCase();
  } catch {
    return false;
  }
  if (host === 'localhost' || host === '[::1]') return true;
  const parts = host.split('.');
  return parts.length === 4 && parts[0] === '127' && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}

/** A Node built-in, loaded only when asked for (never by a browser bundle). */
async function nodeModule<T>(name: string): Promise<T> {
  return (await import(/* webpackIgnore: true */ /* @vite-ignore */ name)) as T;
}

export async function findToken(explicit: string | undefined, baseUrl: string): Promise<string | undefined> {
  if (explicit !== undefined) return explicit === '' ? undefined : explicit;
  const proc = nodeProcess();
  if (proc === undefined) return undefined;
  const fromEnv = proc.env?.['HYPERSDK_API_TOKEN'];
  if (fromEnv) return fromEnv;
  if (!isLoopbackUrl(baseUrl)) return undefined;
  try {
    const fs = await nodeModule<typeof import('node:fs/promises')>('node:fs/promises');
    const os = await nodeModule<typeof import('node:os')>('node:os');
    const path = await nodeModule<typeof import('node:path')>('node:path');
    const state = proc.env?.['HYPERSDK_STATE_DIR'];
    const folder = state ? state : path.join(os.homedir(), '.hypersdk');
    const text = (await fs.readFile(path.join(folder, TOKEN_FILE), 'utf8')).trim();
    return text === '' ? undefined : text;
  } catch {
    return undefined; // no file, or not readable: go without a token
  }
}
