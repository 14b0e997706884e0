// End-to-end workflows beside the main one (workflow.mjs), each in the real page in headless Chromium against a
// running `robopt serve`:
//   clarify  a vague goal: the assistant's question shows, the user answers in the same conversation, and the
//            parsed criteria table appears (E2E_GOAL, E2E_ANSWER override the two messages)
//   replay   on a finished job's view (E2E_JOB_ID), pick the checkpoint after analyze in its checkpoints panel,
//            enter a new goal (E2E_REPLAY_GOAL), "Replay from here": the new job's view opens and links back
//   apikey   a service with ROBOPT_API_KEY: the page asks for the key; a wrong one (E2E_WRONG_KEY) brings the
//            prompt back saying it was refused; the right one (E2E_API_KEY) loads Models (which must list
//            E2E_MODEL_ID) and Jobs without asking again
//   reference  `robopt demo` in the page: pick the reference model E2E_REFERENCE (default vla) in Chat, keep it
//            judged in its simulator, send the demo goal (E2E_GOAL), start, and follow the job to its end
// Screenshots and result.json go to the output folder; exit 1 with a message on the first failure.
//
//   node src/tests/e2e/workflows.mjs <clarify|replay|apikey|reference> <service URL> <output folder>
import { expect, Failure, runInBrowser } from './harness.mjs';

const [name, argUrl, argOut] = process.argv.slice(2);
const url = (argUrl ?? process.env.E2E_URL ?? '').replace(/\/+$/, '');
const out = argOut ?? process.env.E2E_OUT ?? `e2e-${name}`;
const env = process.env;

async function clarify({ page, step, shoot }, result) {
  const vague = env.E2E_GOAL ?? 'make it better';
  const answer = env.E2E_ANSWER ?? 'at least 2x smaller, keep accuracy within 5%';
  const box = page.getByRole('textbox', { name: 'Goal', exact: true });
  const criteria = page.locator('[aria-label="Parsed criteria"]');

  await step(`open Chat and send the vague goal "${vague}"`, async () => {
    const response = await page.goto(`${url}/#/chat`);
    expect(response && response.ok(), `GET ${url}/ answered ${response?.status()}: is frontend/dist built?`);
    await box.fill(vague);
    await page.getByRole('button', { name: 'Send goal' }).click();
  });

  await step("see the assistant's question and no criteria yet", async () => {
    const question = page.getByRole('alert').filter({ hasText: 'What matters most' });
    try {
      await question.waitFor({ timeout: 30_000 });
    } catch {
      const said = await page.locator('body').innerText();
      throw new Failure(`no question after the vague goal; the page shows: ${said.slice(0, 600)}`);
    }
    result.question = (await question.innerText()).trim();
    expect(result.question.includes(vague), `the question does not quote the goal: ${result.question}`);
    expect((await criteria.count()) === 0, 'a criteria table shows although the goal was unclear');
    const start = page.getByRole('button', { name: 'Start optimization job' });
    expect(await start.isDisabled(), 'Start is enabled while the goal is unclear');
  });

  await step(`answer "${answer}" in the same conversation and see the parsed criteria`, async () => {
    await box.fill(answer);
    await page.getByRole('button', { name: 'Send goal' }).click();
    try {
      await criteria.last().waitFor({ timeout: 30_000 });
    } catch {
      const said = await page.locator('body').innerText();
      throw new Failure(`no criteria table after the answer; the page shows: ${said.slice(0, 600)}`);
    }
    const table = await criteria.last().innerText();
    expect(/min compression\s*2x/.test(table), `the criteria table does not read "min compression 2x": ${table}`);
    expect(/drop\s*5%/.test(table), `the criteria table does not read an accuracy drop of 5%: ${table}`);
    const turns = page.getByRole('list', { name: 'Conversation' }).locator(':scope > li');
    const said = await turns.allInnerTexts();
    expect(said.length === 4, `the conversation has ${said.length} turns, not 4: ${JSON.stringify(said)}`);
    expect(said[0].includes(vague) && said[1].includes('What matters most'), `the question left the conversation: ${said}`);
    expect(said[2].includes(answer), `the answer is not the third turn: ${said[2]}`);
    result.criteria = table;
    await shoot('chat-clarified.png');
  });
}

