// incidentd NOC console: a live incident board fed by Server-Sent Events, and the detail of
// one incident (timeline, member alerts, topology, actions). Plain modules, no build step.
//
// Storm safety: the board and the detail lists are virtualized and paged by the server;
// stream events are queued and applied at most FLUSH_MS apart, and refetches of the visible
// page are throttled further, so a storm of facts costs a few renders a second.

import { VirtualList } from './vlist.js';
import { draw as drawTopology } from './topology.js';

const FLUSH_MS = 250;
const REFETCH_MS = 1000;
const TOPOLOGY_MS = 3000;
const NEW_FOR_MS = 60_000;
const PRIORITIES = ['P1', 'P2', 'P3', 'P4', 'P5'];

const $ = (id) => document.getElementById(id);
const loadedAt = Date.now();

const state = {
  seq: 0,
  known: new Set(), // incident ids seen
  fresh: new Map(), // id -> when it appeared live (highlighted)
  queue: [], // stream events waiting for the next flush
  flushTimer: 0,
  lastRefetch: 0,
  refetchTimer: 0,
  detail: null, // summary of the incident shown
  detailDirty: false,
  lastTopology: 0,
  pendingResolve: 0,
  source: null,
};

// ---------------------------------------------------------------------------------------------
// Helpers

async function api(path, options = {}) {
  const res = await fetch(path, {
    ...options,
    headers: { accept: 'application/json', ...(options.body ? { 'content-type': 'application/json' } : {}) },
  });
  const text = await res.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { error: text };
  }
  if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
  return body;
}

