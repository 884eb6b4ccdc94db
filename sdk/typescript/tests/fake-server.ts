/** A tiny HTTP server for unit tests: records every request, answers with a handler. */

import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Recorded {
  method: string;
  url: string;
  path: string;
  query: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  body: string;
  json: unknown;
}

export type Handler = (req: Recorded, res: http.ServerResponse) => void | Promise<void>;

export class FakeServer {
  readonly requests: Recorded[] = [];
  handler: Handler = (_req, res) => json(res, 200, {});
  private server = http.createServer((req, res) => void this.handle(req, res));
  private sockets = new Set<import('node:net').Socket>();
  url = '';

  async start(): Promise<this> {
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    const { port } = this.server.address() as AddressInfo;
    this.url = `http://127.0.0.1:${port}`;
    return this;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  reset(handler: Handler): void {
    this.requests.length = 0;
    this.handler = handler;
  }

  get last(): Recorded {
    const r = this.requests[this.requests.length - 1];
    if (r === undefined) throw new Error('no request recorded');
    return r;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    const u = new URL(req.url ?? '/', 'http://x');
    let parsed: unknown;
    try {
      parsed = body ? JSON.parse(body) : undefined;
    } catch {
      parsed = undefined;
    }
    const rec: Recorded = {
      method: req.method ?? '',
      url: req.url ?? '',
      path: u.pathname,
      query: u.searchParams,
      headers: req.headers,
      body,
      json: parsed,
    };
    this.requests.push(rec);
    try {
      await this.handler(rec, res);
    } catch (err) {
      if (!res.headersSent) json(res, 599, { error: { code: 'test_bug', message: String(err) } });
    }
  }
}

export function json(res: http.ServerResponse, status: number, doc: unknown): void {
  const text = JSON.stringify(doc);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

export function job(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 'j-6f1c2a9e0b7d',
    kind: 'export',
    vm_path: 'qemu:/run/vm1.qmp',
    output: '/backups/repo',
    state: 'running',
    phase: 'copying',
    bytes_done: 104857600,
    bytes_total: 536870912,
    throughput_bytes_per_s: 412000000.0,
    mode: 'incremental',
    reason: 'Incremental export possible',
    created: '2026-11-26T02:40:00.000000Z',
    started: '2026-11-26T02:40:00.100000Z',
    finished: null,
    result: null,
    error: null,
    ...overrides,
  };
}
