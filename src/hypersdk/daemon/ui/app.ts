/**
 * The hypervisord dashboard (served at /ui/, bundled by esbuild with the TypeScript SDK).
 *
 * Sign-in: the daemon prints `/ui/#token=...`; the token moves from the fragment into
 * session storage (this tab only, gone when it closes) and every API call sends it as the
 * bearer header. No cookie, so no request is ever authorised by the browser on its own.
 * Every node is built with the DOM API (never innerHTML): VM names and messages are data.
 */

import {
  HyperSDK,
  HyperSDKAPIError,
  NotFoundError,
  TERMINAL_JOB_STATES,
  type Generation,
  type Job,
  type JobKind,
  type JobState,
  type Policy,
  type ServeSession,
} from '../../../../sdk/typescript/src/index.js';

const TOKEN_KEY = 'hypervisord-token';
/** A VM with no good generation within this long is stale (policies carry no threshold). */
const DEFAULT_STALE_HOURS = 26;

// ------------------------------------------------------------------ formatting

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** Binary units: 1536 -> "1.5 KiB". */
export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '—';
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${UNITS[i]}`;
}

/** A time in the browser's locale and zone. */
function when(iso: string | null | undefined): string {
  if (!iso) return '—';
  return new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' }).format(
    new Date(iso),
  );
}

/** "3 h ago", in the browser's language. */
function ago(iso: string): string {
  const s = (Date.parse(iso) - Date.now()) / 1000;
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  const steps: [Intl.RelativeTimeFormatUnit, number][] = [
    ['day', 86400],
    ['hour', 3600],
    ['minute', 60],
  ];
  for (const [unit, size] of steps) if (Math.abs(s) >= size) return rtf.format(Math.round(s / size), unit);
  return rtf.format(Math.round(s), 'second');
}

function duration(job: Job): string {
  if (!job.started) return '—';
  const end = job.finished ? Date.parse(job.finished) : Date.now();
  const s = Math.max(0, (end - Date.parse(job.started)) / 1000);
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function throughput(job: Job): string {
  return job.throughput_bytes_per_s ? `${bytes(job.throughput_bytes_per_s)}/s` : '—';
}

function percent(job: Job): number | null {
  if (job.state === 'succeeded') return 100;
  if (!job.bytes_total) return TERMINAL_JOB_STATES.includes(job.state) ? 0 : null;
  return Math.min(100, Math.floor((100 * job.bytes_done) / job.bytes_total));
}

/** The API's own message for an error (or the browser's, for a network failure). */
function message(err: unknown): string {
  if (err instanceof HyperSDKAPIError) return err.message;
  return err instanceof Error ? err.message : String(err);
}

// ----------------------------------------------------------------------- DOM

type Child = Node | string | null | undefined | false;

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | ((ev: Event) => void)> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else el.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';

function s(tag: string, attrs: Record<string, string | number>, ...children: (Node | string)[]): SVGElement {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  el.append(...children);
  return el;
}

function table(headers: string[], rows: Node[][], caption?: string): HTMLTableElement {
  return h(
    'table',
    {},
    caption ? h('caption', {}, caption) : null,
    h('thead', {}, h('tr', {}, ...headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, ...rows.map((r) => h('tr', {}, ...r.map((c) => h('td', {}, c))))),
  );
}

const STATE_ICON: Record<string, string> = {
  queued: '○',
  running: '▶',
  succeeded: '✔',
  failed: '✖',
  cancelled: '⊘',
};

/** A state as an icon and a word: never colour alone. */
function badge(state: string, cls = state): HTMLElement {
  return h('span', { class: `badge ${cls}` }, `${STATE_ICON[state] ?? '•'} ${state}`);
}

function alert(text: string): void {
  const box = document.getElementById('alert')!;
  box.replaceChildren(text ? h('p', {}, h('strong', {}, 'Error: '), text) : '');
}

function view(...children: Child[]): HTMLElement {
  const main = document.getElementById('view')!;
  main.replaceChildren(...children.filter((c): c is Node | string => !!c));
  return main;
}

// ------------------------------------------------------------- sign-in state

function takeTokenFromFragment(): void {
  const m = /^#token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]!));
    history.replaceState(null, '', `${location.pathname}#/`); // out of the address bar
  }
}

