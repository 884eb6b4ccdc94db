/**
 * Integration tests: the SDK against a LIVE hypervisord (started here from the repo's
 * .venv) exporting a real qemu-storage-daemon disk. Nothing here is skipped: a missing
 * daemon, Python or QEMU fails the run.
 */

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  ConflictError,
  HyperSDK,
  HyperSDKAPIError,
  InvalidRequestError,
  NotFoundError,
  ProviderError,
  UnauthorizedError,
  type ExportJob,
  type ExportResult,
  type Job,
  type JobEvent,
  type RestoreIntoResult,
  type RestoreResult,
  type VerifyResult,
} from '../src/index.js';
import { Hypervisord, MiB, QemuStorageDaemon, tempDir } from './rigs.js';

const WAIT = { timeoutMs: 60_000, pollIntervalMs: 50 };

describe('HyperSDK against a live hypervisord (QEMU source)', { timeout: 300_000 }, () => {
  const qsd = new QemuStorageDaemon(64 * MiB);
  const work = tempDir('hypersdk-ts-it-');
  const repo = path.join(work, 'repo');
  const daemon = new Hypervisord({ output: repo, allow: [work, qsd.dir] });
  let client: HyperSDK;
  let full: ExportJob;
  let incremental: ExportJob;
  let vmId = '';

  before(async () => {
    await qsd.start();
    await daemon.start();
    // No token given anywhere: the SDK reads the file the daemon made (as on its host).
    delete process.env['HYPERSDK_API_TOKEN'];
    process.env['HYPERSDK_STATE_DIR'] = daemon.stateDir;
    client = new HyperSDK(daemon.url, { timeoutMs: 20_000 });
  });

  after(async () => {
    await daemon.stop();
    await qsd.stop();
    daemon.cleanup();
    qsd.cleanup();
    rmSync(work, { recursive: true, force: true });
  });

  it("reads the daemon's token file under Node (no token given)", async () => {
    const file = path.join(daemon.stateDir, 'api-token');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(statSync(daemon.stateDir).mode & 0o777, 0o700);
    assert.deepEqual(await new HyperSDK(daemon.url).listExports({ limit: 1 }), []);
    await assert.rejects(new HyperSDK(daemon.url, { token: '' }).listExports(), UnauthorizedError);
  });

  it('a path outside the allowed folders is 403 forbidden_path', async () => {
    const err = await client.restore({ vm: 'v', to: '/etc/hypersdk-test.raw' }).catch((e: unknown) => e);
    assert.ok(err instanceof HyperSDKAPIError, String(err));
    assert.equal(err.status, 403);
    assert.equal(err.code, 'forbidden_path');
    assert.ok(!existsSync('/etc/hypersdk-test.raw'));
  });

  it('health', async () => {
    const h = await client.health();
    assert.equal(h.status, 'ok');
    assert.equal(typeof h.version, 'string');
  });

  it('enableCBT, getCBTStatus (no export yet), disableCBT and enable again', async () => {
    const on = await client.enableCBT(qsd.locator);
    assert.deepEqual(on, { success: true, message: `CBT enabled successfully for ${qsd.locator}` });

    const status = await client.getCBTStatus(qsd.locator);
    assert.equal(status.vm_path, qsd.locator);
    assert.equal(status.cbt_enabled, true);
    assert.equal(status.disks.length, 1);
    const disk = status.disks[0]!;
    assert.equal(disk.key, 'disk0');
    assert.equal(disk.capacity_bytes, 64 * MiB);
    assert.equal(typeof disk.path, 'string');
    assert.equal(typeof disk.backing_info, 'string');
    assert.equal(status.last_export, null);
    assert.equal(status.can_incremental, false);
    assert.equal(typeof status.reason, 'string');

    const off = await client.disableCBT(qsd.locator);
    assert.equal(off.success, true);
    assert.equal(off.message, `CBT disabled successfully for ${qsd.locator}`);
    assert.equal((await client.getCBTStatus(qsd.locator)).cbt_enabled, false);
    await client.enableCBT(qsd.locator);
  });

  it('analyzeIncrementalExport before the first export: full export needed', async () => {
    const a = await client.analyzeIncrementalExport(qsd.locator);
    assert.equal(a.vm_path, qsd.locator);
    assert.equal(a.can_incremental, false);
    assert.equal(a.last_export, null);
    assert.equal(a.current_disks.length, 1);
    assert.equal(a.estimated_savings_bytes, 0);
    assert.equal(typeof a.estimated_duration, 'string');
    assert.ok('estimated_changed_bytes' in a);
  });

  it('full export job: exportVM (202) then waitForExport', async () => {
    qsd.write(0, 4 * MiB, 0xab);
    const job = await client.exportVM(qsd.locator, { output: repo, incremental: true });
    assert.match(job.id, /\S/);
    assert.equal(job.kind, 'export');
    assert.equal(job.vm_path, qsd.locator);
    assert.ok(['queued', 'running'].includes(job.state), job.state);
    const states: string[] = [];
    full = await client.waitForExport<ExportResult>(job.id, { ...WAIT, onProgress: (j) => states.push(j.state) });
    assert.equal(full.state, 'succeeded', JSON.stringify(full.error));
    assert.equal(states.at(-1), 'succeeded');
    assert.equal(full.mode, 'full');
    assert.equal(full.error, null);
    assert.ok(full.finished);
    const result = full.result!;
    assert.equal(result.mode, 'full');
    assert.ok(result.bytes_read >= 4 * MiB, String(result.bytes_read));
    assert.equal(typeof result.generation, 'string');
    assert.equal(result.disks.length, 1);
    vmId = result.vm;
  });

  it('getCBTStatus and analyzeIncrementalExport after a guest write: incremental possible', async () => {
    qsd.write(8 * MiB, MiB, 0xcd);
    const status = await client.getCBTStatus(qsd.locator, repo);
    assert.equal(status.cbt_enabled, true);
    assert.equal(status.can_incremental, true, status.reason);
    assert.equal(status.last_export?.vm_id, vmId);
    assert.equal(status.last_export?.disk_info?.[0]?.key, 'disk0');

    const a = await client.analyzeIncrementalExport(qsd.locator, repo);
    assert.equal(a.can_incremental, true, a.reason);
    assert.equal(a.reason, 'Incremental export possible');
    assert.equal(a.last_export?.vm_id, vmId);
    assert.ok(a.estimated_changed_bytes !== null && a.estimated_changed_bytes >= MiB);
    assert.ok(a.estimated_changed_bytes! < 64 * MiB);
    assert.equal(a.estimated_savings_bytes, 64 * MiB - a.estimated_changed_bytes!);
  });

  it('incremental export job, followed with streamExportEvents', async () => {
    const job = await client.exportVM(qsd.locator, { output: repo, incremental: true });
    const events: JobEvent<ExportResult>[] = [];
    for await (const ev of client.streamExportEvents<ExportResult>(job.id)) events.push(ev);
    const last = events.at(-1)!;
    assert.equal(last.type, 'end');
    assert.ok(events.slice(0, -1).every((e) => e.type === 'job'));
    assert.equal(last.job.state, 'succeeded', JSON.stringify(last.job.error));

    incremental = await client.waitForExport<ExportResult>(job.id, WAIT);
    assert.deepEqual(incremental, last.job);
    assert.equal(incremental.mode, 'incremental');
    assert.equal(incremental.reason, 'Incremental export possible');
    const result = incremental.result!;
    assert.equal(result.mode, 'incremental');
    assert.ok(result.bytes_read >= MiB && result.bytes_read < full.result!.bytes_read, String(result.bytes_read));
  });

  it('listGenerations: the full one, then the incremental on top of it', async () => {
    const gens = await client.listGenerations(repo);
    assert.equal(gens.length, 2);
    const [g1, g2] = gens as [(typeof gens)[0], (typeof gens)[0]];
    assert.equal(g1.id, full.result!.generation);
    assert.equal(g1.type, 'full');
    assert.equal(g1.parent, null);
    assert.equal(g1.vm, vmId);
    assert.equal(g2.id, incremental.result!.generation);
    assert.equal(g2.type, 'incremental');
    assert.equal(g2.parent, g1.id);
    assert.equal(g2.disks[0]?.capacity_bytes, 64 * MiB);
    assert.deepEqual(
      (await client.listGenerations(repo, vmId)).map((g) => g.id),
      [g1.id, g2.id],
    );
    // the daemon's default repository (--output) is the same one
    assert.equal((await client.listGenerations()).length, 2);
  });

  it('listExports: newest first, with filters', async () => {
    const jobs = await client.listExports({ vmPath: qsd.locator, kind: 'export' });
    assert.deepEqual(
      jobs.slice(0, 2).map((j) => j.id),
      [incremental.id, full.id],
    );
    const one = await client.listExports({ state: 'succeeded', limit: 1 });
    assert.equal(one.length, 1);
    assert.equal((await client.getExport(full.id)).id, full.id);
  });

  it('verify and restore jobs', async () => {
    const v = await client.verify({ output: repo });
    assert.equal(v.kind, 'verify');
    const vdone = await client.waitForExport<VerifyResult>(v.id, WAIT);
    assert.equal(vdone.state, 'succeeded', JSON.stringify(vdone.error));
    assert.equal(vdone.result!.ok, true);
    assert.equal(vdone.result!.generations, 2);
    assert.deepEqual(vdone.result!.damage, []);

    const to = path.join(work, 'restored.raw');
    const r = await client.restore({ output: repo, vm: vmId, to });
    assert.equal(r.kind, 'restore');
    const rdone = await client.waitForExport<RestoreResult>(r.id, WAIT);
    assert.equal(rdone.state, 'succeeded', JSON.stringify(rdone.error));
    assert.equal(rdone.result!.generation, incremental.result!.generation);
    assert.equal(rdone.result!.capacity_bytes, 64 * MiB);
    assert.equal(statSync(to).size, 64 * MiB);
    const bytes = readFileSync(to);
    assert.equal(bytes[0], 0xab);
    assert.equal(bytes[4 * MiB - 1], 0xab);
    assert.equal(bytes[4 * MiB], 0);
    assert.equal(bytes[8 * MiB], 0xcd);
    assert.equal(bytes[9 * MiB - 1], 0xcd);
    assert.equal(bytes[9 * MiB], 0);

    // a damaged byte: compare finds the one block that differs and writes only it
    const fd = openSync(to, 'r+');
    writeSync(fd, Buffer.from([0x00]), 0, 1, 8 * MiB + 5);
    closeSync(fd);
    const c = await client.restore({ output: repo, vm: vmId, to, compare: true });
    const cdone = await client.waitForExport<RestoreIntoResult>(c.id, WAIT);
    assert.equal(cdone.state, 'succeeded', JSON.stringify(cdone.error));
    assert.equal(cdone.result!.mode, 'compare');
    assert.equal(cdone.result!.blocks_changed, 1);
    assert.equal(cdone.result!.bytes_written, cdone.result!.block_size);
    assert.equal(cdone.result!.bytes_read_target, 64 * MiB);
    assert.equal(readFileSync(to)[8 * MiB + 5], 0xcd);

    // a second restore to the same file without force is refused
    await assert.rejects(
      client.restore({ output: repo, vm: vmId, to }).then((j) => client.waitForExport(j.id, WAIT)).then((j) => {
        if (j.state === 'failed') throw new HyperSDKAPIError({ code: j.error!.code, message: j.error!.message });
        return j;
      }),
      HyperSDKAPIError,
    );
    assert.ok(existsSync(to));
  });

  it('repositoryStats: sizes, chunk count, dedup ratio and the last verification', async () => {
    const st = await client.repositoryStats(repo);
    assert.equal(st.output, repo);
    assert.equal(st.vms, 1);
    assert.equal(st.generations, 2);
    assert.equal(st.logical_bytes, 2 * 64 * MiB); // two generations of a 64 MiB disk
    assert.ok(st.chunk_count > 0 && st.stored_bytes > 0 && st.stored_bytes < 64 * MiB);
    assert.equal(st.dedup_ratio, Math.round((st.logical_bytes / st.stored_bytes) * 1000) / 1000);
    assert.equal(st.last_verify?.kind, 'verify');
    assert.equal(st.last_verify?.state, 'succeeded');
    assert.equal(st.last_verify?.result?.ok, true);
  });

  it('serve sessions: start, read over NBD, list, stop', async () => {
    const session = await client.startServeSession({ output: repo, vm: vmId });
    assert.equal(session.vm, vmId);
    assert.equal(session.size, 64 * MiB);
    assert.equal(session.writable, false);
    assert.ok(session.uri.startsWith('nbd+unix:///?socket='), session.uri);
    const copy = path.join(work, 'served.raw');
    execFileSync('nbdcopy', [session.uri, copy]);
    assert.deepEqual(readFileSync(copy), readFileSync(path.join(work, 'restored.raw')));
    assert.deepEqual(
      (await client.listServeSessions()).map((s) => s.id),
      [session.id],
    );
    assert.ok((await client.getServeSession(session.id)).bytes_read > 0);
    const stopped = await client.stopServeSession(session.id);
    assert.equal(stopped.id, session.id);
    assert.ok(!existsSync(session.socket));
    const err = await client.getServeSession(session.id).catch((e: unknown) => e);
    assert.ok(err instanceof NotFoundError, String(err));
  });

  it('a second export of the same VM while one runs is 409; cancelling a running one', async () => {
    qsd.writeRandom(16 * MiB, 48 * MiB); // incompressible: the export takes a while
    const job = await client.exportVM(qsd.locator, { output: repo, forceFull: true, parallel: 1 });
    const err = await client.exportVM(qsd.locator, { output: repo }).catch((e: unknown) => e);
    assert.ok(err instanceof ConflictError, String(err));
    assert.equal(err.status, 409);
    assert.ok(['conflict', 'locked'].includes(err.code), err.code);

    const cancelled = await client.cancelExport(job.id);
    assert.equal(cancelled.id, job.id);
    assert.equal(cancelled.state, 'cancelled');
    const final = await client.waitForExport(job.id, WAIT);
    assert.equal(final.state, 'cancelled');
    // nothing committed
    assert.equal((await client.listGenerations(repo)).length, 2);
    // the SSE stream of a finished job is one `end` event
    const events: JobEvent[] = [];
    for await (const ev of client.streamExportEvents(job.id)) events.push(ev);
    assert.deepEqual(
      events.map((e) => [e.type, e.job.state]),
      [['end', 'cancelled']],
    );
  });

  it('errors: 404 unknown job, 409 cancelling a finished job, 422 invalid field', async () => {
    const nf = await client.getExport('j-000000000000').catch((e: unknown) => e);
    assert.ok(nf instanceof NotFoundError, String(nf));
    assert.equal(nf.status, 404);
    assert.equal(nf.code, 'not_found');
    assert.match(nf.message, /\S/);
    await assert.rejects(client.cancelExport('j-000000000000'), NotFoundError);
    await assert.rejects(
      (async () => {
        for await (const _ of client.streamExportEvents('j-000000000000')) void _;
      })(),
      NotFoundError,
    );

    const done = await client.cancelExport(full.id).catch((e: unknown) => e);
    assert.ok(done instanceof ConflictError, String(done));
    assert.equal(done.status, 409);

    const bad = await client
      .exportVM(qsd.locator, { output: repo, compression: 'bogus' as never })
      .catch((e: unknown) => e);
    assert.ok(bad instanceof InvalidRequestError, String(bad));
    assert.equal(bad.status, 422);
    assert.equal(bad.code, 'invalid_argument');
    assert.match(bad.message, /compression/);

    const rel = await client.getCBTStatus(qsd.locator, 'relative/repo').catch((e: unknown) => e);
    assert.ok(rel instanceof InvalidRequestError, String(rel));
  });

  it('errors: a VM that does not exist is 404 or 502, never a 500', async () => {
    const missing = `qemu:${path.join(work, 'no-such-qmp.sock')}`;
    const err = await client.getCBTStatus(missing).catch((e: unknown) => e);
    assert.ok(err instanceof NotFoundError || err instanceof ProviderError, String(err));
    assert.ok(err.status === 404 || err.status === 502);
  });

  it('the job list survives: succeeded, failed and cancelled jobs keep their shape', async () => {
    const jobs: Job[] = await client.listExports();
    assert.ok(jobs.length >= 4);
    for (const j of jobs) {
      for (const field of [
        'id', 'kind', 'vm_path', 'output', 'state', 'phase', 'bytes_done', 'bytes_total',
        'throughput_bytes_per_s', 'mode', 'reason', 'created', 'started', 'finished', 'result', 'error',
      ]) {
        assert.ok(field in j, `job ${j.id} has no ${field}`);
      }
    }
  });
});

