// edgefleet dashboard: one script, no framework, no build step. It reads
// the hub's REST API (/api/v1) with the session cookie and redraws what a
// server-sent event (/ui/events) says changed. Everything a device or a
// manifest supplies is put in the page as text, never as HTML.
'use strict';

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const main = document.getElementById('main');
const PAGE_SIZE = 50;

// ---- small helpers -------------------------------------------------------

/** An element: h('a', {href: '#/x', class: 'c'}, 'text', child, [more]). */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    // Through the CSSOM: the CSP refuses style attributes.
    else if (k === 'style') el.style.cssText = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, kids);
  return el;
}

/** Replaces `el`'s children (nulls skipped, as in h()). */
function fill(el, ...kids) {
  el.replaceChildren();
  return append(el, kids);
}

function append(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const k of kids) el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return el;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** Calls /api/v1: JSON in and out; changes carry the CSRF token. */
async function api(path, opts = {}) {
  const o = { credentials: 'same-origin', method: opts.method || 'GET', headers: { Accept: 'application/json' } };
  if (o.method !== 'GET') {
    o.headers['X-CSRF-Token'] = CSRF;
    if (opts.body !== undefined) {
      o.headers['Content-Type'] = 'application/json';
      o.body = JSON.stringify(opts.body);
    }
  }
  const r = await fetch('/api/v1' + path, o);
  if (r.status === 401) {
    location.href = '/ui/';
    throw new ApiError(401, 'Signed out');
  }
  const text = await r.text();
  const body = text ? JSON.parse(text) : null;
  if (!r.ok) throw new ApiError(r.status, body && body.error ? body.error.message : r.status + ' ' + r.statusText);
  return body;
}

const enc = encodeURIComponent;

function ago(ms) {
  if (!ms) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / 86400) + ' d ago';
}

function when(ms) {
  return ms ? h('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString() }, ago(ms)) : '—';
}

function bytes(n) {
  if (n === undefined || n === null) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

const pct = (used, total) => (total ? (100 * used / total).toFixed(0) + ' %' : '—');

const TONE = {
  online: 'ok', offline: 'bad', unknown: 'info',
  healthy: 'ok', progressing: 'warn', failed: 'bad', none: 'info',
  Healthy: 'ok', Progressing: 'warn', Degraded: 'bad', Unknown: 'info',
  Synced: 'ok', Syncing: 'warn', Failed: 'bad', RolledBack: 'bad',
  Paused: 'warn', Complete: 'ok', Aborted: 'bad',
};

function badge(text, tone) {
  return h('span', { class: 'badge b-' + (tone || TONE[text] || 'info') }, text);
}

/** A progress bar with its figures as text ("3/10 ready, 1 failed"). */
function progress(ok, total, bad, label) {
  const w = (n) => (total ? (100 * n / total) : 0).toFixed(1) + '%';
  const text = `${ok}/${total}` + (bad ? `, ${bad} failed` : '');
  return h('div', { class: 'progress' },
    h('div', { class: 'bar', role: 'img', 'aria-label': `${label || 'Ready'} ${text}` },
      h('span', { class: 'ok', style: `width:${w(ok)}` }),
      h('span', { class: 'bad', style: `left:${w(ok)};width:${w(bad || 0)}` })),
    h('span', { class: 'mono' }, text));
}

function table(head, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted' }, empty || 'Nothing yet.');
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('thead', {}, h('tr', {}, head.map((c) => {
        const [text, cls] = Array.isArray(c) ? c : [c, null];
        return h('th', { scope: 'col', class: cls }, text);
      }))),
      h('tbody', {}, rows)));
}

const deviceLink = (id) => h('a', { href: '#/devices/' + enc(id) }, id);
const deploymentLink = (n) => h('a', { href: '#/deployments/' + enc(n) }, n);

let toastTimer = null;
function toast(message, error) {
  const t = document.getElementById('toast');
  t.textContent = message;
  t.className = 'toast' + (error ? ' error' : '');
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, error ? 8000 : 3000);
}

/** Runs an action from a button: disabled while it runs, errors told. */
async function act(button, fn, done) {
  button.disabled = true;
  try {
    const r = await fn();
    if (done) toast(done);
    return r;
  } catch (e) {
    toast(e.message, true);
    return undefined;
  } finally {
    button.disabled = false;
  }
}

// ---- pages ---------------------------------------------------------------
// A page: {nav, title, mount(main) -> promise, changed(ev) -> bool, refresh()}.