function client(): HyperSDK {
  // An empty token sends none: the daemon answers with its own message.
  return new HyperSDK(location.origin, { token: sessionStorage.getItem(TOKEN_KEY) ?? '' });
}

/** Streams are closed when the page changes. */
let pageAbort = new AbortController();

/**
 * A live progress row for a job: `fetch` streaming of GET /exports/{id}/events with the
 * bearer header (EventSource cannot send one). `onEnd` runs once with the finished job.
 */
function jobProgress(api: HyperSDK, job: Job, onEnd?: (job: Job) => void): HTMLElement {
  const bar = h('progress', { max: '100', 'aria-label': `progress of job ${job.id}` });
  const text = h('span', { class: 'progress-text' });
  const box = h('div', { class: 'job-progress', 'data-job': job.id, 'aria-live': 'polite' }, bar, text);
  const show = (j: Job): void => {
    const p = percent(j);
    if (p === null) bar.removeAttribute('value');
    else bar.value = p;
    box.dataset.state = j.state;
    text.replaceChildren(
      badge(j.state),
      ` ${j.phase}`,
      p === null ? '' : ` ${p}%`,
      ` — ${bytes(j.bytes_done)}${j.bytes_total ? ` of ${bytes(j.bytes_total)}` : ''}`,
      j.throughput_bytes_per_s ? `, ${throughput(j)}` : '',
      j.error ? h('span', { class: 'error' }, ` ${j.error.message}`) : '',
    );
  };
  show(job);
  void (async () => {
    try {
      for await (const ev of api.streamExportEvents(job.id, { signal: pageAbort.signal })) {
        show(ev.job);
        if (ev.type === 'end') onEnd?.(ev.job);
      }
    } catch (err) {
      text.append(h('span', { class: 'error' }, ` ${message(err)}`));
    }
  })();
  return box;
}

// ------------------------------------------------------------------- overview

/**
 * How to reach each VM again: the locator of its newest succeeded export job (as the
 * operator gave it, e.g. with `?nbd=`), which a generation's canonical locator may lack.
 */
async function exportLocators(api: HyperSDK): Promise<Map<string, string>> {
  const jobs = await api.listExports({ kind: 'export', state: 'succeeded', limit: 1000 });
  const found = new Map<string, string>();
  for (const j of jobs) {
    const vm = (j.result as { vm?: unknown } | null)?.vm;
    if (typeof vm === 'string' && j.vm_path && !found.has(vm)) found.set(vm, j.vm_path); // newest first
  }
  return found;
}

interface VmRow {
  id: string;
  /** Its repository: a policy's, or undefined for the daemon's default one. */
  output: string | undefined;
  name: string;
  locator: string | null;
  policies: string[];
  lastGood: Generation | null;
  generations: number;
}

/** A generation with the repository it was listed from (undefined: the default one). */
type Held = Generation & { repo: string | undefined };

/**
 * The generations of the default repository and of every policy's repository (one VM may
 * be in several: one row each). A policy's repository that does not exist yet holds none.
 */
async function allGenerations(api: HyperSDK, policies: Policy[]): Promise<Held[]> {
  const outputs = [undefined, ...new Set(policies.map((p) => p.output))];
  const lists = await Promise.all(
    outputs.map((o) =>
      api.listGenerations(o).then(
        (gens) => gens.map((g): Held => ({ ...g, repo: o })),
        (err) => {
          if (err instanceof NotFoundError && o !== undefined) return [];
          throw err;
        },
      ),
    ),
  );
  // The default repository may be a policy's too (its path is not in the API): the list
  // that holds the same generations is that policy's, and stands for both.
  const keys = (gens: Held[]): string => gens.map((g) => `${g.vm} ${g.id}`).sort().join('\n');
  const [defaults = [], ...others] = lists;
  const same = defaults.length > 0 && others.some((o) => keys(o) === keys(defaults));
  return same ? others.flat() : lists.flat();
}

