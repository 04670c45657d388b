// Shared by the dashboard's browser test (e2e.mjs) and benchmark
// (bench.mjs): Debian's Chromium driven by playwright-core, a fresh profile
// each run, and axe-core's accessibility check.
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const require = createRequire(import.meta.url);

export const HUB = need('EF_HUB');
export const TOKEN = need('EF_TOKEN');

export function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

/** Chromium headless with a fresh user-data dir; close() removes it. */
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'edgefleet-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.EF_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
    viewport: { width: 1280, height: 900 },
  });
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(Number(process.env.EF_TIMEOUT_MS || 30000));
  return {
    context, page,
    async close() { await context.close(); rmSync(profile, { recursive: true, force: true }); },
  };
}

export async function signIn(page, token = TOKEN) {
  await page.goto(HUB + '/ui/');
  await page.getByLabel('Operator token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

/** The hub's REST API as the operator (bearer token), from Node. */
export async function api(method, path, body, contentType = 'application/json') {
  const r = await fetch(HUB + '/api/v1' + path, {
    method,
    headers: { Authorization: 'Bearer ' + TOKEN, 'Content-Type': contentType },
    body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/** axe-core on the page as it is; the serious and critical violations. */
export async function axe(page, what) {
  // Evaluated through the DevTools protocol, so the page's CSP (scripts
  // from the hub only) does not apply to it.
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) await page.evaluate(AXE);
  const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of r.violations) {
    console.log(`axe ${what}: ${v.impact} ${v.id}: ${v.help} (${v.nodes.length} nodes)` +
      (bad.includes(v) ? '\n  ' + v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join('\n  ') : ''));
  }
  console.log(`axe ${what}: ${r.violations.length} violations, ${bad.length} serious or critical`);
  return bad;
}

/** Milliseconds from navigation start to the page's `ef-ready:<name>` mark. */
export async function readyMs(page, name) {
  await page.waitForFunction((n) => performance.getEntriesByName('ef-ready:' + n).length > 0, name);
  return page.evaluate((n) => performance.getEntriesByName('ef-ready:' + n)[0].startTime, name);
}