function node(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function age(iso) {
  const ms = Date.now() - Date.parse(iso);
  if (!Number.isFinite(ms)) return '';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d`;
}

function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { hour12: false });
}

function toast(message, error = false) {
  const t = $('toast');
  t.textContent = message;
  t.classList.toggle('error', error);
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), error ? 6000 : 3000);
}

function actor() {
  return $('actor').value.trim() || 'noc-operator';
}

// ---------------------------------------------------------------------------------------------
// Filters, counts and the board

function filters() {
  const p = new URLSearchParams({ view: 'summary' });
  p.set('state', $('f-state').value);
  p.set('sort', $('f-sort').value);
  for (const [key, id] of [['priority', 'f-priority'], ['service', 'f-service'], ['owner_group', 'f-owner']]) {
    if ($(id).value) p.set(key, $(id).value);
  }
  const q = $('f-q').value.trim();
  if (q) p.set('q', q);
  return p;
}

function saveFilters() {
  const f = {};
  for (const id of ['f-state', 'f-sort', 'f-priority', 'f-service', 'f-owner']) f[id] = $(id).value;
  localStorage.setItem('incidentd.filters', JSON.stringify(f));
}

function restoreFilters() {
  try {
    const f = JSON.parse(localStorage.getItem('incidentd.filters') || '{}');
    for (const [id, v] of Object.entries(f)) {
      const sel = $(id);
      if (!sel) continue;
      if (![...sel.options].some((o) => o.value === v)) sel.append(new Option(v, v));
      sel.value = v;
    }
  } catch {
    /* a bad saved value: defaults */
  }
}

const board = new VirtualList($('incident-list'), {
  rowHeight: 56,
  pageSize: 100,
  key: (inc) => inc.id,
  fetchPage: async (offset, limit) => {
    const p = filters();
    p.set('offset', offset);
    p.set('limit', limit);
    const page = await api(`/api/v1/incidents?${p}`);
    for (const inc of page.items) state.known.add(inc.id);
    return page;
  },
  renderRow: renderIncidentRow,
  onActivate: (inc) => openDetail(inc.id),
  onTotal: (total) => {
    $('list-status').textContent = total === 0 ? 'No incident matches these filters.' : `${total} incident${total === 1 ? '' : 's'}`;
  },
  onError: (e) => toast(`Could not load incidents: ${e.message}`, true),
});

function renderIncidentRow(inc) {
  const row = node('div', `row incident state-${inc.state}`);
  row.id = `row-${inc.id}`;
  const isNew = state.fresh.has(inc.id) && Date.now() - state.fresh.get(inc.id) < NEW_FOR_MS;
  if (isNew) row.classList.add('new');
  if (state.detail && state.detail.id === inc.id) row.classList.add('open');
  row.append(node('span', `prio ${inc.priority}`, inc.priority));
  const main = node('span', 'main');
  const title = node('span', 'title', inc.title);
  const meta = node('span', 'meta');
  meta.append(node('span', 'id', inc.id));
  if (isNew) meta.append(node('span', 'new-badge', 'NEW'));
  if (inc.root_cause && inc.root_cause.ci) meta.append(node('span', 'root', `root ${inc.root_cause.ci}`));
  if (inc.impacted_services.length) meta.append(node('span', 'svc', inc.impacted_services.join(', ')));
  if (inc.owner_group) meta.append(node('span', 'owner', inc.owner_group));
  main.append(title, meta);
  row.append(main);
  row.append(node('span', `state ${inc.state}`, inc.state));
  row.append(node('span', 'count', `${inc.firing_count}/${inc.alert_count}`));
  row.append(node('span', 'age', age(inc.opened_at)));
  row.setAttribute('aria-label',
    `${inc.priority} ${inc.id} ${inc.state}${isNew ? ' new' : ''}: ${inc.title}; ${inc.alert_count} alerts, opened ${age(inc.opened_at)} ago`);
  return row;
}

async function loadCounts() {
  let c;
  try {
    c = await api('/api/v1/incidents/summary');
  } catch (e) {
    return;
  }
  const box = $('counts');
  const buttons = PRIORITIES.map((p) => {
    const n = (c.by_state_priority.open[p] || 0) + (c.by_state_priority.acknowledged[p] || 0);
    const b = node('button', `count-btn prio-bg ${p}${n ? '' : ' zero'}`);
    b.type = 'button';
    b.dataset.priority = p;
    b.setAttribute('aria-pressed', String($('f-priority').value === p));
    b.setAttribute('aria-label', `${n} active ${p} incident${n === 1 ? '' : 's'}; show only ${p}`);
    b.append(node('span', 'p', p), node('span', 'n', String(n)));
    return b;
  });
  const total = node('span', 'total', `${c.by_state.open} open · ${c.by_state.acknowledged} ack`);
  box.replaceChildren(...buttons, total);
  fillSelect($('f-service'), c.services);
  fillSelect($('f-owner'), c.owner_groups);
}

function fillSelect(sel, values) {
  const current = sel.value;
  const have = [...sel.options].map((o) => o.value);
  const want = ['', ...values];
  if (current && !want.includes(current)) want.push(current);
  if (have.length === want.length && have.every((v, i) => v === want[i])) return;
  sel.replaceChildren(...want.map((v) => new Option(v || 'any', v)));
  sel.value = current;
}

async function reloadBoard() {
  saveFilters();
  await Promise.all([board.reset(), loadCounts()]);
}

// ---------------------------------------------------------------------------------------------
// Live stream

function connect() {
  if (state.source) state.source.close();
  const es = new EventSource(`/api/v1/stream?after=${state.seq}`);
  state.source = es;
  es.onopen = () => setConn('live', 'Live: updates stream in');
  es.onerror = () => {
    setConn('down', 'Connection lost; reconnecting…');
    // The browser retries dropped connections itself, but gives up on an HTTP error answer
    // (a restart behind a proxy, say): start over from what this page has seen.
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  };
  es.addEventListener('hello', () => setConn('live', 'Live: updates stream in'));
  es.onmessage = (m) => {
    let ev;
    try {
      ev = JSON.parse(m.data);
    } catch {
      return;
    }
    state.seq = Math.max(state.seq, ev.seq);
    state.queue.push(ev);
    if (!state.flushTimer) state.flushTimer = setTimeout(flush, FLUSH_MS);
  };
  es.addEventListener('reset', (m) => {
    // Missed events are gone: refetch what is shown.
    try {
      state.seq = JSON.parse(m.data).head;
    } catch {
      /* keep the old position */
    }
    state.queue = [];
    reloadBoard();
    if (state.detail) refreshDetail(true);
  });
}

function setConn(kind, text) {
  const c = $('conn');
  c.className = `conn ${kind}`;
  c.textContent = text;
}

/** Applies the queued events: at most one render per FLUSH_MS however fast they come. */
function flush() {
  state.flushTimer = 0;
  const events = state.queue;
  state.queue = [];
  if (!events.length) return;
  const latest = new Map();
  let unseen = false;
  for (const ev of events) {
    for (const s of [ev.summary, ev.merged]) {
      // A closed incident has left the server's memory: the refetch below drops its row.
      if (!s || s.state === 'closed') continue;
      latest.set(s.id, s);
      if (!state.known.has(s.id)) {
        state.known.add(s.id);
        unseen = true;
        if (Date.parse(s.opened_at) >= loadedAt - 5000 && s.state !== 'resolved') state.fresh.set(s.id, Date.now());
      }
    }
  }
  board.patch((inc) => latest.get(inc.id) || inc);
  if (state.detail && latest.has(state.detail.id)) {
    state.detail = latest.get(state.detail.id);
    renderDetailHead();
    state.detailDirty = true;
  }
  if (unseen) announce(latest);
  scheduleRefetch();
}

function announce(latest) {
  const fresh = [...latest.values()].filter((s) => state.fresh.has(s.id) && Date.now() - state.fresh.get(s.id) < FLUSH_MS * 4);
  if (fresh.length === 1) toast(`New ${fresh[0].priority} incident ${fresh[0].id}: ${fresh[0].title}`);
  else if (fresh.length > 1) toast(`${fresh.length} new incidents`);
}

/** The board's order and membership may have changed: refetch the visible page, throttled. */
function scheduleRefetch() {
  if (state.refetchTimer) return;
  const wait = Math.max(0, state.lastRefetch + REFETCH_MS - Date.now());
  state.refetchTimer = setTimeout(async () => {
    state.refetchTimer = 0;
    state.lastRefetch = Date.now();
    await Promise.all([board.refresh(), loadCounts()]);
    if (state.detail && state.detailDirty) refreshDetail(false);
  }, wait);
}

// ---------------------------------------------------------------------------------------------
// Detail

const alertList = new VirtualList($('alert-list'), {
  rowHeight: 52,
  pageSize: 200,
  key: (a) => a.fingerprint,
  fetchPage: async (offset, limit) => {
    if (!state.detail) return { total: 0, items: [] };
    const p = new URLSearchParams({ offset, limit, sort: $('alert-sort').value });
    const q = $('alert-q').value.trim();
    if (q) p.set('q', q);
    const page = await api(`/api/v1/incidents/${state.detail.id}/alerts?${p}`);
    $('alert-total').textContent = `(${page.total})`;
    return page;
  },
  renderRow: (a) => {
    const row = node('div', `row alert status-${a.status}`);
    row.id = `row-${a.fingerprint}`;
    row.append(node('span', `sev ${a.severity}`, a.severity));
    const main = node('span', 'main');
    main.append(node('span', 'title', `${a.ci || a.source}: ${a.name}`));
    const meta = node('span', 'meta');
    meta.append(node('span', '', a.source));
    meta.append(node('span', `status ${a.status}`, a.status));
    if (a.flapping) meta.append(node('span', 'flap', 'flapping'));
    if (a.suppressed) meta.append(node('span', 'supp', `suppressed: ${a.suppressed}`));
    if (a.summary) meta.append(node('span', 'summary', a.summary));
    main.append(meta);
    row.append(main);
    row.append(node('span', 'count', `×${a.count}`));
    const seen = node('span', 'seen');
    seen.append(node('span', '', when(a.first_seen)), node('span', 'muted', when(a.last_seen)));
    row.append(seen);
    const reason = node('span', 'reason', a.reason);
    reason.title = a.reason;
    row.append(reason);
    row.setAttribute('aria-label', `${a.severity} ${a.status} ${a.ci || a.source} ${a.name}, ${a.count} times; joined because ${a.reason}`);
    return row;
  },
  onError: (e) => toast(`Could not load alerts: ${e.message}`, true),
});

const timelineList = new VirtualList($('timeline-list'), {
  rowHeight: 48,
  pageSize: 200,
  key: (t) => `t${t.seq}-${t.event}`,
  fetchPage: async (offset, limit) => {
    if (!state.detail) return { total: 0, items: [] };
    const page = await api(`/api/v1/incidents/${state.detail.id}/timeline?sort=desc&offset=${offset}&limit=${limit}`);
    $('timeline-total').textContent = `(${page.total})`;
    return page;
  },
  renderRow: (t) => {
    const row = node('div', `row tl ev-${t.event}`);
    row.id = `row-t${t.seq}-${t.event}`;
    row.append(node('span', 'at', when(t.at)));
    const main = node('span', 'main');
    main.append(node('span', 'event', t.event.replaceAll('_', ' ') + (t.by ? ` · ${t.by}` : '')));
    const text = node('span', 'text', t.text);
    text.title = t.text;
    main.append(text);
    row.append(main);
    row.setAttribute('aria-label', `${when(t.at)} ${t.event.replaceAll('_', ' ')}${t.by ? ` by ${t.by}` : ''}: ${t.text}`);
    return row;
  },
  onError: (e) => toast(`Could not load the timeline: ${e.message}`, true),
});

async function openDetail(id) {
  let inc;
  try {
    inc = await api(`/api/v1/incidents/${encodeURIComponent(id)}?view=summary`);
  } catch (e) {
    toast(`Could not open ${id}: ${e.message}`, true);
    return;
  }
  state.detail = inc;
  if (location.hash !== `#${inc.id}`) history.replaceState(null, '', `#${inc.id}`);
  $('detail').hidden = false;
  document.body.classList.add('has-detail');
  renderDetailHead();
  board.render();
  $('alert-q').value = '';
  $('topology').replaceChildren(node('p', 'muted', 'loading…'));
  await Promise.all([alertList.reset(), timelineList.reset(), loadTopology()]);
  $('d-title').focus({ preventScroll: true });
}

function closeDetail() {
  if (!state.detail) return;
  state.detail = null;
  $('detail').hidden = true;
  document.body.classList.remove('has-detail');
  history.replaceState(null, '', location.pathname);
  board.render();
  $('incident-list').focus();
}

function renderDetailHead() {
  const inc = state.detail;
  if (!inc) return;
  $('d-title').textContent = inc.title;
  const prio = $('d-priority');
  prio.className = `prio ${inc.priority}`;
  prio.textContent = inc.priority;
  $('d-id').textContent = inc.merged_into ? `${inc.id} (merged into ${inc.merged_into})` : inc.id;
  const st = $('d-state');
  st.replaceChildren(node('span', `state ${inc.state}`, inc.state));
  if (inc.acknowledged_by) st.append(node('span', 'muted', ` by ${inc.acknowledged_by}`));
  if (inc.resolved_by && inc.state === 'resolved') st.append(node('span', 'muted', `, resolved by ${inc.resolved_by}`));
  const root = inc.root_cause;
  $('d-root').textContent = root ? `${root.ci || '(no CI)'} — ${root.name}` : 'not determined yet';
  $('d-owner').textContent = inc.owner_group || '—';
  $('d-services').textContent = inc.impacted_services.length ? inc.impacted_services.join(', ') : 'none known';
  $('d-opened').textContent = `${when(inc.opened_at)} (${age(inc.opened_at)} ago)`;
  $('d-updated').textContent = when(inc.updated_at);
  $('d-rule').textContent = `${inc.rule}: ${inc.group_key}`;
  $('btn-ack').disabled = inc.state !== 'open';
  $('btn-resolve').disabled = inc.state === 'resolved';
}

async function loadTopology() {
  if (!state.detail) return;
  state.lastTopology = Date.now();
  const id = state.detail.id;
  try {
    const pic = await api(`/api/v1/incidents/${id}/topology`);
    if (state.detail && state.detail.id === id) drawTopology($('topology'), pic);
  } catch (e) {
    $('topology').replaceChildren(node('p', 'muted', `Topology unavailable: ${e.message}`));
  }
}

async function refreshDetail(full) {
  if (!state.detail) return;
  state.detailDirty = false;
  if (full) {
    try {
      state.detail = await api(`/api/v1/incidents/${state.detail.id}?view=summary`);
      renderDetailHead();
    } catch {
      /* keep what is shown */
    }
  }
  const jobs = [alertList.refresh(), timelineList.refresh()];
  if (full || Date.now() - state.lastTopology > TOPOLOGY_MS) jobs.push(loadTopology());
  await Promise.all(jobs);
}

function target() {
  return state.detail || board.current();
}

async function act(kind) {
  const inc = target();
  if (!inc) return;
  try {
    await api(`/api/v1/incidents/${inc.id}/${kind}`, { method: 'POST', body: JSON.stringify({ by: actor() }) });
    toast(`${inc.id} ${kind === 'ack' ? 'acknowledged' : 'resolved'} by ${actor()}`);
  } catch (e) {
    toast(`Could not ${kind === 'ack' ? 'acknowledge' : 'resolve'} ${inc.id}: ${e.message}`, true);
  }
}

function resolvePressed() {
  const now = Date.now();
  if (now - state.pendingResolve < 2000) {
    state.pendingResolve = 0;
    act('resolve');
  } else {
    state.pendingResolve = now;
    const inc = target();
    if (inc) toast(`Press r again to resolve ${inc.id}`);
  }
}

async function sendComment(e) {
  e.preventDefault();
  const box = $('comment-text');
  const text = box.value.trim();
  if (!state.detail || !text) return;
  try {
    await api(`/api/v1/incidents/${state.detail.id}/comment`, { method: 'POST', body: JSON.stringify({ actor: actor(), text }) });
    box.value = '';
    toast('Comment added');
  } catch (err) {
    toast(`Comment not saved: ${err.message}`, true);
  }
}

// ---------------------------------------------------------------------------------------------
// Wall mode, help, keyboard

function setWall(on) {
  document.body.classList.toggle('wall', on);
  document.documentElement.classList.toggle('wall', on);
  $('wall-toggle').setAttribute('aria-pressed', String(on));
  localStorage.setItem('incidentd.wall', on ? '1' : '');
  board.setRowHeight(on ? 84 : 56);
  alertList.setRowHeight(on ? 76 : 52);
  timelineList.setRowHeight(on ? 70 : 48);
}

function toggleHelp(show) {
  const h = $('help');
  h.hidden = !show;
  if (show) $('help-close').focus();
  else $('incident-list').focus();
}

function typing(e) {
  const t = e.target;
  return t instanceof HTMLElement && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName));
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (!$('help').hidden && e.key === 'Tab') {
    // Modal: focus stays on the dialog's one control.
    e.preventDefault();
    $('help-close').focus();
    return;
  }
  if (e.key === 'Escape') {
    if (!$('help').hidden) toggleHelp(false);
    else if (typing(e)) e.target.blur();
    else closeDetail();
    return;
  }
  if (typing(e)) return;
  if (!$('help').hidden && e.key !== '?') return;
  const inAlerts = e.target === $('alert-list') || e.target === $('timeline-list');
  const handled = {
    '/': () => $('f-q').focus(),
    '?': () => toggleHelp($('help').hidden),
    j: () => board.move(1),
    k: () => board.move(-1),
    ArrowDown: () => (inAlerts ? null : board.move(1)),
    ArrowUp: () => (inAlerts ? null : board.move(-1)),
    Enter: () => {
      const inc = board.current();
      if (inc && !inAlerts) openDetail(inc.id);
    },
    a: () => act('ack'),
    r: resolvePressed,
    c: () => state.detail && $('comment-text').focus(),
    w: () => setWall(!document.body.classList.contains('wall')),
    p: () => {
      $('f-sort').value = $('f-sort').value === 'priority' ? 'newest' : 'priority';
      reloadBoard();
    },
    0: () => setPriority(''),
  }[e.key];
  if (/^[1-5]$/.test(e.key)) {
    e.preventDefault();
    setPriority(`P${e.key}`);
    return;
  }
  if (handled) {
    e.preventDefault();
    handled();
  }
}

