// The dashboard end to end in Debian's Chromium, against a real hub with a
// real edge-agent (started by tests/tests/dashboard.rs): sign in (a wrong
// token first), see the agent's device online, apply a deployment through
// the API and watch it reach ready 1/1 without a reload, pause and resume
// its rollout from the page, relabel the device, sign out. axe-core checks
// every page; screenshots go to EF_OUT.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { HUB, api, axe, launch, need, signIn } from './lib.mjs';

const DEVICE = need('EF_DEVICE');
const MODEL = need('EF_MODEL');
const SHA = need('EF_MODEL_SHA');
const OUT = need('EF_OUT');
mkdirSync(OUT, { recursive: true });

function deployment(threshold, rollout) {
  return `apiVersion: edgefleet.io/v1
kind: Deployment
metadata: {name: e2e}
spec:
  selector:
    matchLabels: {site: plant-9}
${rollout ? `  rollout:
    waves:
      - {name: canary, selector: {matchLabels: {ring: canary}}}
      - {name: rest, percent: 100}
    bake: 1h
` : ''}  workloads:
    - name: detector
      inference:
        model: {name: ${MODEL}, sha256: "${SHA}"}
        input: {http: {}}
        output: {upstream: true, when: "score > ${threshold}"}
`;
}

const step = (s) => console.log(`e2e: ${s}`);
const serious = [];
const shot = async (page, name) => page.screenshot({ path: join(OUT, name + '.png'), fullPage: true });

const { page, context, close } = await launch();
try {
  step('a wrong token is refused with a message');
  await signIn(page, 'not-the-token');
  await page.getByRole('alert').filter({ hasText: 'not the operator token' }).waitFor();
  serious.push(...await axe(page, 'sign-in'));
  await shot(page, 'signin-refused');

  step('sign in');
  await signIn(page);
  await page.waitForSelector('body[data-ready="overview"]');
  await page.locator('#live.on').waitFor();
  serious.push(...await axe(page, 'overview'));
  await shot(page, 'overview');

  step(`the agent's device ${DEVICE} is online`);
  await page.getByRole('link', { name: 'Devices', exact: true }).click();
  await page.waitForSelector('body[data-ready="devices"]');
  const row = page.locator(`tr[data-device="${DEVICE}"]`);
  await row.locator('.badge', { hasText: 'online' }).waitFor();
  serious.push(...await axe(page, 'devices'));
  await shot(page, 'devices');

  step('a deployment applied through the API reaches ready 1/1 with no reload');
  await page.getByRole('link', { name: 'Deployments', exact: true }).click();
  await page.waitForSelector('body[data-ready="deployments"]');
  await page.evaluate(() => { window.__sameDocument = true; });
  await api('PUT', '/deployments/e2e', deployment('0.8', false), 'application/yaml');
  await page.locator('tr[data-deployment="e2e"]').waitFor();
  await page.locator('tr[data-deployment="e2e"] .mono', { hasText: /^1\/1/ }).waitFor({ timeout: 90000 });
  if (!(await page.evaluate(() => window.__sameDocument === true))) throw new Error('the page was reloaded');
  await shot(page, 'deployments');

  step('a new generation with waves: pause and resume its rollout from the page');
  await page.locator('tr[data-deployment="e2e"] a').click();
  await page.getByTestId('ready').waitFor();
  await api('PUT', '/deployments/e2e', deployment('0.9', true), 'application/yaml');
  const state = page.getByTestId('rollout-state');
  await state.filter({ hasText: 'Progressing' }).waitFor({ timeout: 90000 });
  await page.getByRole('button', { name: 'Pause' }).click();
  await state.filter({ hasText: 'Paused' }).waitFor();
  const paused = await api('GET', '/deployments/e2e/rollout');
  if (paused.state !== 'Paused') throw new Error(`the hub says ${paused.state}, not Paused`);
  await shot(page, 'deployment-paused');
  await page.getByRole('button', { name: 'Resume' }).click();
  await state.filter({ hasText: 'Progressing' }).waitFor();
  const resumed = await api('GET', '/deployments/e2e/rollout');
  if (resumed.state !== 'Progressing') throw new Error(`the hub says ${resumed.state}, not Progressing`);
  await page.getByTestId('ready').filter({ hasText: 'Ready 1/1' }).waitFor({ timeout: 90000 });
  step('the history diffs generation 1 and 2');
  await page.getByRole('heading', { name: /Generation 1 → 2: \d+ lines changed/ }).waitFor();
  await page.locator('pre.diff .add', { hasText: 'score > 0.9' }).waitFor();
  serious.push(...await axe(page, 'deployment'));
  await shot(page, 'deployment');

  step('relabel the device');
  await page.goto(`${HUB}/ui/#/devices/${DEVICE}`);
  await page.waitForSelector('body[data-ready="devices"]');
  await page.getByLabel('New label key').fill('zone');
  await page.getByLabel('Value', { exact: true }).fill('north');
  await page.getByRole('button', { name: 'Add' }).click();
  await page.getByRole('button', { name: 'Save labels' }).click();
  await page.getByRole('alert').filter({ hasText: 'Labels saved' }).waitFor();
  const d = await api('GET', `/devices/${DEVICE}`);
  if (d.labels.zone !== 'north') throw new Error(`labels at the hub: ${JSON.stringify(d.labels)}`);
  await page.locator('figure svg.chart').first().waitFor();
  serious.push(...await axe(page, 'device'));
  await shot(page, 'device');

  step('the phone-sized page has every section');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole('heading', { name: 'Workloads' }).waitFor();
  await shot(page, 'device-phone');
  await page.setViewportSize({ width: 1280, height: 900 });

  step('keyboard: the skip link is the first stop; the navigation follows; Enter on a link opens its page');
  await page.goto(`${HUB}/ui/?keys=1#/overview`);
  await page.waitForSelector('body[data-ready="overview"]');
  const focused = () => page.evaluate(() => document.activeElement.textContent.trim());
  await page.keyboard.press('Tab');
  if ((await focused()) !== 'Skip to content') throw new Error(`first Tab stop: ${await focused()}`);
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  if ((await focused()) !== 'Devices') throw new Error(`third Tab stop: ${await focused()}`);
  await page.keyboard.press('Enter');
  await page.waitForSelector('body[data-ready="devices"]');
  if (!(await page.evaluate(() => document.activeElement.id === 'main'))) throw new Error('focus did not move to the page');

  step('sign out');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Operator token').waitFor();
  const after = await context.request.get(HUB + '/api/v1/overview');
  if (after.status() !== 401) throw new Error(`the old session still reads the API: ${after.status()}`);

  if (serious.length) throw new Error(`${serious.length} serious or critical accessibility violations`);
  step('passed');
} catch (e) {
  await shot(page, 'failure').catch(() => {});
  console.error(`e2e: FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await close();
}