describe('HyperSDK against a live hypervisord with an API token', { timeout: 120_000 }, () => {
  const daemon = new Hypervisord({ token: 'it-token-0123456789' });

  before(async () => {
    await daemon.start();
  });
  after(async () => {
    await daemon.stop();
    daemon.cleanup();
  });

  it('health needs no token', async () => {
    assert.equal((await new HyperSDK(daemon.url).health()).status, 'ok');
  });

  it('no token and a wrong token are 401 unauthorized', async () => {
    const none = new HyperSDK(daemon.url, { token: '' });
    for (const c of [none, new HyperSDK(daemon.url, { token: 'wrong' })]) {
      const err = await c.listExports().catch((e: unknown) => e);
      assert.ok(err instanceof UnauthorizedError, String(err));
      assert.equal(err.status, 401);
      assert.equal(err.code, 'unauthorized');
      await assert.rejects(c.enableCBT('qemu:/nowhere.sock'), UnauthorizedError);
      await assert.rejects(c.metrics(), UnauthorizedError);
    }
  });

  it('the right token is let in', async () => {
    const c = new HyperSDK(daemon.url, { token: 'it-token-0123456789' });
    assert.deepEqual(await c.listExports(), []);
    const metrics = await c.metrics();
    assert.match(metrics, /hypersdk_jobs_running/);
    await assert.rejects(c.getExport('j-000000000000'), NotFoundError);
  });
});