async function replay({ page, step, shoot, log }, result) {
  const parent = env.E2E_JOB_ID;
  const goal = env.E2E_REPLAY_GOAL ?? '3x smaller';
  expect(Boolean(parent), 'E2E_JOB_ID (the finished job to replay) is not set');
  result.parent_job_id = parent;

  await step(`open job ${parent} and its checkpoints`, async () => {
    const response = await page.goto(`${url}/#/jobs/${encodeURIComponent(parent)}`);
    expect(response && response.ok(), `GET ${url}/ answered ${response?.status()}: is frontend/dist built?`);
    await page.getByText(`Job ${parent}`).waitFor();
    const rows = page.locator('[aria-label="Checkpoints"] tbody tr.ant-table-row');
    await rows.first().waitFor({ timeout: 30_000 });
    result.checkpoint_rows = await rows.count();
  });

  await step(`choose the checkpoint after analyze, enter "${goal}" and replay from there`, async () => {
    // the Node column (the row's second cell) names the node that wrote the checkpoint; 'analyze' may also
    // stand alone in the Next column of the checkpoint before it
    const row = page
      .locator('[aria-label="Checkpoints"] tbody tr.ant-table-row')
      .filter({ has: page.locator('td:nth-child(2)', { hasText: /^analyze$/ }) })
      .first();
    const button = row.getByRole('button', { name: /^Replay from step \d+$/ });
    const label = await button.getAttribute('aria-label');
    result.checkpoint_step = Number(/\d+$/.exec(label ?? '')?.[0]);
    await page.getByRole('textbox', { name: 'Replay goal' }).fill(goal);
    await button.scrollIntoViewIfNeeded();
    await button.click();
    try {
      await page.waitForURL((next) => /^#\/jobs\/[^/]+$/.test(next.hash) && !next.hash.endsWith(`/${parent}`), {
        timeout: 30_000,
      });
    } catch {
      const alert = await page.locator('.ant-alert').allInnerTexts();
      throw new Failure(`the replay opened no new job view${alert.length ? `; the page says: ${alert.join(' | ')}` : ''}`);
    }
    result.job_id = decodeURIComponent(new URL(page.url()).hash.split('/')[2]);
    log(`replayed as job ${result.job_id} from step ${result.checkpoint_step}`);
  });

  await step("the new job's view shows its goal and links back to the parent", async () => {
    await page.getByText(`Job ${result.job_id}`).waitFor();
    const link = page.getByRole('link', { name: `Parent job ${parent}` });
    await link.waitFor({ timeout: 30_000 });
    const goalCell = page.locator('.ant-descriptions-item-label', { hasText: /^Goal$/ }).locator('xpath=following-sibling::*[1]');
    result.page_goal = (await goalCell.innerText()).trim();
    expect(result.page_goal === goal, `the new job's goal reads "${result.page_goal}", not "${goal}"`);
    await shoot('replay.png');
    await link.click();
    await page.waitForURL((next) => next.hash === `#/jobs/${encodeURIComponent(parent)}`);
    await page.getByText(`Job ${parent}`).waitFor();
  });
}

