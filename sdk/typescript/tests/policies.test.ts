/**
 * Backup policies through the TypeScript SDK against a LIVE hypervisord: create one,
 * list and read it, run it now (the answer carries the export job), read its history;
 * a mistake is InvalidRequestError naming the field, an unknown name NotFoundError.
 */

import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { HyperSDK, InvalidRequestError, NotFoundError, type PolicyRun } from '../src/index.js';
import { Hypervisord, MiB, QemuStorageDaemon, tempDir } from './rigs.js';

describe('backup policies (TypeScript SDK)', { timeout: 120_000 }, () => {
  const qsd = new QemuStorageDaemon(8 * MiB);
  const work = tempDir('hypersdk-ts-policies-');
  const daemon = new Hypervisord({ output: path.join(work, 'repo'), allow: [work, qsd.dir] });
  let client: HyperSDK;

  before(async () => {
    await qsd.start();
    await daemon.start();
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

  it('create, list, run now and read the history', async () => {
    qsd.write(0, MiB, 0x3c);
    const made = await client.putPolicy('ts', {
      vms: [qsd.locator],
      schedule: '0 0 1 1 *',
      retention: { keep_last: 1 },
      max_concurrent: 1,
    });
    assert.equal(made.source, 'api');
    assert.equal(made.retention.keep_last, 1);
    assert.deepEqual((await client.listPolicies()).map((p) => p.name), ['ts']);
    assert.equal((await client.getPolicy('ts')).schedule, '0 0 1 1 *');

    const run = await client.runPolicy('ts');
    assert.equal(run.trigger, 'manual');
    assert.ok(run.exports[0]!.job_id, JSON.stringify(run));
    let done: PolicyRun | undefined;
    for (let i = 0; i < 400; i++) {
      done = (await client.policyHistory('ts', 1))[0];
      if (done !== undefined && done.state !== 'running') break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(done?.id, run.id);
    assert.equal(done?.state, 'succeeded', JSON.stringify(done));
    const job = await client.getExport(run.exports[0]!.job_id!);
    assert.equal(job.state, 'succeeded');
  });

  it('mistakes and unknown names are typed errors', async () => {
    const bad = await client
      .putPolicy('bad', { vms: [qsd.locator], schedule: 'now and then' })
      .catch((e: unknown) => e);
    assert.ok(bad instanceof InvalidRequestError, String(bad));
    assert.ok(bad.message.includes("schedule 'now and then' is not a cron expression"), bad.message);
    const missing = await client.policyHistory('nope').catch((e: unknown) => e);
    assert.ok(missing instanceof NotFoundError, String(missing));
    assert.equal(missing.message, "no policy 'nope'");
  });
});