function overviewPage() {
  let region;
  async function refresh() {
    const o = await api('/overview');
    const d = o.devices;
    const stat = (n, label, q) => (q === null
      ? h('div', { class: 'stat' }, h('b', {}, n), h('span', {}, label))
      : h('a', { class: 'stat', href: '#/devices' + (q ? '?' + q : '') }, h('b', {}, n), h('span', {}, label)));
    fill(region, 
      h('section', { 'aria-labelledby': 'h-devices' },
        h('h2', { id: 'h-devices' }, 'Devices'),
        h('div', { class: 'cards' },
          stat(d.total, 'total', ''),
          stat(d.online, 'online', 'presence=online'),
          stat(d.offline, 'offline', 'presence=offline'),
          stat(d.unknown, 'never connected', 'presence=unknown'),
          stat(d.failed, 'failing', 'health=failed'),
          stat(d.withConditions, 'with conditions', null))),
      h('section', { 'aria-labelledby': 'h-deps' },
        h('h2', { id: 'h-deps' }, 'Deployments'),
        table(['Name', ['Generation', 'num'], 'Ready', ['Failed', 'num'], 'Updated'],
          o.deployments.map((x) => h('tr', { 'data-deployment': x.name },
            h('td', {}, deploymentLink(x.name)),
            h('td', { class: 'num' }, x.generation),
            h('td', {}, progress(x.healthy, x.targeted, x.failed)),
            h('td', { class: 'num' }, x.failed),
            h('td', {}, when(x.updatedMs)))),
          'No deployments yet: apply one with edgectl apply -f.')),
      h('section', { 'aria-labelledby': 'h-rollouts' },
        h('h2', { id: 'h-rollouts' }, 'Rollouts in progress'),
        o.rollouts.length ? o.rollouts.map((r) => h('div', { class: 'card' },
          h('h3', {}, deploymentLink(r.name), ' ', badge(r.state), ' ',
            h('span', { class: 'muted' }, `generation ${r.fromGeneration ?? '—'} → ${r.generation}`)),
          r.reason ? h('p', {}, r.reason) : null,
          waveTable(r))) : h('p', { class: 'muted' }, 'None.')),
      h('section', { 'aria-labelledby': 'h-fail' },
        h('h2', { id: 'h-fail' }, 'Recent failures'),
        table(['Device', 'Workload', 'Sync', 'Health', 'Message', 'When'],
          o.failures.map((w) => h('tr', {},
            h('td', {}, deviceLink(w.deviceId)), h('td', {}, w.name),
            h('td', {}, badge(w.sync)), h('td', {}, badge(w.health)),
            h('td', {}, w.message || ''), h('td', {}, when(w.updatedMs)))),
          'No workload is failing.')),
      h('section', { 'aria-labelledby': 'h-events' },
        h('h2', { id: 'h-events' }, 'Recent events'),
        eventTable(o.events, true)));
  }
  return {
    nav: 'overview', title: 'Overview',
    async mount(m) {
      region = h('div');
      fill(m, h('h1', {}, 'Overview'), region);
      await refresh();
    },
    changed: () => true,
    refresh,
    every: 2000,
  };
}

function eventTable(events, withDevice) {
  return table([...(withDevice ? ['Device'] : []), 'Kind', 'Workload', 'Payload', 'Received'],
    events.map((e) => h('tr', {},
      withDevice ? h('td', {}, deviceLink(e.deviceId)) : null,
      h('td', {}, e.kind), h('td', {}, e.workload || ''),
      h('td', { class: 'mono' }, JSON.stringify(e.payload).slice(0, 160)),
      h('td', {}, when(e.receivedAtMs)))),
    'No events.');
}

function waveTable(r) {
  return table(['Wave', 'Healthy', ['Failed', 'num'], ['Offline', 'num'], 'Started', 'Done'],
    r.waves.map((w, i) => h('tr', { 'data-wave': w.name },
      h('th', { scope: 'row' }, w.name, i === r.currentWave && r.state !== 'Complete' ? ' (current)' : ''),
      h('td', {}, progress(w.healthy, w.targeted, w.failed, `Wave ${w.name} healthy`)),
      h('td', { class: 'num' }, w.failed),
      h('td', { class: 'num' }, w.offline),
      h('td', {}, when(w.startedMs)),
      h('td', {}, when(w.completedMs)))));
}

const FILTERS = ['selector', 'presence', 'health', 'deployment', 'generation', 'commit'];