async function apikey({ page, step, shoot }, result) {
  const right = env.E2E_API_KEY;
  const wrong = env.E2E_WRONG_KEY ?? 'not-the-key';
  const modelId = env.E2E_MODEL_ID;
  expect(Boolean(right && modelId), 'E2E_API_KEY and E2E_MODEL_ID must be set');
  const dialog = page.getByRole('dialog', { name: 'API key needed' });
  const input = dialog.getByLabel('API key', { exact: true });
  const use = dialog.getByRole('button', { name: 'Use this API key' });
  const refused = dialog.getByText(/refused that key/);

  await step('open Models: the page asks for the API key', async () => {
    const response = await page.goto(`${url}/#/models`);
    expect(response && response.ok(), `GET ${url}/ answered ${response?.status()}: is frontend/dist built?`);
    await dialog.waitFor({ timeout: 30_000 });
    expect(!(await refused.isVisible()), 'the first prompt says a key was refused');
    await shoot('apikey-prompt.png');
  });

  await step('a wrong key brings the prompt back, saying it was refused', async () => {
    await input.fill(wrong);
    await use.click();
    try {
      await refused.waitFor({ timeout: 30_000 });
    } catch {
      const alert = await page.locator('.ant-alert').allInnerTexts();
      throw new Failure(`no prompt again after a wrong key${alert.length ? `; the page says: ${alert.join(' | ')}` : ''}`);
    }
    await dialog.waitFor();
    result.prompts_after_wrong_key = await page.getByRole('dialog', { name: 'API key needed' }).count();
    expect(result.prompts_after_wrong_key === 1, `${result.prompts_after_wrong_key} key dialogs show at once`);
  });

  await step('the right key loads Models with the uploaded model', async () => {
    await input.fill(right);
    await use.click();
    await dialog.waitFor({ state: 'hidden', timeout: 30_000 });
    await page.getByRole('row').filter({ hasText: modelId }).first().waitFor({ timeout: 30_000 });
    const errors = await page.locator('.ant-alert-error:visible').allInnerTexts();
    expect(errors.length === 0, `Models shows an error: ${errors.join(' | ')}`);
  });

  await step('Jobs loads without asking again', async () => {
    await page.getByRole('menuitem', { name: 'Jobs' }).click();
    await page.waitForURL(/#\/jobs$/);
    await page.locator('[aria-label="Jobs"]').waitFor();
    await page.getByRole('button', { name: 'Refresh jobs' }).click();
    await page.waitForTimeout(1000);
    expect(!(await dialog.isVisible()), 'the page asked for the key again on Jobs');
    const errors = await page.locator('.ant-alert-error:visible').allInnerTexts();
    expect(errors.length === 0, `Jobs shows an error: ${errors.join(' | ')}`);
    await shoot('apikey-jobs.png');
  });
}

const DEMO_GOAL = 'at least 2x faster and 3x smaller on this machine, lose at most 2 points of success rate';

async function reference({ page, step, shoot, log }, result) {
  const name = env.E2E_REFERENCE ?? 'vla';
  const goal = env.E2E_GOAL ?? DEMO_GOAL;
  const jobTimeoutMs = Number(env.E2E_JOB_TIMEOUT_S ?? 300) * 1000;
  result.reference = name;

  await step(`open Chat and pick the reference model ${name}`, async () => {
    const response = await page.goto(`${url}/#/chat`);
    expect(response && response.ok(), `GET ${url}/ answered ${response?.status()}: is frontend/dist built?`);
    await page.getByRole('combobox', { name: 'Model to optimize' }).click();
    const group = page.locator('.ant-select-item-group', { hasText: 'Reference models' });
    try {
      await group.waitFor({ timeout: 30_000 });
    } catch {
      throw new Failure('the model select shows no "Reference models" group');
    }
    await page.locator('.ant-select-item-option').filter({ hasText: new RegExp(`^${name}: `) }).first().click();
    await page.locator('.ant-select-dropdown:not(.ant-select-dropdown-hidden)').waitFor({ state: 'hidden' });
    const closedLoop = page.getByRole('checkbox', { name: 'Judge by closed-loop success in the simulator' });
    expect(await closedLoop.isChecked(), `the reference ${name} is not judged in its simulator by default`);
  });

  await step(`send the demo goal "${goal}" and see the parsed criteria`, async () => {
    await page.getByRole('textbox', { name: 'Goal', exact: true }).fill(goal);
    await page.getByRole('button', { name: 'Send goal' }).click();
    const criteria = page.locator('[aria-label="Parsed criteria"]').last();
    try {
      await criteria.waitFor({ timeout: 60_000 });
    } catch {
      const said = await page.locator('body').innerText();
      throw new Failure(`no criteria table after sending the goal; the page shows: ${said.slice(0, 600)}`);
    }
    result.criteria = await criteria.innerText();
    expect(/min speedup\s*2x/.test(result.criteria), `the criteria do not read "min speedup 2x": ${result.criteria}`);
    expect(/min compression\s*3x/.test(result.criteria), `the criteria do not read "min compression 3x": ${result.criteria}`);
    await shoot('chat-reference.png', { full: true });
  });

  await step('start the job on the reference', async () => {
    const start = page.getByRole('button', { name: 'Start optimization job' });
    expect(await start.isEnabled(), 'Start stays disabled with a reference picked and a clear goal');
    await start.click();
    try {
      await page.waitForURL(/#\/jobs\/[^/]+$/, { timeout: 60_000 });
    } catch {
      const alert = await page.locator('.ant-alert').allInnerTexts();
      throw new Failure(`Start did not open a job view${alert.length ? `; the page says: ${alert.join(' | ')}` : ''}`);
    }
    result.job_id = decodeURIComponent(new URL(page.url()).hash.split('/')[2]);
    log(`job ${result.job_id} started on ${name}`);
  });

  await step('follow the job to its end on the job view', async () => {
    await page.getByText(`Job ${result.job_id}`).waitFor();
    // the progress bar shows the current step's progress (it reaches 100% at every step's end): wait for the
    // job's summary instead
    const summary = page.getByText(/^Goal (not )?met; final version/);
    try {
      await summary.waitFor({ timeout: jobTimeoutMs });
    } catch {
      const now = await page.getByRole('progressbar').getAttribute('aria-valuenow').catch(() => '?');
      throw new Failure(`the job showed no summary within ${jobTimeoutMs / 1000} s (progress ${now}%)`);
    }
    result.page_summary = await summary.innerText();
    const status = page.locator('.ant-descriptions-item-label', { hasText: /^Status$/ }).locator('xpath=following-sibling::*[1]');
    result.page_status = (await status.innerText()).trim();
    expect(!/failed|cancelled/.test(result.page_status), `the job view shows status ${result.page_status}`);
    log(`${result.page_summary}; status ${result.page_status}`);
    await shoot('job-reference.png', { full: true });
  });
}

const WORKFLOWS = { clarify, replay, apikey, reference };
if (!url || !(name in WORKFLOWS)) {
  console.error(`usage: node workflows.mjs <${Object.keys(WORKFLOWS).join('|')}> <service URL> <output folder>`);
  process.exit(2);
}
const result = { workflow: name, url };
await runInBrowser(out, result, (tools) => WORKFLOWS[name](tools, result));