function vmRows(gens: Held[], policies: Policy[], locators: Map<string, string>): VmRow[] {
  const rows = new Map<string, VmRow>();
  for (const g of gens) {
    const key = `${g.repo ?? ''} ${g.vm}`;
    const row = rows.get(key) ?? {
      id: g.vm,
      output: g.repo,
      name: g.vm_name,
      locator: g.locator ?? null,
      policies: [],
      lastGood: null,
      generations: 0,
    };
    row.generations += 1;
    row.locator = locators.get(g.vm) ?? g.locator ?? row.locator;
    if (g.completed && !g.suspect) row.lastGood = g; // oldest first: the last one wins
    rows.set(key, row);
  }
  for (const p of policies) {
    for (const { vm } of p.vms) {
      const found = [...rows.values()].find(
        (r) =>
          r.output === p.output &&
          (r.locator === vm || r.id === vm || r.name === vm || gens.some((g) => g.vm === r.id && g.locator === vm)),
      );
      if (found) found.policies.push(p.name);
      else {
        const row = { id: vm, output: p.output, name: vm, locator: vm, policies: [p.name], lastGood: null, generations: 0 };
        rows.set(`${p.output} ${vm}`, row);
      }
    }
  }
  return [...rows.values()].sort((a, b) => a.name.localeCompare(b.name));
}

function vmLink(row: VmRow): HTMLElement {
  const query = row.output === undefined ? '' : `?${new URLSearchParams({ output: row.output })}`;
  return h('a', { href: `#/vm/${encodeURIComponent(row.id)}${query}` }, row.name);
}

async function overview(api: HyperSDK): Promise<void> {
  const [policies, running, queued, locators] = await Promise.all([
    api.listPolicies(),
    api.listExports({ state: 'running' }),
    api.listExports({ state: 'queued' }),
    exportLocators(api),
  ]);
  const gens = await allGenerations(api, policies);
  const staleMs = DEFAULT_STALE_HOURS * 3600_000;
  const rows = vmRows(gens, policies, locators);
  const cbtCells = new Map<string, HTMLElement[]>(); // one VM may have rows in two repositories
  const body = rows.map((r) => {
    const age = r.lastGood ? Date.now() - Date.parse(r.lastGood.completed ?? r.lastGood.created) : Infinity;
    const stale = age > staleMs;
    const cbt = h('span', {}, r.locator ? 'checking…' : 'unknown (no locator)');
    if (r.locator) cbtCells.set(r.locator, [...(cbtCells.get(r.locator) ?? []), cbt]);
    return [
      vmLink(r),
      r.output === undefined
        ? document.createTextNode('default')
        : h(
            'a',
            { href: `#/repository?${new URLSearchParams({ output: r.output })}`, title: r.output },
            h('code', {}, r.output.split('/').filter(Boolean).pop() ?? r.output),
          ),
      document.createTextNode(r.policies.join(', ') || '—'),
      r.lastGood
        ? h('span', {}, h('code', {}, r.lastGood.id), ` (${r.lastGood.type})`)
        : document.createTextNode('none'),
      r.lastGood
        ? h('time', { datetime: r.lastGood.completed ?? r.lastGood.created, title: when(r.lastGood.completed) }, ago(r.lastGood.completed ?? r.lastGood.created))
        : document.createTextNode('—'),
      stale ? h('span', { class: 'badge stale' }, '⚠ stale') : h('span', { class: 'badge fresh' }, '✔ fresh'),
      cbt,
    ];
  });
  const vmTable = table(['VM', 'Repository', 'Policies', 'Last good generation', 'Age', 'Backup', 'CBT'], body, `Virtual machines (stale: no good generation within ${DEFAULT_STALE_HOURS} h)`);
  vmTable.id = 'vms';
  rows.forEach((r, i) => {
    const tr = vmTable.tBodies[0]!.rows[i]!;
    tr.dataset.vm = r.id;
    const age = r.lastGood ? Date.now() - Date.parse(r.lastGood.completed ?? r.lastGood.created) : Infinity;
    if (age > staleMs) tr.classList.add('stale-row');
  });
  const jobs = [...running, ...queued];
  view(
    h('h1', {}, 'Overview'),
    rows.length ? vmTable : h('p', {}, 'No VM yet: no generation in the default repository and no policy.'),
    h('h2', {}, 'Running jobs'),
    jobs.length
      ? table(
          ['Job', 'Kind', 'VM', 'Progress'],
          jobs.map((j) => [
            h('a', { href: `#/job/${j.id}`, class: 'job-id' }, j.id),
            document.createTextNode(j.kind),
            document.createTextNode(j.vm_path ?? '—'),
            jobProgress(api, j),
          ]),
        )
      : h('p', { id: 'no-jobs' }, 'Nothing running.'),
  );
  for (const [locator, cells] of cbtCells) {
    const show = (node: () => Node | string): void => cells.forEach((c) => c.replaceChildren(node()));
    api.getCBTStatus(locator).then(
      (st) => show(() => (st.cbt_enabled ? '✔ enabled' : '✖ disabled')),
      (err) => show(() => h('span', { class: 'error' }, message(err))),
    );
  }
}