function devicesPage(_, params) {
  let region;
  const visible = new Set();
  const field = (name, label, input) => h('div', {}, h('label', { for: 'f-' + name }, label), input);
  const select = (name, options) => h('select', { id: 'f-' + name, name },
    options.map((o) => h('option', { value: o, selected: params.get(name) === o }, o || 'any')));
  const text = (name, placeholder) => h('input', { id: 'f-' + name, name, value: params.get(name) || '', placeholder });

  async function refresh() {
    const q = new URLSearchParams();
    for (const f of FILTERS) if (params.get(f)) q.set(f, params.get(f));
    q.set('limit', PAGE_SIZE);
    if (params.get('continue')) q.set('continue', params.get('continue'));
    let page;
    try {
      page = await api('/devices?' + q);
    } catch (e) {
      if (e.status !== 400) throw e;
      fill(region, h('p', { class: 'alert', role: 'alert' }, e.message));
      return;
    }
    visible.clear();
    page.items.forEach((d) => visible.add(d.id));
    const next = new URLSearchParams(params);
    if (page.continue) next.set('continue', page.continue);
    const first = new URLSearchParams(params);
    first.delete('continue');
    fill(region, 
      table(['Device', 'Presence', 'Health', 'Labels', ['Revision', 'hide-sm'], ['CPU', 'num'], ['Memory', 'num'], 'Last seen', ['Agent', 'hide-sm']],
        page.items.map((d) => {
          const hb = d.heartbeat || {};
          const inSync = d.desiredRevision !== null && d.desiredRevision !== undefined && d.appliedRevision === d.desiredRevision;
          return h('tr', { 'data-device': d.id },
            h('td', {}, deviceLink(d.id)),
            h('td', {}, badge(d.presence)),
            h('td', {}, badge(d.health)),
            h('td', {}, Object.entries(d.labels).map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`))),
            h('td', { class: 'hide-sm mono' }, `${d.appliedRevision ?? '—'}/${d.desiredRevision ?? '—'}`, inSync ? '' : ' ', inSync ? null : badge('behind', 'warn')),
            h('td', { class: 'num' }, hb.cpuPercent !== undefined ? hb.cpuPercent.toFixed(0) + ' %' : '—'),
            h('td', { class: 'num' }, pct(hb.memUsedBytes, hb.memTotalBytes)),
            h('td', {}, when(d.lastSeenMs)),
            h('td', { class: 'hide-sm' }, d.agentVersion || '—'));
        }),
        'No device matches.'),
      h('nav', { class: 'pager', 'aria-label': 'Pages' },
        params.get('continue') ? h('a', { href: '#/devices?' + first }, 'First page') : null,
        page.continue ? h('a', { href: '#/devices?' + next, rel: 'next' }, 'Next page') : null,
        h('span', { class: 'muted' }, `${page.items.length} shown`)));
  }
  return {
    nav: 'devices', title: 'Devices',
    async mount(m) {
      region = h('div', { 'aria-live': 'off' });
      const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter devices' },
        field('selector', 'Label selector', text('selector', 'site=plant-3,ring!=canary')),
        field('presence', 'Presence', select('presence', ['', 'online', 'offline', 'unknown'])),
        field('health', 'Health', select('health', ['', 'healthy', 'progressing', 'failed', 'none'])),
        field('deployment', 'Runs deployment', text('deployment', 'name')),
        field('generation', 'at generation', h('input', { id: 'f-generation', name: 'generation', type: 'number', min: 1, value: params.get('generation') || '' })),
        field('commit', 'or Git commit', text('commit', 'sha prefix')),
        h('div', { class: 'actions' },
          h('button', { type: 'submit' }, 'Apply'),
          h('a', { href: '#/devices' }, 'Clear')));
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        const q = new URLSearchParams();
        for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
        location.hash = '#/devices' + (q.toString() ? '?' + q : '');
      });
      fill(m, h('h1', {}, 'Devices'), form, region);
      await refresh();
    },
    changed: (ev) => ev.devices === 'many' || ev.devices.some((id) => visible.has(id)),
    refresh,
    every: 1000,
  };
}

/** A 24-hour line chart of one figure, drawn as SVG with its summary as its name. */
function chart(title, unit, points, pick, max) {
  const vals = points.map((p) => [p.atMs, pick(p)]).filter(([, v]) => v !== null && v !== undefined);
  if (!vals.length) {
    return h('figure', {}, h('figcaption', {}, title), h('p', { class: 'muted' }, 'No readings in the last 24 hours.'));
  }
  const now = Date.now();
  const from = now - 24 * 3600 * 1000;
  const top = max || Math.max(1, ...vals.map(([, v]) => v)) * 1.1;
  const x = (t) => (((t - from) / (now - from)) * 290 + 5).toFixed(1);
  const y = (v) => (95 - (Math.min(v, top) / top) * 85).toFixed(1);
  const latest = vals[vals.length - 1][1];
  const peak = Math.max(...vals.map(([, v]) => v));
  const summary = `${title} over the last 24 hours: now ${latest.toFixed(0)}${unit}, peak ${peak.toFixed(0)}${unit}`;
  return h('figure', {},
    h('figcaption', {}, title, ' ', h('span', { class: 'muted' }, `now ${latest.toFixed(0)}${unit}, peak ${peak.toFixed(0)}${unit}`)),
    s('svg', { class: 'chart', viewBox: '0 0 300 110', role: 'img', 'aria-label': summary, preserveAspectRatio: 'none' },
      s('line', { class: 'axis', x1: 5, y1: 95, x2: 295, y2: 95 }),
      s('polyline', { class: 'line', points: vals.map(([t, v]) => `${x(t)},${y(v)}`).join(' ') }),
      s('circle', { class: 'dot', cx: x(vals[vals.length - 1][0]), cy: y(latest), r: 2.5 }),
      s('text', { x: 5, y: 107 }, '24 h ago'),
      s('text', { x: 270, y: 107 }, 'now'),
      s('text', { x: 5, y: 9 }, `${top.toFixed(0)}${unit}`)));
}

function devicePage([id]) {
  let status, labelsBox, details;
  let dirty = false;

  function labelsEditor(labels) {
    const removed = new Set();
    const values = new Map(Object.entries(labels));
    const list = h('ul');
    const draw = () => fill(list, ...[...values.entries()].map(([k, v]) => {
      const input = h('input', { id: 'label-' + k, value: v, 'aria-label': `Value of label ${k}` });
      input.addEventListener('input', () => { values.set(k, input.value); dirty = true; });
      const gone = removed.has(k);
      return h('li', {},
        h('code', { style: gone ? 'text-decoration:line-through' : null }, k), '=', input,
        h('button', {
          type: 'button', class: 'secondary', 'aria-pressed': gone ? 'true' : 'false',
          onclick: () => { if (gone) removed.delete(k); else removed.add(k); dirty = true; draw(); },
        }, gone ? `Keep ${k}` : `Remove ${k}`));
    }));
    draw();
    const newKey = h('input', { id: 'new-label-key', placeholder: 'key', oninput: () => { dirty = true; } });
    const newValue = h('input', { id: 'new-label-value', placeholder: 'value', oninput: () => { dirty = true; } });
    const add = h('button', {
      type: 'button', class: 'secondary',
      onclick: () => {
        if (!newKey.value) { newKey.focus(); return; }
        values.set(newKey.value.trim(), newValue.value.trim());
        removed.delete(newKey.value.trim());
        newKey.value = ''; newValue.value = '';
        dirty = true; draw(); newKey.focus();
      },
    }, 'Add');
    const save = h('button', { type: 'submit' }, 'Save labels');
    const form = h('form', { class: 'labels-edit card', 'aria-labelledby': 'h-labels' },
      h('h2', { id: 'h-labels' }, 'Labels'), list,
      h('div', { class: 'labels-add' },
        h('div', {}, h('label', { for: 'new-label-key' }, 'New label key'), newKey),
        h('div', {}, h('label', { for: 'new-label-value' }, 'Value'), newValue), add),
      h('div', { class: 'actions' }, save));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const patch = {};
      for (const [k, v] of values) if (!removed.has(k) && labels[k] !== v) patch[k] = v;
      for (const k of removed) if (k in labels) patch[k] = null;
      if (!Object.keys(patch).length) { toast('No label changed.'); return; }
      const d = await act(save, () => api('/devices/' + enc(id), { method: 'PATCH', body: { labels: patch } }), 'Labels saved.');
      if (d) { dirty = false; fill(labelsBox, labelsEditor(d.labels)); }
    });
    return form;
  }

  async function refresh() {
    const [d, hist, events] = await Promise.all([
      api('/devices/' + enc(id)),
      api('/devices/' + enc(id) + '/history'),
      api('/devices/' + enc(id) + '/events?newest=true&limit=20'),
    ]);
    const hb = d.heartbeat || {};
    const inSync = d.desiredRevision != null && d.appliedRevision === d.desiredRevision;
    fill(status, badge(d.presence), ' ', badge(d.health));
    // Not while the operator is editing: a redraw would lose the typing.
    if (!dirty && !labelsBox.contains(document.activeElement)) fill(labelsBox, labelsEditor(d.labels));
    const desired = new Set(d.desiredWorkloads);
    const reported = new Map(d.workloads.map((w) => [w.name, w]));
    const names = [...new Set([...d.desiredWorkloads, ...d.workloads.map((w) => w.name)])].sort();
    fill(details, 
      h('div', { class: 'grid2' },
        h('section', { class: 'card', 'aria-labelledby': 'h-state' },
          h('h2', { id: 'h-state' }, 'State'),
          h('dl', { class: 'kv' },
            h('dt', {}, 'Presence'), h('dd', {}, d.presence, ', last seen ', when(d.lastSeenMs)),
            h('dt', {}, 'Desired revision'), h('dd', { class: 'mono' }, d.desiredRevision ?? '—'),
            h('dt', {}, 'Applied revision'), h('dd', { class: 'mono' }, d.appliedRevision ?? '—', ' ', inSync ? badge('in sync', 'ok') : badge('behind', 'warn')),
            h('dt', {}, 'Last report'), h('dd', {}, when(d.lastReportMs), d.message ? ': ' + d.message : ''),
            h('dt', {}, 'Agent'), h('dd', {}, d.agentVersion || '—', d.arch ? ` (${d.arch})` : ''),
            h('dt', {}, 'Host'), h('dd', {}, d.hostname || '—'),
            h('dt', {}, 'K3s'), h('dd', {}, d.k3sVersion || '—'))),
        h('section', { class: 'card', 'aria-labelledby': 'h-res' },
          h('h2', { id: 'h-res' }, 'Resources now'),
          h('dl', { class: 'kv' },
            h('dt', {}, 'CPU'), h('dd', {}, hb.cpuPercent !== undefined ? hb.cpuPercent.toFixed(0) + ' %' : '—'),
            h('dt', {}, 'Memory'), h('dd', {}, `${bytes(hb.memUsedBytes)} of ${bytes(hb.memTotalBytes)}`),
            h('dt', {}, 'Disk'), h('dd', {}, `${bytes(hb.diskUsedBytes)} of ${bytes(hb.diskTotalBytes)}`, hb.diskPressure ? ' ' : '', hb.diskPressure ? badge('pressure', 'bad') : null),
            h('dt', {}, 'Temperature'), h('dd', {}, hb.temperatureC !== undefined ? hb.temperatureC.toFixed(1) + ' °C' : '—'),
            h('dt', {}, 'Agent memory'), h('dd', {}, bytes(hb.agentRssBytes)),
            h('dt', {}, 'Outbox'), h('dd', {}, hb.outboxDepth ?? '—', hb.outboxDropped ? `, ${hb.outboxDropped} dropped` : '')))),
      d.conditions && d.conditions.length ? h('section', { 'aria-labelledby': 'h-cond' },
        h('h2', { id: 'h-cond' }, 'Conditions'),
        table(['Type', 'Message', 'Since'], d.conditions.map((c) => h('tr', {},
          h('td', {}, badge(c.type, 'bad')), h('td', {}, c.message), h('td', {}, when(c.sinceMs)))))) : null,
      h('section', { 'aria-labelledby': 'h-work' },
        h('h2', { id: 'h-work' }, 'Workloads'),
        table(['Workload', 'Desired', 'Sync', 'Health', 'Message', 'Updated'],
          names.map((n) => {
            const w = reported.get(n);
            return h('tr', { 'data-workload': n },
              h('td', { class: 'mono' }, n),
              h('td', {}, desired.has(n) ? 'yes' : 'no (removed)'),
              h('td', {}, w ? badge(w.sync) : '—'),
              h('td', {}, w ? badge(w.health) : '—'),
              h('td', {}, w && w.message ? w.message : ''),
              h('td', {}, w ? when(w.updatedMs) : '—'));
          }), 'No workloads.')),
      h('section', { 'aria-labelledby': 'h-charts' },
        h('h2', { id: 'h-charts' }, 'Last 24 hours'),
        h('p', { class: 'muted' }, `One point per ${hist.intervalSecs / 60} minutes (the average of its heartbeats).`),
        h('div', { class: 'charts' },
          chart('CPU', ' %', hist.points, (p) => p.cpuPercent, 100),
          chart('Memory', ' %', hist.points, (p) => p.memPercent, 100),
          chart('Disk', ' %', hist.points, (p) => p.diskPercent, 100),
          chart('Temperature', ' °C', hist.points, (p) => p.temperatureC, null))),
      h('section', { 'aria-labelledby': 'h-ev' },
        h('h2', { id: 'h-ev' }, 'Newest events'),
        eventTable(events.items, false)));
  }
  return {
    nav: 'devices', title: id,
    async mount(m) {
      status = h('span');
      labelsBox = h('div');
      details = h('div');
      fill(m, h('p', {}, h('a', { href: '#/devices' }, '← Devices')),
        h('h1', {}, h('span', { class: 'mono' }, id), ' ', status), labelsBox, details);
      await refresh();
    },
    changed: (ev) => ev.devices === 'many' || ev.devices.includes(id),
    refresh,
    every: 1000,
  };
}

function deploymentsPage() {
  let region;
  async function refresh() {
    const list = await api('/deployments');
    fill(region, table(['Name', ['Generation', 'num'], ['Workloads', 'num'], 'Ready', ['Failed', 'num'], 'Source', 'Updated'],
      list.items.map((x) => h('tr', { 'data-deployment': x.name },
        h('td', {}, deploymentLink(x.name)),
        h('td', { class: 'num' }, x.generation),
        h('td', { class: 'num' }, x.workloads),
        h('td', {}, progress(x.healthy, x.targeted, x.failed)),
        h('td', { class: 'num' }, x.failed),
        h('td', {}, x.source ? h('a', { href: '#/sources' }, `${x.source.name}@${x.source.commit.slice(0, 7)}`) : '—'),
        h('td', {}, when(x.updatedMs)))),
      'No deployments yet: apply one with edgectl apply -f, or add a Git source.'));
  }
  return {
    nav: 'deployments', title: 'Deployments',
    async mount(m) {
      region = h('div');
      fill(m, h('h1', {}, 'Deployments'), region);
      await refresh();
    },
    changed: (ev) => ev.deployments || ev.rollouts || ev.devices === 'many' || ev.devices.length > 0,
    refresh,
    every: 1500,
  };
}

/** Lines of `a` and `b` with what was removed and added (longest common subsequence). */
function diffLines(a, b) {
  const n = a.length, m = b.length;
  const L = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) {
    L[i][j] = a[i] === b[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { out.push([' ', a[i]]); i++; j++; } else if (L[i + 1][j] >= L[i][j + 1]) { out.push(['-', a[i++]]); } else { out.push(['+', b[j++]]); }
  }
  while (i < n) out.push(['-', a[i++]]);
  while (j < m) out.push(['+', b[j++]]);
  return out;
}

function deploymentPage([name]) {
  let summary, rollout, history;
  let fromGen = null, toGen = null;

  function rolloutView(r) {
    if (!r) {
      return h('p', { class: 'muted' }, 'No rollout: this deployment has no rollout strategy, or no new generation since it got one.');
    }
    const button = (label, action, enabled, cls) => {
      const b = h('button', { type: 'button', class: cls, disabled: !enabled, 'data-action': action }, label);
      b.addEventListener('click', async () => {
        if (action === 'abort' && !confirm(`Abort the rollout of ${name}? Every device goes back to generation ${r.fromGeneration}.`)) return;
        const next = await act(b, () => api(`/deployments/${enc(name)}/rollout/${action}`, { method: 'POST' }), `Rollout ${action === 'pause' ? 'paused' : action === 'resume' ? 'resumed' : 'aborted'}.`);
        if (next) fill(rollout, rolloutView(next));
      });
      return b;
    };
    const open = r.state === 'Progressing' || r.state === 'Paused';
    return h('div', {},
      h('p', {}, 'State ', h('span', { 'data-testid': 'rollout-state' }, badge(r.state)),
        ` · generation ${r.fromGeneration ?? '—'} → ${r.generation} · started `, when(r.startedMs)),
      r.reason ? h('p', {}, r.reason) : null,
      h('div', { class: 'actions' },
        button('Pause', 'pause', r.state === 'Progressing', 'secondary'),
        button('Resume', 'resume', r.state === 'Paused', 'secondary'),
        button('Abort', 'abort', open, 'danger')),
      waveTable(r),
      r.events.length ? h('details', {}, h('summary', {}, 'Rollout events'),
        h('ul', {}, r.events.map((e) => h('li', {}, when(e.atMs), ' ', e.message)))) : null);
  }

  function historyView(gens, current) {
    if (!gens.length) return h('p', { class: 'muted' }, 'No history.');
    toGen = toGen ?? gens[0].generation;
    fromGen = fromGen ?? (gens[1] ? gens[1].generation : gens[0].generation);
    const byGen = new Map(gens.map((g) => [g.generation, g]));
    const diffBox = h('div');
    const drawDiff = () => {
      const a = JSON.stringify(byGen.get(fromGen).spec, null, 2).split('\n');
      const b = JSON.stringify(byGen.get(toGen).spec, null, 2).split('\n');
      const lines = diffLines(a, b);
      const changed = lines.filter(([t]) => t !== ' ').length;
      fill(diffBox, 
        h('h3', {}, `Generation ${fromGen} → ${toGen}: `, changed ? `${changed} lines changed` : 'no difference'),
        h('pre', { class: 'diff', tabindex: 0, 'aria-label': `Diff of generation ${fromGen} and ${toGen}` },
          lines.map(([t, l]) => h('span', { class: t === '+' ? 'add' : t === '-' ? 'del' : null }, `${t} ${l}\n`))));
    };
    const radio = (group, g) => {
      const r = h('input', { type: 'radio', name: group, value: g, checked: (group === 'from' ? fromGen : toGen) === g, 'aria-label': `${group === 'from' ? 'Compare from' : 'Compare to'} generation ${g}`, style: 'width:auto' });
      r.addEventListener('change', () => { if (group === 'from') fromGen = g; else toGen = g; drawDiff(); });
      return r;
    };
    const rollbackTo = h('select', { id: 'rollback-to' },
      gens.filter((g) => g.generation !== current).map((g) => h('option', { value: g.generation }, `generation ${g.generation}`)));
    const rollback = h('button', { type: 'button', class: 'danger', disabled: gens.length < 2 }, 'Roll back');
    rollback.addEventListener('click', async () => {
      const to = Number(rollbackTo.value);
      if (!confirm(`Roll ${name} back to generation ${to}? It becomes a new generation.`)) return;
      const r = await act(rollback, () => api(`/deployments/${enc(name)}/rollback`, { method: 'POST', body: { toGeneration: to } }), `Rolled back to generation ${to}.`);
      if (r) enqueue(refreshAll);
    });
    drawDiff();
    return h('div', {},
      table(['Generation', 'Created', 'From', 'To'], gens.map((g) => h('tr', {},
        h('th', { scope: 'row' }, g.generation, g.generation === current ? ' (current)' : ''),
        h('td', {}, when(g.createdMs)),
        h('td', {}, radio('from', g.generation)),
        h('td', {}, radio('to', g.generation))))),
      diffBox,
      gens.length > 1 ? h('div', { class: 'actions' },
        h('label', { for: 'rollback-to', style: 'align-self:center' }, 'Roll back to'), rollbackTo, rollback) : null);
  }

  async function refresh() {
    const [list, r] = await Promise.all([
      api('/deployments'),
      api(`/deployments/${enc(name)}/rollout`).catch((e) => { if (e.status === 404) return null; throw e; }),
    ]);
    const x = list.items.find((i) => i.name === name);
    if (!x) {
      fill(summary, h('p', { class: 'alert', role: 'alert' }, `Deployment ${name} does not exist (any more).`));
      fill(rollout);
      return null;
    }
    fill(summary, 
      h('p', { class: 'progress' },
        h('strong', { 'data-testid': 'ready' }, `Ready ${x.healthy}/${x.targeted}`),
        progress(x.healthy, x.targeted, x.failed)),
      h('dl', { class: 'kv' },
        h('dt', {}, 'Generation'), h('dd', {}, x.generation),
        h('dt', {}, 'In sync'), h('dd', {}, `${x.inSync}/${x.targeted}`),
        h('dt', {}, 'Failed'), h('dd', {}, x.failed),
        h('dt', {}, 'Source'), h('dd', {}, x.source ? `${x.source.name} @ ${x.source.commit}` : 'applied through the API'),
        h('dt', {}, 'Devices'), h('dd', {},
          h('a', { href: `#/devices?deployment=${enc(name)}&generation=${x.generation}` }, `running generation ${x.generation}`), ' · ',
          h('a', { href: `#/devices?deployment=${enc(name)}&health=failed` }, 'failing'))));
    fill(rollout, rolloutView(r));
    return x;
  }

  // The history is read again when the generation changed.
  let shownGeneration = null;
  async function refreshAll() {
    const x = await refresh();
    if (!x || x.generation === shownGeneration) return;
    const gens = await api(`/deployments/${enc(name)}/history`);
    shownGeneration = x.generation;
    fromGen = null;
    toGen = null;
    fill(history, historyView(gens.items, x.generation));
  }

  return {
    nav: 'deployments', title: name,
    async mount(m) {
      summary = h('div');
      rollout = h('div');
      history = h('div');
      fill(m, h('p', {}, h('a', { href: '#/deployments' }, '← Deployments')),
        h('h1', {}, name), summary,
        h('section', { 'aria-labelledby': 'h-rollout' }, h('h2', { id: 'h-rollout' }, 'Rollout'), rollout),
        h('section', { 'aria-labelledby': 'h-history' }, h('h2', { id: 'h-history' }, 'History'), history));
      await refreshAll();
    },
    changed: (ev) => ev.deployments || ev.rollouts || ev.devices === 'many' || ev.devices.length > 0,
    refresh: refreshAll,
    every: 1000,
  };
}

function modelsPage() {
  let region;
  async function refresh() {
    const [models, releases] = await Promise.all([api('/models'), api('/agent-releases')]);
    fill(region, 
      h('h2', {}, 'Models'),
      table(['Name', ['Size', 'num'], 'sha256', 'Uploaded'], models.items.map((x) => h('tr', {},
        h('td', {}, x.name), h('td', { class: 'num' }, bytes(x.size)),
        h('td', { class: 'mono', title: x.sha256 }, x.sha256.slice(0, 16) + '…'), h('td', {}, when(x.createdMs)))),
      'No models: push one with edgectl models push.'),
      h('h2', {}, 'Agent releases'),
      table(['Version', 'Arch', ['Size', 'num'], 'sha256', 'Uploaded'], releases.items.map((x) => h('tr', {},
        h('td', {}, x.version), h('td', {}, x.arch), h('td', { class: 'num' }, bytes(x.size)),
        h('td', { class: 'mono', title: x.sha256 }, x.sha256.slice(0, 16) + '…'), h('td', {}, when(x.createdMs)))),
      'No agent releases: push one with edgectl agents push.'));
  }
  return {
    nav: 'models', title: 'Models',
    async mount(m) { region = h('div'); fill(m, h('h1', {}, 'Models'), region); await refresh(); },
    changed: (ev) => ev.models, refresh, every: 1000,
  };
}

function sourcesPage() {
  let region;
  async function refresh() {
    const list = await api('/sources');
    const ref = (r) => Object.entries(r || {}).map(([k, v]) => `${k} ${v}`).join(', ');
    fill(region, table(['Name', 'Repository', 'Ref', 'Applied', 'Last fetch', 'Problem', 'Deployments'],
      list.items.map((x) => h('tr', { 'data-source': x.name },
        h('td', {}, x.name),
        h('td', { class: 'mono' }, x.spec.url),
        h('td', {}, ref(x.spec.ref)),
        h('td', { class: 'mono' }, x.appliedCommit ? x.appliedCommit.slice(0, 10) : '—', ' ', when(x.appliedMs)),
        h('td', {}, when(x.lastFetchMs)),
        h('td', {}, x.failure ? [badge(x.failure.stage, 'bad'), ' ', x.failure.message,
          x.failure.file ? ` (${x.failure.file}${x.failure.line ? ':' + x.failure.line : ''})` : ''] : badge('ok', 'ok')),
        h('td', {}, x.deployments.map((d) => [deploymentLink(d), ' '])))),
      'No Git sources: add one with edgectl apply -f (kind GitRepo).'));
  }
  return {
    nav: 'sources', title: 'Sources',
    async mount(m) { region = h('div'); fill(m, h('h1', {}, 'Sources'), region); await refresh(); },
    changed: (ev) => ev.sources || ev.deployments, refresh, every: 1000,
  };
}

// ---- routing, live updates -----------------------------------------------

const ROUTES = [
  [/^\/(overview)?$/, overviewPage],
  [/^\/devices$/, devicesPage],
  [/^\/devices\/([^/]+)$/, devicePage],
  [/^\/deployments$/, deploymentsPage],
  [/^\/deployments\/([^/]+)$/, deploymentPage],
  [/^\/models$/, modelsPage],
  [/^\/sources$/, sourcesPage],
];

let page = null;
let generation = 0;
let routed = false;

function notFound() {
  return {
    nav: null, title: 'Not found',
    async mount(m) { fill(m, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/overview' }, 'Overview'))); },
    changed: () => false, refresh: async () => {},
  };
}

// Drawing is one at a time: a page's first draw and its redraws run in
// turn, so an older answer never overwrites a newer one.
let queue = Promise.resolve();
function enqueue(fn) {
  queue = queue.then(fn, fn);
  return queue;
}

function route() {
  const raw = location.hash.slice(1) || '/overview';
  const [path, query] = raw.split('?');
  const params = new URLSearchParams(query || '');
  let next = notFound();
  for (const [re, make] of ROUTES) {
    const m = path.match(re);
    if (m) { next = make(m.slice(1).map((x) => (x === undefined ? x : decodeURIComponent(x))), params); break; }
  }
  const mine = ++generation;
  page = next;
  stale = null;
  document.title = `${next.title} · edgefleet`;
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === next.nav) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  return enqueue(async () => {
    if (mine !== generation) return;
    try {
      await next.mount(main);
    } catch (e) {
      if (mine === generation) fill(main, h('h1', {}, next.title), h('p', { class: 'alert', role: 'alert' }, e.message));
    }
    if (mine !== generation) return;
    lastDraw = Date.now();
    performance.mark('ef-ready:' + (next.nav || 'none'));
    document.body.dataset.ready = next.nav || 'none';
    // After a link, keyboard and screen-reader users continue at the new
    // content; a page just loaded starts at the top (the skip link).
    if (routed) main.focus({ preventScroll: true });
    routed = true;
  });
}

// A change event marks the page stale; it redraws at most once per
// `every` ms.
let stale = null;
let timer = null;
let lastDraw = 0;

function onChange(ev) {
  if (!page || !page.changed(ev)) return;
  stale = stale ? merge(stale, ev) : ev;
  schedule();
}

function merge(a, b) {
  const devices = a.devices === 'many' || b.devices === 'many' ? 'many' : [...a.devices, ...b.devices];
  return { devices, deployments: a.deployments || b.deployments, rollouts: a.rollouts || b.rollouts, sources: a.sources || b.sources, models: a.models || b.models };
}

function schedule() {
  if (timer || !stale) return;
  const wait = Math.max(0, lastDraw + (page.every || 1000) - Date.now());
  timer = setTimeout(() => enqueue(async () => {
    timer = null;
    const p = page;
    if (!stale) return;
    stale = null;
    try {
      await p.refresh();
      document.body.dataset.refreshed = String(Date.now());
    } catch (e) {
      if (e.status !== 401) toast(e.message, true);
    } finally {
      lastDraw = Date.now();
      schedule();
    }
  }), wait);
}

function live() {
  const badgeEl = document.getElementById('live');
  const es = new EventSource('/ui/events');
  es.onopen = () => { badgeEl.textContent = 'Live'; badgeEl.className = 'live on'; };
  es.addEventListener('change', (m) => onChange(JSON.parse(m.data)));
  es.onerror = () => {
    badgeEl.textContent = 'Reconnecting…';
    badgeEl.className = 'live off';
    if (es.readyState === EventSource.CLOSED) {
      // Refused (signed out, hub restarted): find out which, then retry.
      api('/overview').catch(() => {});
      setTimeout(live, 5000);
    }
  };
}

window.addEventListener('hashchange', route);
route();
live();
