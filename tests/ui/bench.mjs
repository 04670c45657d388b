// The dashboard at fleet scale (run by `fleet-sim ui`, which starts the
// hub and the simulated fleet): in Debian's Chromium, the time from
// navigation start to each page's ready mark (Navigation Timing's clock),
// a fresh navigation per run; from Node, the hub's answer time for pages
// of the device list. Prints one JSON object; screenshots to EF_SHOTS.
import { join } from 'node:path';
import { HUB, TOKEN, launch, readyMs, signIn } from './lib.mjs';

const RUNS = Number(process.env.EF_RUNS || 5);
const DEVICE = process.env.EF_DEVICE;
const DEPLOYMENT = process.env.EF_DEPLOYMENT;
const SHOTS = process.env.EF_SHOTS;

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)];
  return { n: s.length, p50: q(0.5), p99: q(0.99), max: s[s.length - 1] };
};

const { page, close } = await launch();
const out = { pages: {}, api: {} };
try {
  await signIn(page);
  await page.waitForSelector('body[data-ready="overview"]');
  const pages = [
    ['overview', '#/overview', 'overview'],
    ['devices', '#/devices', 'devices'],
    ['devices, filtered by label and presence', '#/devices?selector=site%3Ds3&presence=online', 'devices'],
    ['device', '#/devices/' + DEVICE, 'devices'],
    ['deployment', '#/deployments/' + DEPLOYMENT, 'deployments'],
  ];
  for (const [name, hash, mark] of pages) {
    const times = [];
    for (let r = 0; r < RUNS; r++) {
      // A new query string: a full navigation, not a hash change.
      await page.goto(`${HUB}/ui/?run=${r}${hash}`);
      times.push(await readyMs(page, mark));
    }
    out.pages[name] = stats(times);
    console.error(`bench: ${name}: ${JSON.stringify(out.pages[name])}`);
  }
  if (SHOTS) {
    for (const [file, hash, mark] of [
      ['dashboard-overview.png', '#/overview', 'overview'],
      ['dashboard-devices.png', '#/devices', 'devices'],
      ['dashboard-device.png', '#/devices/' + DEVICE, 'devices'],
      ['dashboard-deployment.png', '#/deployments/' + DEPLOYMENT, 'deployments'],
    ]) {
      // A new query string each: a fresh document, as the runs above.
      await page.goto(`${HUB}/ui/?shot=${file}${hash}`);
      await readyMs(page, mark);
      await page.screenshot({ path: join(SHOTS, file), fullPage: true });
    }
  }
} finally {
  await close();
}

async function timed(path) {
  const t = performance.now();
  const r = await fetch(HUB + '/api/v1' + path, { headers: { Authorization: 'Bearer ' + TOKEN } });
  const body = await r.json();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${JSON.stringify(body)}`);
  return [performance.now() - t, body];
}

// Every page of the list in turn (50 a page, as the dashboard asks), then
// filtered lists; each request alone, as one operator's browser sends them.
for (const [name, query] of [
  ['devices, 50 a page, every page', 'limit=50'],
  ['devices, selector site=s3', 'limit=50&selector=site%3Ds3'],
  ['devices, health=failed', 'limit=50&health=failed'],
  ['devices, running generation 2', `limit=50&deployment=${DEPLOYMENT}&generation=2`],
]) {
  const times = [];
  let cont = null;
  for (let i = 0; i < 200; i++) {
    const [ms, body] = await timed('/devices?' + query + (cont ? '&continue=' + cont : ''));
    times.push(ms);
    cont = body.continue;
  }
  out.api[name] = stats(times);
  console.error(`bench: api ${name}: ${JSON.stringify(out.api[name])}`);
}
const times = [];
for (let i = 0; i < 20; i++) times.push((await timed('/overview'))[0]);
out.api['overview'] = stats(times);
console.log(JSON.stringify(out));
