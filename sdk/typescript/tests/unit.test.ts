/** Unit tests: the client against a fake daemon written with node:http. */

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';

import * as sdk from '../src/index.js';
import {
  ConflictError,
  HyperSDK,
  HyperSDKAPIError,
  InvalidRequestError,
  JobTimeoutError,
  NetworkError,
  NotFoundError,
  ProviderError,
  ServerError,
  UnauthorizedError,
  ForbiddenError,
  parseSSE,
  type CBTStatus,
  type IncrementalAnalysis,
  type Job,
  type JobEvent,
} from '../src/index.js';
import { findToken, isLoopbackUrl } from '../src/token.js';
import { FakeServer, job, json } from './fake-server.js';

// Nothing of the caller's: no token variable, an empty state folder.
const STATE = mkdtempSync(path.join(os.tmpdir(), 'hypersdk-unit-state-'));
delete process.env['HYPERSDK_API_TOKEN'];
process.env['HYPERSDK_STATE_DIR'] = STATE;

const VM = '/Datacenter/vm/my-vm';

const STATUS: CBTStatus = {
  vm_path: VM,
  cbt_enabled: true,
  disks: [
    {
      key: 'disk-2000',
      path: '[datastore1] my-vm/my-vm.vmdk',
      capacity_bytes: 53687091200,
      change_id: '52 b4 49 50 30 2b 1d b6-51 46 74 5d f1 95 37 9b/16',
      backing_info: 'FlatVer2',
    },
  ],
  last_export: {
    vm_id: 'my-vm',
    export_time: '2026-02-03T10:30:15Z',
    total_size: 48543252480,
    disk_info: [{ key: 'disk-2000', capacity_bytes: 53687091200, change_id: 'x/16' }],
  },
  can_incremental: true,
  reason: 'Incremental export possible',
};

const ANALYSIS: IncrementalAnalysis = {
  vm_path: VM,
  can_incremental: true,
  reason: 'Incremental export possible',
  last_export: { vm_id: 'my-vm', export_time: '2026-02-03T10:30:15Z', total_size: 48543252480 },
  current_disks: STATUS.disks,
  estimated_changed_bytes: 2254857830,
  estimated_savings_bytes: 46289518592,
  estimated_duration: '2 minutes',
};