// ------------------------------------------------------------------- VM page

/** Bars of bytes read and stored per export; full ones hatched and labelled "F". */
function chart(gens: Generation[]): SVGElement {
  const W = 640;
  const H = 220;
  const pad = { l: 64, r: 12, t: 12, b: 40 };
  const max = Math.max(1, ...gens.flatMap((g) => [g.bytes_read, g.bytes_stored]));
  const slot = (W - pad.l - pad.r) / Math.max(1, gens.length);
  const bw = Math.min(24, slot / 2.5);
  const y = (v: number): number => pad.t + (H - pad.t - pad.b) * (1 - v / max);
  const svg = s('svg', {
    viewBox: `0 0 ${W} ${H}`,
    role: 'img',
    'aria-labelledby': 'chart-title',
    id: 'chart',
    class: 'chart',
  });
  svg.append(
    s('title', { id: 'chart-title' }, 'Bytes read and stored per export (F = full, I = incremental)'),
    s('defs', {}, s('pattern', { id: 'hatch', width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' }, s('rect', { width: 6, height: 6, class: 'hatch-bg' }), s('line', { x1: 0, y1: 0, x2: 0, y2: 6, class: 'hatch-line' }))),
    s('line', { x1: pad.l, y1: y(0), x2: W - pad.r, y2: y(0), class: 'axis' }),
    s('text', { x: pad.l - 6, y: y(max) + 4, 'text-anchor': 'end', class: 'tick' }, bytes(max)),
    s('text', { x: pad.l - 6, y: y(0), 'text-anchor': 'end', class: 'tick' }, '0'),
  );
  gens.forEach((g, i) => {
    const x = pad.l + slot * i + slot / 2;
    const full = g.type === 'full';
    const kind = full ? 'full' : 'incremental';
    const group = s('g', { class: `bar-group ${kind}`, 'data-generation': g.id });
    for (const [j, field, label] of [
      [0, 'bytes_read', 'read'],
      [1, 'bytes_stored', 'stored'],
    ] as const) {
      const v = g[field];
      group.append(
        s(
          'rect',
          { x: x - bw + j * bw, y: y(v), width: bw - 2, height: y(0) - y(v), class: `bar ${label}${full ? ' full' : ''}` },
          s('title', {}, `${g.id} (${kind}): ${label} ${bytes(v)}`),
        ),
      );
      if (full) {
        const geo = { x: x - bw + j * bw, y: y(v), width: bw - 2, height: y(0) - y(v) };
        group.append(s('rect', { ...geo, fill: 'url(#hatch)', class: 'hatch', 'aria-hidden': 'true' }));
      }
    }
    group.append(s('text', { x, y: H - pad.b + 16, 'text-anchor': 'middle', class: 'tick' }, full ? 'F' : 'I'));
    group.append(s('text', { x, y: H - pad.b + 30, 'text-anchor': 'middle', class: 'tick small' }, `#${i + 1}`));
    svg.append(group);
  });
  return svg;
}

function legend(): HTMLElement {
  return h(
    'p',
    { class: 'legend' },
    h('span', { class: 'swatch read' }), ' read (left bar) ',
    h('span', { class: 'swatch stored' }), ' stored (right bar) ',
    h('span', { class: 'swatch full' }), ' hatched + "F": full export; "I": incremental',
  );
}

function timeline(gens: Generation[]): HTMLElement {
  return h(
    'ol',
    { class: 'timeline', id: 'timeline' },
    ...[...gens].reverse().map((g) =>
      h(
        'li',
        { 'data-generation': g.id },
        h('span', { class: `badge ${g.type}` }, g.type === 'full' ? '■ full' : '▲ incremental'),
        ' ',
        h('code', {}, g.id),
        ' ',
        h('time', { datetime: g.created }, when(g.created)),
        ` — read ${bytes(g.bytes_read)}, stored ${bytes(g.bytes_stored)} of ${bytes(g.total_size)}`,
        g.suspect ? h('span', { class: 'badge stale' }, ' ⚠ suspect: a later audit found missed blocks') : '',
      ),
    ),
  );
}

async function vmPage(api: HyperSDK, vmId: string, output: string | undefined): Promise<void> {
  const [gens, sessions, locators] = await Promise.all([
    api.listGenerations(output, vmId).catch((err: unknown) => {
      // A policy's VM never exported yet (named by its locator): no generation so far.
      if (err instanceof NotFoundError && vmId.includes(':')) return [];
      throw err;
    }),
    api.listServeSessions(),
    exportLocators(api),
  ]);
  const last = gens[gens.length - 1];
  const name = last?.vm_name ?? vmId;
  const locator = locators.get(vmId) ?? last?.locator ?? (vmId.includes(':') ? vmId : null);
  const jobsBox = h('div', { id: 'vm-jobs' });
  // After an export: the new generation joins the timeline, chart and decision in place
  // (the finished job's progress stays on the page).
  const decisionBox = h('div', { id: 'decision-box' });
  const chartBox = h('div', { id: 'chart-box' });
  const timelineBox = h('div', { id: 'timeline-box' });
  const genSelect = h('select', { id: 'restore-generation', name: 'generation' });
  const fill = (list: Generation[]): void => {
    const newest = list[list.length - 1];
    decisionBox.replaceChildren(
      newest
        ? h('p', { id: 'decision' }, h('strong', {}, newest.type), ` on ${when(newest.created)}: `, newest.reason)
        : h('p', { id: 'decision' }, 'No export yet.'),
    );
    chartBox.replaceChildren(chart(list), legend());
    timelineBox.replaceChildren(h('p', {}, `${list.length} generation(s), newest first`), timeline(list));
    const chosen = genSelect.value;
    genSelect.replaceChildren(
      h('option', { value: 'latest' }, 'latest'),
      ...[...list].reverse().map((g) => h('option', { value: g.id }, `${g.id} (${g.type})`)),
    );
    if ([...genSelect.options].some((o) => o.value === chosen)) genSelect.value = chosen;
  };
  const reload = (): void => {
    api.listGenerations(output, vmId).then(fill, (err) => alert(message(err)));
  };

  const runJob = async (start: () => Promise<Job>, reloadAfter = true): Promise<void> => {
    alert('');
    try {
      const job = await start();
      jobsBox.prepend(
        h('div', {}, h('a', { href: `#/job/${job.id}` }, job.id), ` ${job.kind}: `, jobProgress(api, job, (end) => {
          if (reloadAfter && end.state === 'succeeded') reload();
        })),
      );
    } catch (err) {
      alert(message(err));
    }
  };

  const exportBtn = (full: boolean): HTMLButtonElement =>
    h('button', {
      type: 'button',
      id: full ? 'export-full' : 'export-incremental',
      onclick: () => {
        if (!locator) return alert(`VM ${name} has no locator recorded: export it once with hyperexport`);
        void runJob(() => api.exportVM(locator, full ? { output, forceFull: true } : { output, incremental: true }));
      },
    }, full ? 'Export now (full)' : 'Export now (incremental)');

  const target = h('input', { id: 'restore-to', name: 'to', type: 'text', required: '', placeholder: '/allowed/folder/disk.raw', size: '40' });
  const restoreForm = h('form', {
    class: 'inline',
    onsubmit: (ev: Event) => {
      ev.preventDefault();
      void runJob(() => api.restore({ output, vm: vmId, generation: genSelect.value, to: target.value }), false);
    },
  }, h('label', { for: 'restore-generation' }, 'Generation '), genSelect, ' ',
  h('label', { for: 'restore-to' }, 'to (a path the daemon allows) '), target, ' ',
  h('button', { type: 'submit', id: 'restore' }, 'Restore'));

  const sessionBox = h('div', { id: 'session', 'aria-live': 'polite' });
  const showSessions = (list: ServeSession[]): void => {
    const mine = list.filter((x) => x.vm === vmId);
    sessionBox.replaceChildren(
      mine.length
        ? h('ul', {}, ...mine.map((x) => h('li', {},
            'NBD URI: ', h('code', { class: 'nbd-uri' }, x.uri), ` (generation ${x.generation}, ${bytes(x.size)}) `,
            h('button', { type: 'button', class: 'stop-session', onclick: async () => {
              alert('');
              try {
                await api.stopServeSession(x.id);
                showSessions(await api.listServeSessions());
              } catch (err) {
                alert(message(err));
              }
            } }, 'Stop instant access'))))
        : h('p', { id: 'no-session' }, 'No instant-access session.'),
      h('button', { type: 'button', id: 'start-session', onclick: async () => {
        alert('');
        try {
          await api.startServeSession({ output, vm: vmId, generation: genSelect.value });
          showSessions(await api.listServeSessions());
        } catch (err) {
          alert(message(err));
        }
      } }, 'Start instant access (selected generation)'),
    );
  };
  showSessions(sessions);

  view(
    h('h1', {}, `VM ${name}`),
    h('p', {}, 'Id ', h('code', {}, vmId), locator ? h('span', {}, ', locator ', h('code', {}, locator)) : '',
      ', repository ', h('code', {}, output ?? 'the daemon’s default')),
    h('section', { 'aria-labelledby': 'decision-h' },
      h('h2', { id: 'decision-h' }, 'Last export'),
      decisionBox),
    h('section', { 'aria-labelledby': 'actions-h' },
      h('h2', { id: 'actions-h' }, 'Actions'),
      h('p', {}, exportBtn(false), ' ', exportBtn(true), ' ',
        h('button', { type: 'button', id: 'verify', onclick: () => void runJob(() => api.verify({ output, vm: vmId, generation: genSelect.value }), false) }, 'Verify selected generation')),
      restoreForm,
      jobsBox),
    h('section', { 'aria-labelledby': 'ia-h' }, h('h2', { id: 'ia-h' }, 'Instant access'), sessionBox),
    h('section', { 'aria-labelledby': 'chart-h' }, h('h2', { id: 'chart-h' }, 'Bytes per export'), chartBox),
    h('section', { 'aria-labelledby': 'tl-h' }, h('h2', { id: 'tl-h' }, 'Generations'), timelineBox),
  );
  fill(gens);
}

// ------------------------------------------------------------------------ jobs

const JOB_STATES: JobState[] = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const JOB_KINDS: JobKind[] = ['export', 'restore', 'verify'];

async function jobsPage(api: HyperSDK, params: URLSearchParams): Promise<void> {
  const state = (params.get('state') || undefined) as JobState | undefined;
  const kind = (params.get('kind') || undefined) as JobKind | undefined;
  const jobs = await api.listExports({ state, kind, limit: 200 });
  const pick = (id: string, label: string, values: string[], current: string | undefined): HTMLElement[] => {
    const sel = h('select', { id, name: id }, h('option', { value: '' }, 'any'), ...values.map((v) => h('option', { value: v }, v)));
    sel.value = current ?? '';
    return [h('label', { for: id }, `${label} `), sel];
  };
  const form = h('form', {
    class: 'inline',
    id: 'job-filter',
    onsubmit: (ev: Event) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const k of ['state', 'kind']) {
        const v = (form.elements.namedItem(k) as HTMLSelectElement).value;
        if (v) q.set(k, v);
      }
      location.hash = `#/jobs${q.size ? `?${q}` : ''}`;
    },
  }, ...pick('state', 'State', JOB_STATES, state), ' ', ...pick('kind', 'Kind', JOB_KINDS, kind), ' ', h('button', { type: 'submit' }, 'Filter'));
  view(
    h('h1', {}, 'Jobs'),
    form,
    jobs.length
      ? table(['Job', 'Kind', 'VM', 'State', 'Phase', 'Created', 'Duration', 'Throughput'],
          jobs.map((j) => [
            h('a', { href: `#/job/${j.id}`, class: 'job-id' }, j.id),
            document.createTextNode(j.kind),
            document.createTextNode(j.vm_path ?? '—'),
            badge(j.state),
            document.createTextNode(j.phase),
            h('time', { datetime: j.created }, when(j.created)),
            document.createTextNode(duration(j)),
            document.createTextNode(throughput(j)),
          ]))
      : h('p', {}, 'No job matches.'),
  );
}

async function jobPage(api: HyperSDK, id: string): Promise<void> {
  const job = await api.getExport(id);
  const events = h('ol', { id: 'events', class: 'events' });
  const detail = h('div', { id: 'job-detail' });
  const show = (j: Job): void => {
    detail.replaceChildren(
      h('dl', {},
        h('dt', {}, 'State'), h('dd', {}, badge(j.state)),
        h('dt', {}, 'Kind'), h('dd', {}, j.kind),
        h('dt', {}, 'VM'), h('dd', {}, j.vm_path ?? '—'),
        h('dt', {}, 'Repository'), h('dd', {}, j.output ?? '—'),
        h('dt', {}, 'Decision'), h('dd', {}, j.mode ? `${j.mode}: ${j.reason ?? ''}` : '—'),
        h('dt', {}, 'Created'), h('dd', {}, when(j.created)),
        h('dt', {}, 'Duration'), h('dd', {}, duration(j)),
        h('dt', {}, 'Bytes'), h('dd', {}, `${bytes(j.bytes_done)}${j.bytes_total ? ` of ${bytes(j.bytes_total)}` : ''}`),
        h('dt', {}, 'Throughput'), h('dd', {}, throughput(j)),
        j.error ? h('dt', {}, 'Error') : null,
        j.error ? h('dd', { class: 'error', id: 'job-error' }, `${j.error.code}: ${j.error.message}`) : null,
      ),
    );
  };
  show(job);
  const cancel = h('button', { type: 'button', id: 'cancel', onclick: async () => {
    alert('');
    try {
      show(await api.cancelExport(id));
    } catch (err) {
      alert(message(err));
    }
  } }, 'Cancel job');
  view(h('h1', {}, `Job ${id}`), detail, TERMINAL_JOB_STATES.includes(job.state) ? null : cancel, h('h2', {}, 'Events'), events);
  if (TERMINAL_JOB_STATES.includes(job.state)) {
    events.append(h('li', {}, `${when(job.finished)}: ${job.state} (the job has finished; no live events)`));
    return;
  }
  try {
    for await (const ev of api.streamExportEvents(id, { signal: pageAbort.signal })) {
      const p = percent(ev.job);
      events.append(h('li', {}, `${new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' }).format(new Date())} ${ev.type}: ${ev.job.state}, ${ev.job.phase}${p === null ? '' : ` ${p}%`}, ${bytes(ev.job.bytes_done)}`));
      show(ev.job);
      if (ev.type === 'end') cancel.remove();
    }
  } catch (err) {
    alert(message(err));
  }
}

// ------------------------------------------------------------------ repository

async function repositoryPage(api: HyperSDK, output: string | undefined): Promise<void> {
  const st = await api.repositoryStats(output);
  const jobsBox = h('div', { id: 'repo-jobs' });
  const lv = st.last_verify;
  const lg = st.last_gc;
  view(
    h('h1', {}, 'Repository'),
    h('dl', { id: 'repo-stats' },
      h('dt', {}, 'Location'), h('dd', {}, h('code', {}, st.output)),
      h('dt', {}, 'Size (stored chunks)'), h('dd', { id: 'repo-size' }, bytes(st.stored_bytes)),
      h('dt', {}, 'Logical size (all generations)'), h('dd', {}, bytes(st.logical_bytes)),
      h('dt', {}, 'Dedup ratio'), h('dd', { id: 'repo-dedup' }, st.dedup_ratio === null ? '—' : `${st.dedup_ratio.toFixed(2)} : 1`),
      h('dt', {}, 'Chunks'), h('dd', { id: 'repo-chunks' }, st.chunk_count.toLocaleString()),
      h('dt', {}, 'VMs / generations'), h('dd', {}, `${st.vms} / ${st.generations}`),
      h('dt', {}, 'Encryption, compression'), h('dd', {}, `${st.encrypted ? 'encrypted' : 'not encrypted'}, ${st.compression}`),
      h('dt', {}, 'Last verify'), h('dd', { id: 'repo-last-verify' }, lv ? h('span', {}, badge(lv.state), lv.result?.ok === false ? h('strong', { class: 'error' }, ' ⚠ damage found') : '', ' ', when(lv.finished), ' ', h('a', { href: `#/job/${lv.id}` }, lv.id), lv.error ? ` — ${lv.error.message}` : '') : 'never (by this daemon)'),
      h('dt', {}, 'Last gc'), h('dd', { id: 'repo-last-gc' }, lg ? h('span', {}, badge(lg.state), ' ', when(lg.finished), lg.result ? ` — ${bytes(Number(lg.result.bytes_removed))} freed` : '', ' ', h('a', { href: `#/job/${lg.id}` }, lg.id), lg.error ? ` — ${lg.error.message}` : '') : 'never (by this daemon)'),
    ),
    h('p', {}, h('button', { type: 'button', id: 'verify-all', onclick: async () => {
      alert('');
      try {
        const job = await api.verify({ output });
        jobsBox.prepend(jobProgress(api, job, () => void route()));
      } catch (err) {
        alert(message(err));
      }
    } }, 'Verify every generation'), ' ', h('button', { type: 'button', id: 'gc', onclick: async () => {
      alert('');
      try {
        const job = await api.gc({ output });
        jobsBox.prepend(jobProgress(api, job, () => void route()));
      } catch (err) {
        alert(message(err));
      }
    } }, 'Collect garbage (gc)')),
    jobsBox,
  );
}

// ---------------------------------------------------------------------- router

function signInPage(): void {
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: '', size: '50' });
  view(
    h('h1', {}, 'Sign in'),
    h('p', {}, 'Open the sign-in link hypervisord prints when it starts, or paste the API token (',
      h('code', {}, '<state dir>/api-token'), ').'),
    h('form', { id: 'sign-in', onsubmit: (ev: Event) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      location.hash = '#/';
      void route();
    } }, h('label', { for: 'token' }, 'API token '), input, ' ', h('button', { type: 'submit' }, 'Sign in')),
  );
}

