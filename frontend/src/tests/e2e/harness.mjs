// What the browser workflows share: the system Chromium (playwright-core, a fresh profile in a temp folder, a
// 1280x800 viewport), named steps that log their time, screenshots, and result.json in the output folder with
// the first failure's step and message. `runInBrowser` exits the process: 0 when every step passed, else 1.
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export class Failure extends Error {}

/** Fail the current step with a clear message unless `ok`. */
export function expect(ok, message) {
  if (!ok) throw new Failure(message);
}

/**
 * Open the page in Chromium and run `body({ page, step, shoot, log })`; write `result` to result.json in `out`.
 * `step(name, fn)` names what runs (the failure message says which step failed); `shoot(file, { full })` saves a
 * screenshot of the viewport (or the full page).
 */
export async function runInBrowser(out, result, body) {
  const outDir = resolve(out);
  mkdirSync(outDir, { recursive: true });
  const started = Date.now();
  const seconds = () => ((Date.now() - started) / 1000).toFixed(1);
  const log = (text) => console.log(`[e2e ${seconds()} s] ${text}`);
  const profile = mkdtempSync(join(tmpdir(), 'robopt-e2e-chromium-'));
  const pageErrors = [];
  let current = 'start';
  let context;
  let page;
  let code = 0;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: process.env.E2E_CHROMIUM ?? '/usr/bin/chromium',
      headless: true,
      args: ARGS,
      viewport: { width: 1280, height: 800 },
      acceptDownloads: true,
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(60_000);
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    page.on('console', (msg) => {
      if (msg.type() === 'error' && !/favicon/.test(msg.location().url)) console.log(`[browser console] ${msg.text()}`);
    });
    const step = async (name, fn) => {
      current = name;
      const t0 = Date.now();
      await fn();
      log(`ok: ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    };
    const shoot = async (file, { full = false } = {}) => {
      const path = join(outDir, file);
      await page.screenshot({ path, fullPage: full });
      log(`screenshot ${path} (${statSync(path).size} bytes)`);
    };
    await body({ page, step, shoot, log });
    expect(pageErrors.length === 0, `the page threw: ${pageErrors.join(' | ')}`);
    current = 'done';
  } catch (err) {
    code = 1;
    const message = err instanceof Failure ? err.message : String(err?.stack ?? err);
    console.error(`[e2e ${seconds()} s] FAILED at step "${current}": ${message}`);
    if (pageErrors.length) console.error(`page errors: ${pageErrors.join(' | ')}`);
    if (page) await page.screenshot({ path: join(outDir, 'failure.png'), fullPage: true }).catch(() => {});
    result.failed = { step: current, message };
  } finally {
    result.seconds = Number(seconds());
    writeFileSync(join(outDir, 'result.json'), JSON.stringify(result, null, 2));
    await context?.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
  console.log(code === 0 ? `[e2e] passed in ${seconds()} s` : `[e2e] failed in ${seconds()} s`);
  process.exit(code);
}