async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('HyperSDK (unit, fake daemon)', { timeout: 60_000 }, () => {
  const server = new FakeServer();
  let client: HyperSDK;

  before(async () => {
    await server.start();
  });
  after(async () => {
    await server.stop();
    rmSync(STATE, { recursive: true, force: true });
  });
  beforeEach(() => {
    client = new HyperSDK(server.url);
  });

  describe('package surface', () => {
    it('exports exactly the public names', () => {
      assert.deepEqual(Object.keys(sdk).sort(), [
        'ConflictError',
        'DEFAULT_BASE_URL',
        'DEFAULT_POLL_INTERVAL_MS',
        'DEFAULT_TIMEOUT_MS',
        'ForbiddenError',
        'HyperSDK',
        'HyperSDKAPIError',
        'InvalidRequestError',
        'JobTimeoutError',
        'NetworkError',
        'NotFoundError',
        'ProviderError',
        'ServerError',
        'TERMINAL_JOB_STATES',
        'UnauthorizedError',
        'VERSION',
        'errorClass',
        'errorFromResponse',
        'parseSSE',
      ]);
    });

    it('VERSION matches package.json', () => {
      const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
        version: string;
        name: string;
      };
      assert.equal(pkg.name, 'hypersdk');
      assert.equal(sdk.VERSION, pkg.version);
    });

    it("resolves as the package 'hypersdk' through package.json exports (built dist/)", async () => {
      const name = 'hypersdk'; // a variable: resolved by Node at run time, not by tsc
      const pkg = (await import(name)) as typeof sdk;
      assert.equal(typeof pkg.HyperSDK, 'function');
      assert.deepEqual(Object.keys(pkg).sort(), Object.keys(sdk).sort());
      assert.ok(new pkg.HyperSDK() instanceof pkg.HyperSDK);
    });

    it('defaults to http://localhost:8080 and strips trailing slashes', () => {
      assert.equal(new HyperSDK().baseUrl, 'http://localhost:8080');
      assert.equal(new HyperSDK('http://h:1//').baseUrl, 'http://h:1');
      assert.equal(new HyperSDK().timeoutMs, 30_000);
    });
  });

  describe('CBT routes (the spec)', () => {
    it('enableCBT posts {vm_path} to /cbt/enable', async () => {
      server.reset((_r, res) => json(res, 200, { success: true, message: `CBT enabled successfully for ${VM}` }));
      const response = await client.enableCBT(VM);
      assert.equal(response.success, true);
      assert.equal(response.message, `CBT enabled successfully for ${VM}`);
      assert.equal(server.last.method, 'POST');
      assert.equal(server.last.path, '/cbt/enable');
      assert.equal(server.last.headers['content-type'], 'application/json');
      assert.match(String(server.last.headers['accept']), /application\/json/);
      assert.deepEqual(server.last.json, { vm_path: VM });
    });

    it('disableCBT posts {vm_path} to /cbt/disable', async () => {
      server.reset((_r, res) => json(res, 200, { success: true, message: `CBT disabled successfully for ${VM}` }));
      const response = await client.disableCBT(VM);
      assert.match(response.message, /disabled/);
      assert.equal(server.last.path, '/cbt/disable');
      assert.deepEqual(server.last.json, { vm_path: VM });
    });

    it('getCBTStatus returns the snake_case document; output is sent only when given', async () => {
      server.reset((_r, res) => json(res, 200, STATUS));
      const status = await client.getCBTStatus(VM);
      assert.equal(server.last.path, '/cbt/status');
      assert.deepEqual(server.last.json, { vm_path: VM });
      assert.equal(status.cbt_enabled, true);
      assert.equal(status.disks.length, 1);
      assert.equal(status.disks[0]?.capacity_bytes, 53687091200);
      assert.equal(status.last_export?.disk_info?.[0]?.key, 'disk-2000');
      assert.equal(status.can_incremental, true);
      assert.equal(status.reason, 'Incremental export possible');

      await client.getCBTStatus(VM, '/backups/repo');
      assert.deepEqual(server.last.json, { vm_path: VM, output: '/backups/repo' });
    });

    it('analyzeIncrementalExport posts to /incremental/analyze', async () => {
      server.reset((_r, res) => json(res, 200, ANALYSIS));
      const analysis = await client.analyzeIncrementalExport(VM, '/backups/repo');
      assert.equal(server.last.method, 'POST');
      assert.equal(server.last.path, '/incremental/analyze');
      assert.deepEqual(server.last.json, { vm_path: VM, output: '/backups/repo' });
      assert.equal(analysis.can_incremental, true);
      assert.equal(analysis.estimated_savings_bytes / 1024 ** 3 > 43, true);
      assert.equal(analysis.estimated_changed_bytes, 2254857830);
      assert.equal(analysis.estimated_duration, '2 minutes');
    });
    it("runs the spec's TypeScript examples as written", async () => {
      const lines: string[] = [];
      const console = { log: (line: string) => lines.push(line) };
      server.reset((r, res) => {
        if (r.path === '/cbt/enable') return json(res, 200, { success: true, message: `CBT enabled successfully for ${VM}` });
        json(res, 200, r.path === '/cbt/status' ? STATUS : ANALYSIS);
      });
      const client = new HyperSDK(server.url);

      // Enable CBT
      const response = await client.enableCBT('/Datacenter/vm/my-vm');
      console.log(response.message);

      // Get CBT status
      const status = await client.getCBTStatus('/Datacenter/vm/my-vm');
      if (status.cbt_enabled) {
        console.log('CBT is enabled');
        console.log(`Number of disks: ${status.disks.length}`);
        if (status.can_incremental) {
          console.log(`Incremental export possible: ${status.reason}`);
        } else {
          console.log(`Full export required: ${status.reason}`);
        }
      }

      // Analyze incremental export potential
      const analysis = await client.analyzeIncrementalExport('/Datacenter/vm/my-vm');
      if (analysis.can_incremental) {
        const savingsGB = analysis.estimated_savings_bytes / 1024 ** 3;
        console.log(`Incremental export will save ~${savingsGB.toFixed(1)} GB`);
        console.log(`Estimated duration: ${analysis.estimated_duration}`);
      } else {
        console.log(`Full export required: ${analysis.reason}`);
      }

      assert.deepEqual(lines, [
        'CBT enabled successfully for /Datacenter/vm/my-vm',
        'CBT is enabled',
        'Number of disks: 1',
        'Incremental export possible: Incremental export possible',
        'Incremental export will save ~43.1 GB',
        'Estimated duration: 2 minutes',
      ]);
    });
  });

  describe('jobs', () => {
    it('exportVM sends snake_case fields and returns the 202 job', async () => {
      server.reset((_r, res) => json(res, 202, job({ state: 'queued', phase: 'queued', mode: null })));
      const j = await client.exportVM('qemu:/run/vm1.qmp', {
        output: '/backups/repo',
        incremental: true,
        forceFull: false,
        compression: 'zstd',
        compressionLevel: 3,
        blockSize: 1048576,
        parallel: 2,
        maxIncrementalAgeDays: 7,
      });
      assert.equal(server.last.method, 'POST');
      assert.equal(server.last.path, '/exports');
      assert.deepEqual(server.last.json, {
        vm_path: 'qemu:/run/vm1.qmp',
        output: '/backups/repo',
        incremental: true,
        force_full: false,
        compression: 'zstd',
        compression_level: 3,
        block_size: 1048576,
        parallel: 2,
        max_incremental_age_days: 7,
      });
      assert.equal(j.id, 'j-6f1c2a9e0b7d');
      assert.equal(j.state, 'queued');
      assert.equal(j.mode, null);
    });

    it('exportVM leaves out options that were not given', async () => {
      server.reset((_r, res) => json(res, 202, job()));
      await client.exportVM(VM);
      assert.deepEqual(server.last.json, { vm_path: VM });
    });

    it('getExport and cancelExport address the job by its (escaped) id', async () => {
      server.reset((r, res) => json(res, 200, job({ state: r.method === 'DELETE' ? 'cancelled' : 'running' })));
      const j = await client.getExport('j-1');
      assert.equal(server.last.method, 'GET');
      assert.equal(server.last.path, '/exports/j-1');
      assert.equal(j.bytes_done, 104857600);
      assert.equal(j.throughput_bytes_per_s, 412000000);
      await client.getExport('a/b c');
      assert.equal(server.last.url, '/exports/a%2Fb%20c');
      const c = await client.cancelExport('j-1');
      assert.equal(server.last.method, 'DELETE');
      assert.equal(server.last.path, '/exports/j-1');
      assert.equal(c.state, 'cancelled');
    });

    it('listExports sends the filters as query parameters and unwraps jobs', async () => {
      server.reset((_r, res) => json(res, 200, { jobs: [job({ id: 'j-2' }), job({ id: 'j-1' })] }));
      const jobs = await client.listExports({ state: 'running', kind: 'export', vmPath: VM, limit: 5 });
      assert.equal(server.last.path, '/exports');
      assert.equal(server.last.query.get('state'), 'running');
      assert.equal(server.last.query.get('kind'), 'export');
      assert.equal(server.last.query.get('vm_path'), VM);
      assert.equal(server.last.query.get('limit'), '5');
      assert.deepEqual(
        jobs.map((j) => j.id),
        ['j-2', 'j-1'],
      );
      await client.listExports();
      assert.equal(server.last.url, '/exports');
    });

    it('restore and verify post their fields and return jobs', async () => {
      server.reset((r, res) =>
        json(res, 202, job({ kind: r.path === '/restores' ? 'restore' : 'verify', mode: null, reason: null })),
      );
      const r = await client.restore({ vm: 'vm1', to: '/tmp/disk.raw', generation: 'latest', format: 'qcow2', force: true });
      assert.equal(server.last.path, '/restores');
      assert.deepEqual(server.last.json, {
        vm: 'vm1',
        to: '/tmp/disk.raw',
        generation: 'latest',
        format: 'qcow2',
        force: true,
      });
      assert.equal(r.kind, 'restore');
      await client.restore({ vm: 'vm1', to: 'qemu:/run/vm1.qmp', since: 'g1' });
      assert.deepEqual(server.last.json, { vm: 'vm1', to: 'qemu:/run/vm1.qmp', since: 'g1' });
      await client.restore({ vm: 'vm1', to: '/tmp/disk.raw', compare: true });
      assert.deepEqual(server.last.json, { vm: 'vm1', to: '/tmp/disk.raw', compare: true });
      const v = await client.verify({ output: '/backups/repo', vm: 'vm1' });
      assert.equal(server.last.path, '/verifications');
      assert.deepEqual(server.last.json, { output: '/backups/repo', vm: 'vm1' });
      assert.equal(v.kind, 'verify');
      await client.verify();
      assert.deepEqual(server.last.json, {});
      await client.gc({ output: '/backups/repo', dryRun: true });
      assert.equal(server.last.method, 'POST');
      assert.equal(server.last.path, '/gc');
      assert.deepEqual(server.last.json, { output: '/backups/repo', dry_run: true });
      await client.gc();
      assert.deepEqual(server.last.json, {});
    });

    it('listGenerations sends output and vm and unwraps generations', async () => {
      const gen = {
        id: 'g1',
        vm: 'vm1',
        type: 'full',
        parent: null,
        created: '2026-11-26T02:40:00Z',
        disks: [{ key: 'disk0', capacity_bytes: 1, change_id: null }],
      };
      server.reset((_r, res) => json(res, 200, { generations: [gen] }));
      const gens = await client.listGenerations('/backups/repo', 'vm1');
      assert.equal(server.last.path, '/generations');
      assert.equal(server.last.query.get('output'), '/backups/repo');
      assert.equal(server.last.query.get('vm'), 'vm1');
      assert.deepEqual(gens, [gen]);
      await client.listGenerations();
      assert.equal(server.last.url, '/generations');
    });
  });

  describe('dashboard needs', () => {
    it('repositoryStats(): GET /repository with the output as a query', async () => {
      const stats = {
        output: '/r',
        encrypted: false,
        compression: 'zstd',
        vms: 2,
        generations: 3,
        chunk_count: 10,
        stored_bytes: 4096,
        logical_bytes: 65536,
        dedup_ratio: 16,
        last_verify: null,
      };
      server.reset((_req, res) => json(res, 200, stats));
      assert.deepEqual(await client.repositoryStats(), stats);
      assert.equal(server.last.method, 'GET');
      assert.equal(server.last.path, '/repository');
      assert.equal(server.last.query.get('output'), null);
      await client.repositoryStats('/other');
      assert.equal(server.last.query.get('output'), '/other');
    });

    it('calls fetch as a plain function, as a browser requires', async () => {
      // A browser's fetch throws "Illegal invocation" unless `this` is the window (or unset).
      const strict = function (this: unknown, input: string | URL | Request, init?: RequestInit) {
        if (this !== undefined && this !== globalThis) throw new TypeError('Illegal invocation');
        return fetch(input, init);
      } as typeof fetch;
      server.reset((_req, res) => json(res, 200, { status: 'ok', version: '0' }));
      const c = new HyperSDK(server.url, { token: 't', fetch: strict });
      assert.deepEqual(await c.health(), { status: 'ok', version: '0' });
    });
  });

  describe('service', () => {
    it('health and metrics', async () => {
      server.reset((r, res) => {
        if (r.path === '/health') return json(res, 200, { status: 'ok', version: '0.1.0' });
        res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4' });
        res.end('hypersdk_jobs_running 0\n');
      });
      assert.deepEqual(await client.health(), { status: 'ok', version: '0.1.0' });
      assert.equal(server.last.method, 'GET');
      assert.equal(await client.metrics(), 'hypersdk_jobs_running 0\n');
      assert.equal(server.last.path, '/metrics');
    });

    it('sends Authorization: Bearer only when a token is set', async () => {
      server.reset((_r, res) => json(res, 200, { status: 'ok', version: '0.1.0' }));
      await client.health();
      assert.equal(server.last.headers['authorization'], undefined);
      await new HyperSDK(server.url, { token: 's3cret' }).getExport('j-1');
      assert.equal(server.last.headers['authorization'], 'Bearer s3cret');
      assert.match(String(server.last.headers['user-agent']), /^hypersdk-typescript\//);
    });

    it("reads the daemon's token file under Node: argument, then HYPERSDK_API_TOKEN, then the file", async () => {
      server.reset((_r, res) => json(res, 200, job()));
      writeFileSync(path.join(STATE, 'api-token'), 'file-token-0123456789\n', { mode: 0o600 });
      try {
        await new HyperSDK(server.url).getExport('j-1');
        assert.equal(server.last.headers['authorization'], 'Bearer file-token-0123456789');
        await new HyperSDK(server.url, { token: 'given' }).getExport('j-1');
        assert.equal(server.last.headers['authorization'], 'Bearer given');
        await new HyperSDK(server.url, { token: '' }).getExport('j-1');
        assert.equal(server.last.headers['authorization'], undefined);
        process.env['HYPERSDK_API_TOKEN'] = 'env-token-0123456789';
        await new HyperSDK(server.url).getExport('j-1');
        assert.equal(server.last.headers['authorization'], 'Bearer env-token-0123456789');
        delete process.env['HYPERSDK_API_TOKEN'];
        // the local daemon's file is never sent to another host
        assert.equal(await findToken(undefined, 'https://backup.example:8443'), undefined);
        assert.equal(await findToken(undefined, 'http://localhost:8080'), 'file-token-0123456789');
        assert.equal(await findToken(undefined, 'http://[::1]:8080'), 'file-token-0123456789');
      } finally {
        delete process.env['HYPERSDK_API_TOKEN'];
        rmSync(path.join(STATE, 'api-token'), { force: true });
      }
      assert.equal(await findToken(undefined, 'http://127.0.0.1:8080'), undefined); // no file
    });

    it('recognises loopback URLs only', () => {
      for (const u of ['http://localhost:8080', 'http://127.0.0.1', 'http://127.9.8.7:1', 'http://[::1]:8080/']) {
        assert.equal(isLoopbackUrl(u), true, u);
      }
      for (const u of ['http://127.0.0.1.nip.io', 'http://10.0.0.1', 'http://example.com', 'not a url']) {
        assert.equal(isLoopbackUrl(u), false, u);
      }
    });

    it('in a browser (no Node process) uses only an explicit token', async () => {
      process.env['HYPERSDK_API_TOKEN'] = 'env-token-0123456789';
      const saved = Object.getOwnPropertyDescriptor(globalThis, 'process')!;
      Object.defineProperty(globalThis, 'process', { value: undefined, configurable: true });
      let none: Promise<string | undefined>;
      let given: Promise<string | undefined>;
      try {
        none = findToken(undefined, 'http://localhost:8080'); // decides before its first await
        given = findToken('t', 'http://localhost:8080');
      } finally {
        Object.defineProperty(globalThis, 'process', saved);
        delete process.env['HYPERSDK_API_TOKEN'];
      }
      assert.equal(await none, undefined);
      assert.equal(await given, 't');
    });

    it('the built package imports no Node module statically (browser bundles stay clean)', () => {
      const dist = new URL('../../dist/', import.meta.url);
      for (const name of readdirSync(dist).filter((n) => n.endsWith('.js'))) {
        const code = readFileSync(new URL(name, dist), 'utf8');
        assert.doesNotMatch(code, /(from\s*|import\s*\(\s*|require\s*\(\s*)['"](node:|fs|os|path)/, name);
      }
    });

    it('uses the fetch given in the options', async () => {
      const seen: string[] = [];
      const f: typeof fetch = async (input, init) => {
        seen.push(`${init?.method} ${String(input)}`);
        return new Response(JSON.stringify({ status: 'ok', version: 'x' }), { status: 200 });
      };
      const c = new HyperSDK('http://nowhere.invalid', { fetch: f });
      assert.equal((await c.health()).version, 'x');
      assert.deepEqual(seen, ['GET http://nowhere.invalid/health']);
    });
  });

  describe('errors', () => {
    // The same table as the Python SDK (tests/client/test_error_parity.py).
    const cases: Array<[number, string, new (...a: never[]) => HyperSDKAPIError]> = [
      [400, 'bad_request', InvalidRequestError],
      [401, 'unauthorized', UnauthorizedError],
      [403, 'forbidden_path', ForbiddenError],
      [404, 'not_found', NotFoundError],
      [409, 'locked', ConflictError],
      [413, 'body_too_large', InvalidRequestError],
      [415, 'unsupported_media_type', InvalidRequestError],
      [421, 'misdirected_request', InvalidRequestError],
      [422, 'invalid_argument', InvalidRequestError],
      [429, 'too_many_streams', ConflictError],
      [500, 'internal_error', ServerError],
      [502, 'nbd_error', ProviderError],
      [503, 'unavailable', ServerError],
      [418, 'teapot', HyperSDKAPIError],
    ];
    for (const [status, code, Cls] of cases) {
      it(`${status} {"error": {"code": "${code}"}} is ${Cls.name}`, async () => {
        server.reset((_r, res) => json(res, status, { error: { code, message: `the ${code} message` } }));
        const err = await client.getExport('j-x').then(
          () => assert.fail('no error'),
          (e: unknown) => e,
        );
        assert.ok(err instanceof Cls, `got ${String(err)}`);
        assert.equal(err.constructor, Cls);
        assert.ok(err instanceof HyperSDKAPIError);
        assert.ok(err instanceof Error);
        assert.equal(err.name, Cls.name);
        assert.equal(err.status, status);
        assert.equal(err.code, code);
        assert.equal(err.message, `the ${code} message`);
        assert.deepEqual(err.body, { error: { code, message: `the ${code} message` } });
      });
    }

    it('a body that is not the error shape still gives status, a default code and the text', async () => {
      server.reset((_r, res) => {
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('no such route\n');
      });
      const err = await client.getExport('j-1').catch((e: unknown) => e);
      assert.ok(err instanceof NotFoundError);
      assert.equal(err.code, 'not_found');
      assert.match(err.message, /404.*no such route/);

      server.reset((_r, res) => json(res, 422, { detail: [{ loc: ['body', 'vm_path'], msg: 'Field required' }] }));
      const err2 = await client.enableCBT(VM).catch((e: unknown) => e);
      assert.ok(err2 instanceof InvalidRequestError);
      assert.equal(err2.code, 'invalid_argument');
      assert.match(err2.message, /Field required/);

      server.reset((_r, res) => {
        res.writeHead(500);
        res.end();
      });
      const err3 = await client.health().catch((e: unknown) => e);
      assert.ok(err3 instanceof ServerError);
      assert.equal(err3.code, 'http_500');
      assert.equal(err3.status, 500);
    });

    it('a 2xx answer that is not JSON is invalid_response', async () => {
      server.reset((_r, res) => {
        res.writeHead(200, { 'Content-Type': 'text/html' });
        res.end('<html>');
      });
      const err = await client.health().catch((e: unknown) => e);
      assert.ok(err instanceof HyperSDKAPIError);
      assert.equal(err.code, 'invalid_response');
      assert.equal(err.status, 200);
    });

    it('no server is a NetworkError with the fetch error as cause', async () => {
      const port = await closedPort();
      const err = await new HyperSDK(`http://127.0.0.1:${port}`).health().catch((e: unknown) => e);
      assert.ok(err instanceof NetworkError, String(err));
      assert.equal(err.status, null);
      assert.equal(err.code, 'network_error');
      assert.match(err.message, /GET \/health/);
      assert.ok(err.cause instanceof Error);
    });

    it('a server that does not answer in timeoutMs is a NetworkError with code timeout', async () => {
      server.reset(() => undefined); // never answers
      const c = new HyperSDK(server.url, { timeoutMs: 150 });
      const t0 = Date.now();
      const err = await c.getCBTStatus(VM).catch((e: unknown) => e);
      assert.ok(err instanceof NetworkError, String(err));
      assert.equal(err.code, 'timeout');
      assert.equal(err.status, null);
      assert.ok(Date.now() - t0 < 5000);
    });
  });

  describe('waitForExport', { timeout: 20_000 }, () => {
    it('polls until the job finishes, reporting every poll', async () => {
      let polls = 0;
      server.reset((_r, res) => {
        polls += 1;
        if (polls < 3) return json(res, 200, job({ bytes_done: polls * 100 }));
        json(res, 200, job({ state: 'succeeded', phase: 'done', finished: '2026-11-26T02:41:00Z', result: { generation: 'g1' } }));
      });
      const seen: Array<[string, number]> = [];
      const done = await client.waitForExport('j-1', {
        pollIntervalMs: 20,
        onProgress: (j) => seen.push([j.state, j.bytes_done]),
      });
      assert.equal(done.state, 'succeeded');
      assert.deepEqual(seen, [
        ['running', 100],
        ['running', 200],
        ['succeeded', 104857600],
      ]);
      assert.ok(server.requests.every((r) => r.method === 'GET' && r.path === '/exports/j-1'));
      assert.equal(server.requests.length, 3);
    });

    it('returns a failed or cancelled job instead of throwing', async () => {
      server.reset((_r, res) =>
        json(res, 200, job({ state: 'failed', error: { code: 'nbd_error', message: 'daemon restarted' } })),
      );
      const j = await client.waitForExport('j-1', { pollIntervalMs: 10 });
      assert.equal(j.state, 'failed');
      assert.equal(j.error?.code, 'nbd_error');
    });

    it('throws JobTimeoutError carrying the last job when timeoutMs runs out', async () => {
      server.reset((_r, res) => json(res, 200, job()));
      const t0 = Date.now();
      const err = await client.waitForExport('j-1', { timeoutMs: 120, pollIntervalMs: 30 }).catch((e: unknown) => e);
      assert.ok(err instanceof JobTimeoutError, String(err));
      assert.equal(err.code, 'timeout');
      assert.equal((err.job as Job).state, 'running');
      assert.ok(Date.now() - t0 < 2000);
      assert.ok(server.requests.length >= 2);
    });

    it('stops on an aborted signal and passes HTTP errors through', async () => {
      server.reset((_r, res) => json(res, 200, job()));
      const ac = new AbortController();
      setTimeout(() => ac.abort(new Error('stop')), 50);
      const err = await client.waitForExport('j-1', { pollIntervalMs: 10_000, signal: ac.signal }).catch((e: unknown) => e);
      assert.ok(err instanceof Error);
      assert.equal(err.message, 'stop');

      server.reset((_r, res) => json(res, 404, { error: { code: 'not_found', message: 'no job j-1' } }));
      await assert.rejects(client.waitForExport('j-1'), NotFoundError);
    });
  });

  describe('server-sent events', { timeout: 20_000 }, () => {
    async function collect(chunks: Array<string | Uint8Array>) {
      async function* gen() {
        for (const c of chunks) yield c;
      }
      const out = [];
      for await (const ev of parseSSE(gen())) out.push(ev);
      return out;
    }

    it('parses events split anywhere, CRLF/CR line ends, comments, multi-line data and a BOM', async () => {
      const text = '\ufeff: hello\r\nevent: job\r\ndata: {"a":\r\ndata: 1}\r\nid: 7\r\n\r\nretry: 50\rdata: x\r\rdata: last\n';
      const bytes = new TextEncoder().encode(text);
      // every split point, byte by byte (also inside the BOM and inside "\r\n")
      const expected = [
        { event: 'job', data: '{"a":\n1}', id: '7' },
        { event: 'message', data: 'x', id: '7', retry: 50 },
      ];
      for (let i = 0; i <= bytes.length; i++) {
        assert.deepEqual(await collect([bytes.slice(0, i), bytes.slice(i)]), expected, `split at ${i}`);
      }
      assert.deepEqual(await collect([...bytes].map((b) => Uint8Array.of(b))), expected);
      assert.deepEqual(await collect([text]), expected);
    });

    it('ignores events without data and unknown fields', async () => {
      assert.deepEqual(await collect(['event: ping\n\nfoo: bar\ndata\n\n']), [
        { event: 'message', data: '', id: '' },
      ]);
    });

    it('streamExportEvents yields job events then the end event, and stops', async () => {
      server.reset(async (_r, res) => {
        res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
        res.write(': keep-alive\n\n');
        res.write(`event: job\ndata: ${JSON.stringify(job({ bytes_done: 1 }))}\n\n`);
        const second = `event: job\ndata: ${JSON.stringify(job({ bytes_done: 2 }))}\n\n`;
        res.write(second.slice(0, 17));
        await new Promise((r) => setTimeout(r, 20));
        res.write(second.slice(17));
        res.write(`event: end\ndata: ${JSON.stringify(job({ state: 'succeeded', phase: 'done' }))}\n\n`);
        // the server keeps the connection open: the client must stop on `end` by itself
      });
      const events: JobEvent[] = [];
      for await (const ev of client.streamExportEvents('j-1')) events.push(ev);
      assert.equal(server.last.path, '/exports/j-1/events');
      assert.match(String(server.last.headers['accept']), /text\/event-stream/);
      assert.deepEqual(
        events.map((e) => [e.type, e.job.state, e.job.bytes_done]),
        [
          ['job', 'running', 1],
          ['job', 'running', 2],
          ['end', 'succeeded', 104857600],
        ],
      );
    });

    it('streamExportEvents maps an error status and a stream cut before `end`', async () => {
      server.reset((_r, res) => json(res, 404, { error: { code: 'not_found', message: 'no job j-9' } }));
      await assert.rejects(
        (async () => {
          for await (const _ of client.streamExportEvents('j-9')) void _;
        })(),
        (e: unknown) => e instanceof NotFoundError && e.message === 'no job j-9',
      );

      server.reset((_r, res) => {
        res.writeHead(200, { 'Content-Type': 'text/event-stream' });
        res.end(`event: job\ndata: ${JSON.stringify(job())}\n\n`);
      });
      const got: JobEvent[] = [];
      await assert.rejects(
        (async () => {
          for await (const ev of client.streamExportEvents('j-1')) got.push(ev);
        })(),
        NetworkError,
      );
      assert.equal(got.length, 1);
    });

    it('breaking out of the loop closes the connection', async () => {
      let closed!: () => void;
      const wasClosed = new Promise<void>((r) => (closed = r));
      server.reset((_r, res) => {
        res.writeHead(200, { 'Content-Type': 'text/event-stream' });
        res.write(`event: job\ndata: ${JSON.stringify(job())}\n\n`);
        res.on('close', () => closed());
      });
      for await (const ev of client.streamExportEvents('j-1')) {
        assert.equal(ev.type, 'job');
        break;
      }
      await wasClosed;
    });

    it('an aborted signal ends the stream quietly', async () => {
      server.reset((_r, res) => {
        res.writeHead(200, { 'Content-Type': 'text/event-stream' });
        res.write(`event: job\ndata: ${JSON.stringify(job())}\n\n`);
      });
      const ac = new AbortController();
      const got: JobEvent[] = [];
      for await (const ev of client.streamExportEvents('j-1', { signal: ac.signal })) {
        got.push(ev);
        ac.abort();
      }
      assert.equal(got.length, 1);
    });
  });
});