async function route(): Promise<void> {
  pageAbort.abort();
  pageAbort = new AbortController();
  alert('');
  const [path = '/', query = ''] = location.hash.replace(/^#/, '').split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const page = parts[0] ?? 'overview';
  for (const a of document.querySelectorAll<HTMLAnchorElement>('nav a')) {
    if (a.dataset.page === (page === 'vm' ? 'overview' : page === 'job' ? 'jobs' : page)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (sessionStorage.getItem(TOKEN_KEY) === null) {
    signInPage();
    return;
  }
  const api = client();
  try {
    if (page === 'overview') await overview(api);
    else if (page === 'vm' && parts[1]) await vmPage(api, parts[1], new URLSearchParams(query).get('output') ?? undefined);
    else if (page === 'jobs') await jobsPage(api, new URLSearchParams(query));
    else if (page === 'job' && parts[1]) await jobPage(api, parts[1]);
    else if (page === 'repository') await repositoryPage(api, new URLSearchParams(query).get('output') ?? undefined);
    else view(h('h1', {}, 'Not found'), h('p', {}, `No page ${location.hash}`));
    document.getElementById('view')!.dataset.loaded = page;
  } catch (err) {
    view(h('h1', {}, 'Could not load this page'), h('p', { class: 'error', id: 'page-error' }, message(err)));
    alert(message(err));
    document.getElementById('view')!.dataset.loaded = 'error';
  }
}

function start(): void {
  takeTokenFromFragment();
  document.getElementById('sign-out')!.addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.hash = '#/';
    void route();
  });
  window.addEventListener('hashchange', () => {
    takeTokenFromFragment();
    void route();
  });
  void route();
}

start();
