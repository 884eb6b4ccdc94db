/**
 * Test rigs for the integration tests: a live hypervisord and a qemu-storage-daemon,
 * each started in a temp folder and stopped by its pid (SIGTERM, then SIGKILL).
 */

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

/** The repository root: sdk/typescript/dist-test/tests -> four levels up. */
export const REPO_ROOT =
  process.env['HYPERSDK_REPO'] ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
export const PYTHON = process.env['HYPERSDK_PYTHON'] ?? path.join(REPO_ROOT, '.venv/bin/python');
export const DAEMON_MODULE = path.join(REPO_ROOT, 'src/hypersdk/daemon/main.py');

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function exited(proc: ChildProcess): boolean {
  return proc.exitCode !== null || proc.signalCode !== null;
}

/** SIGTERM by pid, wait, then SIGKILL: never by name. */
async function stopByPid(proc: ChildProcess | undefined): Promise<void> {
  if (proc === undefined || proc.pid === undefined || exited(proc)) return;
  const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  try {
    process.kill(proc.pid, 'SIGTERM');
  } catch {
    return;
  }
  const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), STOP_TIMEOUT_MS));
  if ((await Promise.race([gone, timer])) === 'timeout' && !exited(proc)) {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    await gone;
  }
}

function tail(file: string, n = 3000): string {
  try {
    return readFileSync(file, 'utf8').slice(-n);
  } catch {
    return '(no log)';
  }
}

/** The environment without any HYPERSDK_* setting of the caller's. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HYPERSDK_')) env[k] = v;
  return { ...env, ...extra };
}

export interface DaemonOptions {
  /** Left out: the daemon makes one in `<stateDir>/api-token` (read into `token`). */
  token?: string;
  /** The daemon's default repository (`--output`, always allowed). */
  output?: string;
  /** Folders requests may name (`--allow-path`). */
  allow?: string[];
}

/** `python -m hypersdk.daemon.main --listen 127.0.0.1 --port N --state-dir DIR`. */
export class Hypervisord {
  readonly dir = tempDir('hypervisord-');
  readonly stateDir = path.join(this.dir, 'state');
  readonly logPath = path.join(this.dir, 'hypervisord.log');
  port = 0;
  proc: ChildProcess | undefined;
  /** The API token (given, or read from the file the daemon made). */
  token: string | undefined;

  constructor(private readonly options: DaemonOptions = {}) {
    this.token = options.token;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    if (!existsSync(PYTHON)) throw new Error(`no Python at ${PYTHON}: run scripts/setup.sh (make setup)`);
    if (!existsSync(DAEMON_MODULE)) {
      throw new Error(`the daemon is missing: ${DAEMON_MODULE} does not exist`);
    }
    this.port = await freePort();
    const args = ['-m', 'hypersdk.daemon.main', '--listen', '127.0.0.1', '--port', String(this.port)];
    args.push('--state-dir', this.stateDir);
    if (this.options.output !== undefined) args.push('--output', this.options.output);
    for (const folder of this.options.allow ?? []) args.push('--allow-path', folder);
    const env = cleanEnv({
      HOME: this.dir, // nothing of the user's ~/.hypersdk
      HYPERSDK_STATE_DIR: this.stateDir,
      ...(this.options.token !== undefined ? { HYPERSDK_API_TOKEN: this.options.token } : {}),
    });
    const log = openSync(this.logPath, 'w');
    try {
      this.proc = spawn(PYTHON, args, { cwd: this.dir, env, stdio: ['ignore', log, log] });
    } finally {
      closeSync(log);
    }
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (exited(this.proc)) {
        throw new Error(`hypervisord exited (${this.proc.exitCode ?? this.proc.signalCode}): ${tail(this.logPath)}`);
      }
      try {
        const r = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(1000) });
        if (r.ok) {
          this.token ??= readFileSync(path.join(this.stateDir, 'api-token'), 'utf8').trim();
          return this;
        }
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        await this.stop();
        throw new Error(`hypervisord did not answer /health in ${START_TIMEOUT_MS} ms: ${tail(this.logPath)}`);
      }
      await sleep(50);
    }
  }

  log(): string {
    return tail(this.logPath);
  }

  async stop(): Promise<void> {
    await stopByPid(this.proc);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export const MiB = 1024 * 1024;

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

function socketAccepts(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(file);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * qemu-storage-daemon with one qcow2 disk (node `disk0`), a QMP monitor on `qmp.sock`
 * and an NBD server on `nbd.sock` serving the disk writable as export `guest` (the
 * command line of tests/rigs/qsd.py). "Guest" writes go through that export with qemu-io.
 */
export class QemuStorageDaemon {
  readonly dir = tempDir('qsd-');
  readonly disk = path.join(this.dir, 'disk0.qcow2');
  readonly qmpPath = path.join(this.dir, 'qmp.sock');
  readonly nbdPath = path.join(this.dir, 'nbd.sock');
  readonly logPath = path.join(this.dir, 'qemu-storage-daemon.log');
  proc: ChildProcess | undefined;

  constructor(readonly size = 64 * MiB) {}

  get locator(): string {
    return `qemu:${this.qmpPath}?nbd=${this.nbdPath}`;
  }

  private get nbdUri(): string {
    return `nbd+unix:///guest?socket=${this.nbdPath}`;
  }

  async start(): Promise<this> {
    run('qemu-img', ['create', '-q', '-f', 'qcow2', this.disk, String(this.size)]);
    const argv = [
      '--chardev', `socket,id=qmp0,path=${this.qmpPath},server=on,wait=off`,
      '--monitor', 'chardev=qmp0',
      '--blockdev', `driver=file,node-name=disk0-file,filename=${this.disk},discard=unmap`,
      '--blockdev', 'driver=qcow2,node-name=disk0,file=disk0-file,discard=unmap',
      '--nbd-server', `addr.type=unix,addr.path=${this.nbdPath}`,
      '--export', 'type=nbd,id=guest,node-name=disk0,name=guest,writable=on',
    ]; // prettier-ignore
    const log = openSync(this.logPath, 'w');
    try {
      this.proc = spawn('qemu-storage-daemon', argv, { cwd: this.dir, stdio: ['ignore', log, log] });
    } finally {
      closeSync(log);
    }
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!((await socketAccepts(this.qmpPath)) && (await socketAccepts(this.nbdPath)))) {
      if (exited(this.proc)) throw new Error(`qemu-storage-daemon exited: ${tail(this.logPath)}`);
      if (Date.now() > deadline) {
        await this.stop();
        throw new Error('qemu-storage-daemon sockets did not appear');
      }
      await sleep(20);
    }
    return this;
  }

  /** Write `length` bytes at `offset` through the NBD export, as a guest would. */
  write(offset: number, length: number, pattern: number): void {
    run('qemu-io', ['-f', 'raw', this.nbdUri, '-c', `write -P ${pattern} ${offset} ${length}`]);
  }

  /** Write random (incompressible) data: slow enough to export to catch a job running. */
  writeRandom(offset: number, length: number): void {
    const file = path.join(this.dir, 'random.bin');
    writeFileSync(file, randomBytes(length));
    try {
      run('qemu-io', ['-f', 'raw', this.nbdUri, '-c', `write -s ${file} ${offset} ${length}`]);
    } finally {
      rmSync(file, { force: true });
    }
  }

  async stop(): Promise<void> {
    await stopByPid(this.proc);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
