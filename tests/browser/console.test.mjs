// Drives the NOC console in real headless Chromium against a running incidentd:
// load the page, post an alert storm (a ToR switch failure, root cause last) through the API,
// see the incident appear without a reload, open it, see the root cause and the topology
// picture, acknowledge it from the keyboard, see the state change live, comment, and save
// screenshots under docs/.
//
// Usage: node console.test.mjs <base-url>   (run by tests/console.rs)
// Env: CHROMIUM (default /usr/bin/chromium), REPO (default ../..), SHOTS (default $REPO/docs)

import { readFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const base = process.argv[2];
if (!base) {
  console.error('usage: node console.test.mjs <base-url>');
  process.exit(2);
}
const repo = resolve(process.env.REPO || join(here, '..', '..'));
const shots = resolve(process.env.SHOTS || join(repo, 'docs'));
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const ROOT = 'dc1-tor-05';
const ACTOR = 'browser-test';

function step(msg) {
  console.log(`[console.test] ${msg}`);
}

function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

async function post(path, body) {
  const res = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  check(res.ok, `POST ${path} answered ${res.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}

async function get(path) {
  const res = await fetch(`${base}${path}`);
  check(res.ok, `GET ${path} answered ${res.status}`);
  return res.json();
}

/** The recorded ToR storm, as live alerts (incidentd stamps the arrival time itself). */
function storm() {
  const lines = readFileSync(join(repo, 'fixtures/scenarios/tor-switch-failure/alerts.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.trim());
  return lines.map((l) => {
    const a = JSON.parse(l);
    delete a.received_at;
    return a;
  });
}

// A fresh profile every run: nothing remembered from earlier runs (filters, wall mode).
const profile = mkdtempSync(join(tmpdir(), 'incidentd-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 1680, height: 1050 },
  colorScheme: 'dark',
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const problems = [];
let exitCode = 0;
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));

  step(`loading ${base}/`);
  const response = await page.goto(`${base}/`);
  check(response.ok(), `GET / answered ${response.status()}`);
  check(/script-src 'self'/.test(response.headers()['content-security-policy'] || ''), 'a strict CSP');
  await page.waitForSelector('body[data-ready="true"]', { timeout: 15000 });
  await page.waitForSelector('#conn.live', { timeout: 15000 });
  await page.fill('#actor', ACTOR);
  await page.dispatchEvent('#actor', 'change');
  // Marks this document: a reload would lose it.
  await page.evaluate(() => { window.__noReload = true; });

  step('posting some everyday noise: three unrelated incidents');
  await post('/api/v1/alerts', [
    { source: 'zabbix-dc2', name: 'DiskFull', ci: 'dc2-h0103', severity: 'warning', summary: '/var is 95% full' },
    { source: 'prometheus-dc1', name: 'ReplicationLag', ci: 'db-search-02', severity: 'major', summary: 'replica 40s behind' },
    { source: 'slo', name: 'ErrorBudgetBurn', ci: 'svc-notifications', severity: 'minor', summary: 'burn rate 3x over 1h' },
  ]);
  await page.waitForFunction(() => document.querySelectorAll('#incident-list .row.incident').length >= 3, null, { timeout: 10000 });

  const alerts = storm();
  step(`posting a storm of ${alerts.length} alerts in waves, the switch's own alerts last`);
  for (let i = 0; i < alerts.length; i += 11) {
    await post('/api/v1/alerts', alerts.slice(i, i + 11));
    await new Promise((r) => setTimeout(r, 150));
  }

  step('waiting for the incident to appear on the board, live');
  const row = page.locator('#incident-list .row.incident', { hasText: `root ${ROOT}` });
  await row.first().waitFor({ timeout: 20000 });
  check(await page.evaluate(() => window.__noReload === true), 'the page was not reloaded');
  const listed = await get('/api/v1/incidents?view=summary&state=active');
  const incident = listed.items.find((i) => i.root_cause && i.root_cause.ci === ROOT);
  check(incident, `an incident rooted at ${ROOT}: ${JSON.stringify(listed.items.map((i) => i.title))}`);
  step(`${incident.id}: ${incident.title} (${incident.priority})`);
  const counts = await page.locator('#counts .count-btn').allInnerTexts();
  check(counts.length === 5, `counts per priority: ${counts}`);

  step('opening it');
  await row.first().click();
  await page.waitForSelector('#detail:not([hidden])');
  await page.waitForFunction((root) => document.querySelector('#d-root').textContent.includes(root), ROOT);
  const services = await page.textContent('#d-services');
  check(/svc-/.test(services), `impacted services shown: ${services}`);

  step('checking the topology picture');
  await page.waitForSelector(`#topology svg g.node.root[data-ci="${ROOT}"]`, { timeout: 10000 });
  const nodes = await page.locator('#topology svg g.node').count();
  const edges = await page.locator('#topology svg path.edge').count();
  const serviceNodes = await page.locator('#topology svg g.node.service').count();
  check(nodes >= 5 && edges >= 4 && serviceNodes >= 1, `a graph: ${nodes} nodes, ${edges} edges, ${serviceNodes} services`);
  const label = await page.getAttribute('#topology svg', 'aria-labelledby');
  check(label, 'the picture is labelled for screen readers');

  step('checking member alerts with their reasons');
  await page.waitForSelector('#alert-list .row.alert');
  const firstReason = await page.textContent('#alert-list .row.alert .reason');
  check(firstReason && firstReason.length > 5, `a reason per alert: ${firstReason}`);
  const total = await page.textContent('#alert-total');
  check(total.includes(String(incident.alert_count)) || /\(\d+\)/.test(total), `alert total: ${total}`);

  step('acknowledging from the keyboard (a)');
  await page.focus('#d-title');
  await page.keyboard.press('a');
  await page.waitForFunction(() => document.querySelector('#d-state').textContent.includes('acknowledged'), null, { timeout: 10000 });
  await page.waitForFunction(
    (id) => {
      const r = document.getElementById(`row-${id}`);
      return r && r.textContent.includes('acknowledged');
    },
    incident.id,
    { timeout: 10000 },
  );
  const after = await get(`/api/v1/incidents/${incident.id}?view=summary`);
  check(after.state === 'acknowledged' && after.acknowledged_by === ACTOR, `acknowledged by ${ACTOR}: ${JSON.stringify(after)}`);

  step('commenting');
  await page.fill('#comment-text', 'ToR dc1-tor-05 down; DC ops replacing the PSU');
  await page.click('#comment-form button[type="submit"]');
  await page.waitForSelector('#timeline-list .row.ev-incident_commented', { timeout: 10000 });

  step('help overlay and wall mode');
  await page.focus('#d-title');
  await page.keyboard.press('?');
  await page.waitForSelector('#help:not([hidden])');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#help', { state: 'hidden' });

  await page.waitForTimeout(500);
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, 'console.png') });
  step(`screenshot ${join(shots, 'console.png')}`);

  await page.keyboard.press('w');
  await page.waitForSelector('body.wall');
  await page.keyboard.press('w');

  step('checking text contrast (WCAG AA) on the board and the open incident');
  const lowContrast = await page.evaluate(() => {
    const rgba = (c) => (c.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    // The colour behind the text: translucent layers composited over what is under them.
    const background = (el) => {
      const layers = [];
      for (let e = el; e; e = e.parentElement) {
        const c = rgba(getComputedStyle(e).backgroundColor);
        const alpha = c.length >= 4 ? c[3] : 1;
        if (c.length >= 3 && alpha > 0) layers.push([c[0], c[1], c[2], alpha]);
        if (alpha >= 1) break;
      }
      let out = [0, 0, 0];
      for (const [r, g, b, a] of layers.reverse()) out = [r * a + out[0] * (1 - a), g * a + out[1] * (1 - a), b * a + out[2] * (1 - a)];
      return out;
    };
    const bad = [];
    for (const el of document.querySelectorAll('body *')) {
      const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own || !el.getClientRects().length) continue;
      const st = getComputedStyle(el);
      if (st.visibility === 'hidden' || Number(st.opacity) < 0.5) continue;
      if (el.closest('[hidden], [aria-hidden="true"], svg')) continue;
      const [a, b] = [lum(rgba(st.color)), lum(background(el))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      const size = parseFloat(st.fontSize);
      const large = size >= 24 || (size >= 18.66 && Number(st.fontWeight) >= 700);
      if (ratio < (large ? 3 : 4.5)) bad.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
    }
    return bad;
  });
  check(lowContrast.length === 0, `text below AA contrast:\n${lowContrast.join('\n')}`);

  step('storm scale: 10,000 more incidents and one incident of 10,000 alerts');
  await page.keyboard.press('Escape');
  const before = Number((await page.textContent('#list-status')).match(/\d+/)[0]);
  const batch = (n, make) => Array.from({ length: n }, (_, i) => make(i));
  for (let b = 0; b < 20; b++) {
    await post('/api/v1/alerts', batch(500, (i) => ({ source: 'storm', name: `Check-${b * 500 + i}`, severity: 'minor' })));
  }
  for (let b = 0; b < 20; b++) {
    await post('/api/v1/alerts', batch(500, (i) => ({
      source: 'storm-k8s', name: 'PodCrashLooping', severity: 'major', labels: { pod: `web-${b * 500 + i}` },
    })));
  }
  const want = before + 10001;
  await page.waitForFunction(
    (n) => document.querySelector('#list-status').textContent === `${n} incidents`,
    want,
    { timeout: 30000 },
  );
  await page.waitForFunction(() => document.querySelectorAll('#incident-list .row.incident').length > 0);
  const boardRows = await page.locator('#incident-list .row.incident').count();
  check(boardRows > 0 && boardRows < 200, `the board renders a window, not ${want} rows: ${boardRows}`);
  await page.evaluate(() => { const l = document.getElementById('incident-list'); l.scrollTop = l.scrollHeight; });
  await page.waitForFunction(() => document.querySelectorAll('#incident-list .row.incident').length > 0);

  step('opening the 10,000-alert incident');
  await page.fill('#f-q', 'PodCrashLooping');
  const big = page.locator('#incident-list .row.incident', { hasText: 'PodCrashLooping' });
  await big.first().waitFor({ timeout: 10000 });
  await big.first().click();
  await page.waitForFunction(() => document.querySelector('#alert-total').textContent === '(10000)', null, { timeout: 15000 });
  // The total arrives with the first page; its rows render on the next frame.
  await page.waitForFunction(() => document.querySelectorAll('#alert-list .row.alert').length > 0, null, { timeout: 15000 });
  const alertRows = await page.locator('#alert-list .row.alert').count();
  check(alertRows > 0 && alertRows < 200, `the member list renders a window of 10000: ${alertRows}`);
  await page.evaluate(() => { const l = document.getElementById('alert-list'); l.scrollTop = l.scrollHeight; });
  await page.waitForFunction(() => document.querySelectorAll('#alert-list .row.alert').length > 0);
  check(await page.evaluate(() => window.__noReload === true), 'still the same page after the storm');

  check(problems.length === 0, `no errors in the page:\n${problems.join('\n')}`);
  step('ok');
} catch (e) {
  console.error(`[console.test] FAILED: ${e.stack || e}`);
  if (problems.length) console.error(problems.join('\n'));
  exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(exitCode);