function setPriority(p) {
  $('f-priority').value = p;
  reloadBoard();
}

// ---------------------------------------------------------------------------------------------
// Start

function wire() {
  const savedActor = localStorage.getItem('incidentd.actor');
  $('actor').value = savedActor || 'noc-operator';
  $('actor').addEventListener('change', () => localStorage.setItem('incidentd.actor', actor()));
  restoreFilters();
  let searchTimer = 0;
  $('f-q').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(reloadBoard, 200);
  });
  $('filters').addEventListener('submit', (e) => e.preventDefault());
  for (const id of ['f-state', 'f-priority', 'f-service', 'f-owner', 'f-sort']) $(id).addEventListener('change', reloadBoard);
  $('counts').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-priority]');
    if (b) setPriority($('f-priority').value === b.dataset.priority ? '' : b.dataset.priority);
  });
  $('close-detail').addEventListener('click', closeDetail);
  $('btn-ack').addEventListener('click', () => act('ack'));
  $('btn-resolve').addEventListener('click', resolvePressed);
  $('comment-form').addEventListener('submit', sendComment);
  $('wall-toggle').addEventListener('click', () => setWall(!document.body.classList.contains('wall')));
  $('help-toggle').addEventListener('click', () => toggleHelp(true));
  $('help-close').addEventListener('click', () => toggleHelp(false));
  $('help').addEventListener('click', (e) => e.target === $('help') && toggleHelp(false));
  let alertTimer = 0;
  $('alert-q').addEventListener('input', () => {
    clearTimeout(alertTimer);
    alertTimer = setTimeout(() => alertList.reset(), 200);
  });
  $('alert-sort').addEventListener('change', () => alertList.reset());
  document.addEventListener('keydown', onKey);
  // Ages tick on screen; new-incident highlights fade.
  setInterval(() => board.render(), 15_000);
}

async function main() {
  wire();
  if (localStorage.getItem('incidentd.wall')) setWall(true);
  // The list's `seq` is where the stream resumes: nothing falls between load and live.
  const p = filters();
  p.set('limit', '1');
  try {
    const first = await api(`/api/v1/incidents?${p}`);
    state.seq = first.seq || 0;
  } catch (e) {
    toast(`incidentd is not answering: ${e.message}`, true);
  }
  connect();
  await reloadBoard();
  const id = location.hash.slice(1);
  if (id) openDetail(id);
  document.body.dataset.ready = 'true';
}

main();
