/**
 * The TypeScript SDK passes a VM's name through: the locator it was exported from (also
 * spelled another way), its id and its name list, restore and verify the same VM against
 * a LIVE hypervisord; a VM the repository does not hold is NotFoundError naming it.
 */

import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { HyperSDK, NotFoundError, type ExportResult, type RestoreResult } from '../src/index.js';
import { Hypervisord, MiB, QemuStorageDaemon, tempDir } from './rigs.js';

const WAIT = { timeoutMs: 60_000, pollIntervalMs: 50 };

describe('one VM name everywhere (TypeScript SDK)', { timeout: 120_000 }, () => {
  const qsd = new QemuStorageDaemon(8 * MiB);
  const work = tempDir('hypersdk-ts-names-');
  const repo = path.join(work, 'repo');
  const daemon = new Hypervisord({ output: repo, allow: [work, qsd.dir] });
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

  it('the locator, another spelling of it, the id and the name', async () => {
    qsd.write(0, MiB, 0x5e);
    await client.enableCBT(qsd.locator);
    const job = await client.exportVM(qsd.locator);
    const done = await client.waitForExport<ExportResult>(job.id, WAIT);
    assert.equal(done.state, 'succeeded', JSON.stringify(done.error));
    const vmId = done.result!.vm;
    const socket = qsd.locator.slice('qemu:'.length).split('?')[0]!;
    const names = [qsd.locator, `qemu:${socket}`, `qemu:${path.dirname(socket)}/./${path.basename(socket)}`, vmId];
    let first: Buffer | undefined;
    for (const name of names) {
      const gens = await client.listGenerations(undefined, name);
      assert.deepEqual(gens.map((g) => g.vm), [vmId], name);
      const to = path.join(work, 'restored.raw');
      const r = await client.restore({ vm: name, to, force: true });
      const restored = await client.waitForExport<RestoreResult>(r.id, WAIT);
      assert.equal(restored.state, 'succeeded', JSON.stringify(restored.error));
      const bytes = readFileSync(to);
      first ??= bytes;
      assert.ok(bytes.equals(first), name);
      const v = await client.verify({ vm: name, generation: 'latest' });
      assert.equal((await client.waitForExport(v.id, WAIT)).state, 'succeeded');
    }
  });

  it('a VM the repository does not hold is NotFoundError naming it', async () => {
    const unknown = `qemu:${path.join(work, 'other.sock')}`;
    const err = await client.listGenerations(undefined, unknown).catch((e: unknown) => e);
    assert.ok(err instanceof NotFoundError, String(err));
    assert.equal(err.status, 404);
    assert.ok(err.message.includes(unknown), err.message);
  });
});
