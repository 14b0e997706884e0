// End-to-end: the real page in headless Chromium against a running `robopt serve`, through the main workflow:
// upload a model (Models), type a goal and start a job (Chat), follow it to the end (Job view), open its report.
// A full-page screenshot after each step (models.png, chat.png, job.png, report.png) goes to the output folder,
// with 1280x800 views of the chat, the job's attempts and Pareto plot, and the report (view-*.png, the README's
// screenshots), and result.json there names the model and the job the page made. Exits 1 with a message on the first failure.
//
//   node src/tests/e2e/workflow.mjs <service URL> <model file> <output folder>
//   (or E2E_URL, E2E_MODEL, E2E_OUT; E2E_GOAL, E2E_JOB_TIMEOUT_S and E2E_CHROMIUM override the defaults)
//
// Chromium is the system one (no browser download), set up by harness.mjs as for the other workflows.
import { statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { Failure, expect, runInBrowser } from './harness.mjs';

const [argUrl, argModel, argOut] = process.argv.slice(2);
const url = (argUrl ?? process.env.E2E_URL ?? '').replace(/\/+$/, '');
const modelPath = argModel ?? process.env.E2E_MODEL;
const outDir = resolve(argOut ?? process.env.E2E_OUT ?? 'e2e-screenshots');
const goal = process.env.E2E_GOAL ?? 'at least 2x smaller, keep accuracy within 5%, stop at the first that meets it';
const jobTimeoutMs = Number(process.env.E2E_JOB_TIMEOUT_S ?? 300) * 1000;

if (!url || !modelPath) {
  console.error('usage: node workflow.mjs <service URL> <model file> <output folder>');
  process.exit(2);
}
const modelName = basename(modelPath);
const result = { url, model_file: modelPath, goal };

await runInBrowser(outDir, result, async ({ page, step, shoot, log }) => {
  await step('open the page and go to Models', async () => {
    const answer = await page.goto(`${url}/`);
    expect(answer && answer.ok(), `GET ${url}/ answered ${answer?.status()}: is frontend/dist built?`);
    await page.getByRole('menuitem', { name: 'Chat' }).waitFor();
    await page.getByRole('menuitem', { name: 'Models' }).click();
    await page.waitForURL(/#\/models$/);
    await page.getByText('Upload a model').waitFor();
  });

  await step(`upload ${modelName} and see its profile`, async () => {
    await page.locator('input[type="file"]').setInputFiles(modelPath);
    const profileBox = page.locator('[aria-label^="Profile of "]');
    try {
      await profileBox.waitFor({ timeout: 180_000 });
    } catch {
      const alert = await page.locator('.ant-alert').allInnerTexts();
      throw new Failure(`no profile of ${modelName} appeared after the upload${alert.length ? `; the page says: ${alert.join(' | ')}` : ''}`);
    }
    const text = await profileBox.innerText();
    expect(/parameters/.test(text), `the profile shows no parameter count: ${text.slice(0, 300)}`);
    expect(/format\s*onnx/i.test(text), `the profile does not say the format is onnx: ${text.slice(0, 300)}`);
    const id = /\bid\s+(\S+)/.exec(text)?.[1] ?? '';
    expect(id.length > 0, 'the profile shows no model id');
    result.model_id = id;
    await page.getByRole('row').filter({ hasText: id }).first().waitFor();
    await shoot('models.png', { full: true });
  });

  await step('go to Chat, send the goal and see the parsed criteria', async () => {
    await page.getByRole('menuitem', { name: 'Chat' }).click();
    await page.waitForURL(/#\/chat$/);
    const box = page.getByRole('textbox', { name: 'Goal', exact: true });
    await box.fill(goal);
    await page.getByRole('button', { name: 'Send goal' }).click();
    const criteria = page.locator('[aria-label="Parsed criteria"]').last();
    try {
      await criteria.waitFor({ timeout: 60_000 });
    } catch {
      const said = await page.locator('body').innerText();
      throw new Failure(`no criteria table after sending the goal; the page shows: ${said.slice(0, 600)}`);
    }
    const table = await criteria.innerText();
    expect(/min compression\s*2x/.test(table), `the criteria table does not read "min compression 2x": ${table}`);
    expect(/drop\s*5%/.test(table), `the criteria table does not read an accuracy drop of 5%: ${table}`);
    expect(/stop at first/.test(await page.locator('body').innerText()), 'the goal is not read as "stop at first"');
  });

  await step('pick the uploaded model and start the job', async () => {
    const start = page.getByRole('button', { name: 'Start optimization job' });
    if (await start.isDisabled()) {
      await page.getByRole('combobox', { name: 'Model to optimize' }).click();
      await page.locator('.ant-select-item-option').filter({ hasText: result.model_id }).first().click();
      await page.locator('.ant-select-dropdown:not(.ant-select-dropdown-hidden)').waitFor({ state: 'hidden' });
    }
    await shoot('chat.png', { full: true });
    await shoot('view-chat.png');
    expect(await start.isEnabled(), 'Start stays disabled after picking the uploaded model');
    await start.click();
    try {
      await page.waitForURL(/#\/jobs\/[^/]+$/, { timeout: 60_000 });
    } catch {
      const alert = await page.locator('.ant-alert').allInnerTexts();
      throw new Failure(`Start did not open a job view${alert.length ? `; the page says: ${alert.join(' | ')}` : ''}`);
    }
    result.job_id = decodeURIComponent(new URL(page.url()).hash.split('/')[2]);
    log(`job ${result.job_id} started`);
  });

  await step('follow the job to its end on the job view', async () => {
    await page.getByText(`Job ${result.job_id}`).waitFor();
    const bar = page.getByRole('progressbar');
    try {
      await page.waitForFunction(
        () => document.querySelector('[role="progressbar"]')?.getAttribute('aria-valuenow') === '100',
        null,
        { timeout: jobTimeoutMs, polling: 1000 },
      );
    } catch {
      const now = await bar.getAttribute('aria-valuenow').catch(() => '?');
      throw new Failure(`the job did not reach 100% within ${jobTimeoutMs / 1000} s (progress ${now}%)`);
    }
    const summary = page.getByText(/^Goal (not )?met; final version/);
    await summary.waitFor({ timeout: 30_000 });
    result.page_summary = await summary.innerText();
    const attempts = page.locator('[aria-label="Attempts"] tbody tr.ant-table-row');
    await attempts.first().waitFor({ timeout: 30_000 });
    result.attempt_rows = await attempts.count();
    expect(result.attempt_rows >= 1, 'the attempts table has no row');
    const status = page.locator('.ant-descriptions-item-label', { hasText: /^Status$/ }).locator('xpath=following-sibling::*[1]');
    result.page_status = (await status.innerText()).trim();
    expect(!/failed|cancelled/.test(result.page_status), `the job view shows status ${result.page_status}`);
    log(`${result.page_summary}; ${result.attempt_rows} attempt row(s); status ${result.page_status}`);
    await shoot('job.png', { full: true });
    // the view: the job's header down to its attempts table and Pareto plot, as far as 800 px show
    await page.locator('.ant-card').filter({ hasText: /^Attempts/ }).first().evaluate((card) => {
      const top = card.getBoundingClientRect().top + window.scrollY;
      window.scrollTo(0, Math.max(0, top + card.offsetHeight - window.innerHeight + 16));
    }).catch((err) => log(`could not scroll to the attempts: ${err}`));
    await shoot('view-job.png');
  });

  await step('open the report: before/after table and the download', async () => {
    const open = page.getByRole('link', { name: 'Open report' }).or(page.getByRole('button', { name: 'Open report' }));
    await open.first().click();
    await page.waitForURL(/#\/jobs\/[^/]+\/report$/);
    const table = page.locator('[aria-label="Before and after"]');
    await table.waitFor({ timeout: 60_000 });
    const text = await table.innerText();
    expect(/Before/.test(text) && /After/.test(text), `the report table has no Before/After columns: ${text}`);
    expect(/size \(MB\)/.test(text), `the report table has no size row: ${text}`);
    expect(/x smaller/.test(text), `the report table shows no compression: ${text}`);
    const download = page.getByRole('button', { name: /^Download final artifact/ });
    await download.waitFor();
    await shoot('report.png', { full: true });
    await shoot('view-report.png');
    const [file] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), download.click()]);
    const saved = join(outDir, `download-${file.suggestedFilename()}`);
    await file.saveAs(saved);
    result.download = { filename: file.suggestedFilename(), bytes: statSync(saved).size };
    expect(result.download.bytes > 0, `the downloaded artifact ${saved} is empty`);
    log(`downloaded ${file.suggestedFilename()} (${result.download.bytes} bytes)`);
  });
});
