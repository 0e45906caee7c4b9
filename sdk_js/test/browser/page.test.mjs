// Browser test of the hub's web page (hub/static, served at `/`; it imports the SDK from /sdk/).
//
// Starts the mock provider and the hub as child processes, drives Debian's Chromium
// (/usr/bin/chromium) with playwright-core, sends one completion per provider format from the
// page, drops the WebSocket mid-stream with the page's button, and checks that every panel
// ends with exactly the mock's text and reasoning and that the page shows the reconnect. Then,
// in the same page, runs the content_creation workflow in "Workflow" mode, drops the WebSocket
// while the writer streams, and checks that every agent pass's panel ends with exactly the
// mock's text, with the places, the log, usage and the resume shown.
// Saves a screenshot of the page with both: to $CBHUB_SCREENSHOT when set
// (`CBHUB_SCREENSHOT=../docs/page.png npm run test:browser` updates the one in docs/), else to a
// temporary file whose path it prints.
//
// Environment: CBHUB_PYTHON, a Python with the hub installed (default: ../.venv/bin/python
// when it exists, else python3; see ../support.js); CBHUB_CHROMIUM, the browser (default /usr/bin/chromium).
// Never `npx playwright install`: playwright-core drives the system's Chromium.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { expectedAgentTexts, runPython, startHub, startMock } from '../support.js';
const CHROMIUM = process.env.CBHUB_CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.CBHUB_SCREENSHOT
  ? path.resolve(process.env.CBHUB_SCREENSHOT)
  : path.join(tmpdir(), `cbhub-page-${process.pid}.png`);
// The flags that work on this project's machines: no GPU, no network beyond localhost.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
/** Upper bound for anything the test waits on: a safety net, never a measured timing. */
const TIMEOUT_MS = 20_000;

// One panel per provider format; each answer is 80 tokens at 30 tokens/s after 5 reasoning
// tokens (about 2.8 s), so the drop below lands while every panel is still streaming.
const TOKENS = 80;
const REASONING = 5;
const SENDS = [
  { model: 'openai/gpt-4o-mini', seed: 1, tool: true },
  { model: 'anthropic/claude-3-5-haiku-latest', seed: 2 },
  { model: 'google/gemini-2.0-flash', seed: 3 },
  { model: 'ollama/llama3.2', seed: 4 },
];
const promptOf = ({ seed, tool }) =>
  `Why does streaming matter? [[mock tokens=${TOKENS} tps=30 reasoning=${REASONING} seed=${seed}${tool ? ' tool=get_weather' : ''}]]`;

/** Run Python code in the checkout and parse what it prints as JSON. */
function python(code, ...args) {
  return JSON.parse(runPython(['-c', code, ...args]));
}

// The workflow run: 40 tokens at 30 tokens/s for every agent whose prompt quotes the topic
// (about 1.3 s each), so the drop below lands while the writer streams its first pass.
const WORKFLOW_INPUT = {
  topic: 'Why tea cools faster in a wide cup [[mock tokens=40 tps=30 seed=11]]',
  audience: 'curious teenagers',
};

let mock;
let hub;
let context;
let userDataDir;
/** Page errors and console errors of the page, over both tests. */
const problems = [];

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium`);
  mock = await startMock();
  hub = await startHub(mock.url); // every provider of the hub points at the mock
  userDataDir = mkdtempSync(path.join(tmpdir(), 'cbhub-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1360, height: 860 },
    timeout: TIMEOUT_MS,
  });
  context.setDefaultTimeout(TIMEOUT_MS);
});

after(async () => {
  await context?.close();
  await hub?.stop();
  await mock?.stop();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

test('the page streams completions side by side, survives a dropped connection, and shows everything', { timeout: 90_000 }, async () => {
  const expected = python(
    'import json, sys; from hub.testing.mock_provider import expected_text, expected_reasoning; '
      + 'n, r = int(sys.argv[1]), int(sys.argv[2]); '
      + 'print(json.dumps({s: [expected_text(n, int(s)), expected_reasoning(r, int(s))] for s in sys.argv[3:]}))',
    String(TOKENS), String(REASONING), ...SENDS.map(({ seed }) => String(seed)),
  );

  const page = await thePage();

  assert.equal(await page.title(), 'circuit-breaker-hub');
  const status = page.getByTestId('connection-status');
  await page.waitForSelector('[data-testid="connection-status"][data-status="open"]');
  assert.equal(await status.textContent(), 'open');

  // Send one completion per model from the page, each with its own seed.
  for (const send of SENDS) {
    await page.getByTestId('model').selectOption(send.model);
    await page.getByTestId('opt-tools').setChecked(Boolean(send.tool));
    await page.getByTestId('prompt').fill(promptOf(send));
    await page.getByTestId('send').click();
  }
  const panels = page.getByTestId('panel');
  assert.equal(await panels.count(), SENDS.length);
  for (const [i, send] of SENDS.entries()) {
    assert.equal(await panels.nth(i).getByTestId('panel-model').textContent(), send.model);
  }

  // Mid-stream: the last panel has some text, none has all of it. Drop the connection.
  await page.waitForFunction(
    () => [...document.querySelectorAll('[data-testid="panel-text"]')].every((el) => el.textContent.split(' ').length > 10),
  );
  await page.getByTestId('drop-connection').click();
  const atDrop = await page.$$eval('[data-testid="panel-text"]', (els) => els.map((el) => el.textContent));
  for (const [i, send] of SENDS.entries()) {
    const full = expected[send.seed][0];
    assert.ok(atDrop[i].length > 0 && atDrop[i].length < full.length, `panel ${i} was mid-stream at the drop (${atDrop[i].length} of ${full.length} chars)`);
    assert.ok(full.startsWith(atDrop[i]), `panel ${i} text so far is a prefix of the answer`);
  }

  // The SDK reconnects and resumes every stream; the page says so.
  await page.waitForSelector('[data-testid="reconnects"][data-count="1"]');
  await page.waitForSelector('[data-testid="connection-status"][data-status="open"]');
  assert.match(await page.getByTestId('reconnects').textContent(), /reconnected 1× .*4 streams resumed/);

  // Every panel finishes with exactly the mock's text and reasoning, once each.
  await page.waitForFunction(
    (n) => document.querySelectorAll('[data-testid="panel-status"][data-status="done"]').length === n,
    SENDS.length,
  );
  for (const [i, send] of SENDS.entries()) {
    const panel = panels.nth(i);
    const [text, reasoning] = expected[send.seed];
    assert.equal(await panel.getByTestId('panel-text').textContent(), text, `panel ${i} answer`);
    assert.equal(await panel.getByTestId('panel-reasoning').textContent(), reasoning, `panel ${i} reasoning`);
    assert.equal(await panel.getByTestId('panel-status').textContent(), send.tool ? 'done · tool_calls' : 'done · stop');
    assert.equal(await panel.getByTestId('panel-resumed').textContent(), 'resumed ×1');
    assert.match(await panel.getByTestId('panel-ttft').textContent(), /^TTFT \d+(\.\d)? ms \(hub\) · \d+(\.\d)? ms \(page\)$/);
    assert.match(await panel.getByTestId('panel-usage').textContent(), new RegExp(`\\d+ in · ${TOKENS + REASONING} out .*· \\d+ tokens$`));
    const calls = panel.getByTestId('panel-tool-call');
    if (send.tool) {
      assert.equal(await calls.count(), 1);
      assert.equal(await calls.first().textContent(), '🔧 get_weather({"city":"Paris"})');
    } else {
      assert.equal(await calls.count(), 0);
    }
    // Reasoning is shown apart from the answer, collapsed until opened.
    assert.equal(await panel.getByTestId('panel-reasoning-box').evaluate((el) => el.open), false);
  }

  // Open one panel's reasoning for the screenshot (taken after the workflow test).
  await panels.first().locator('summary').click();
  assert.equal(await panels.first().getByTestId('panel-reasoning-box').evaluate((el) => el.open), true);

  assert.deepEqual(problems, []);
});

test('the page runs a workflow: a panel per agent pass, places, log and usage, resumed after a dropped connection', { timeout: 90_000 }, async () => {
  // What the mock answers each agent: the directive in its rendered prompt, or the defaults.
  const expected = expectedAgentTexts('content_creation', WORKFLOW_INPUT);
  const page = await thePage();
  await page.waitForSelector('[data-testid="connection-status"][data-status="open"]');
  const reconnectsBefore = Number(await page.getByTestId('reconnects').getAttribute('data-count'));

  // Workflow mode: the completion composer makes way for the workflow form.
  await page.getByTestId('mode-workflow').click();
  assert.equal(await page.getByTestId('mode-workflow').getAttribute('aria-selected'), 'true');
  assert.equal(await page.getByTestId('composer').isVisible(), false);
  assert.equal(await page.getByTestId('workflow-form').isVisible(), true);
  await page.getByTestId('workflow-definition').selectOption('content_creation');
  await page.getByTestId('workflow-topic').fill(WORKFLOW_INPUT.topic);
  await page.getByTestId('workflow-audience').fill(WORKFLOW_INPUT.audience);
  await page.getByTestId('workflow-run').click();
  const run = page.getByTestId('run');
  assert.equal(await run.count(), 1);
  assert.equal(await run.getByTestId('run-title').textContent(), 'content_creation');

  // While the writer streams its first pass, drop the connection.
  const writerText = '[data-testid="run"] [data-testid="agent"][data-agent-id="writer"][data-pass="1"] [data-testid="agent-text"]';
  await page.waitForFunction((selector) => (document.querySelector(selector)?.textContent.split(' ').length ?? 0) > 5, writerText);
  await page.getByTestId('drop-connection').click();
  const atDrop = await page.locator(writerText).textContent();
  assert.ok(atDrop.length > 0 && atDrop.length < expected.writer.length, `the writer was mid-stream at the drop (${atDrop.length} of ${expected.writer.length} chars)`);
  assert.ok(expected.writer.startsWith(atDrop), 'the writer text so far is a prefix of its answer');
  assert.equal(await run.getByTestId('run-status').getAttribute('data-status'), 'running');

  // The SDK reconnects and resumes the run; the page says so.
  await page.waitForSelector(`[data-testid="reconnects"][data-count="${reconnectsBefore + 1}"]`);
  assert.match(await page.getByTestId('reconnects').textContent(), /, 1 stream resumed$/);
  await page.waitForSelector('[data-testid="run-status"][data-status="done"]');

  // One panel per agent pass, each with exactly the mock's text; the writer's second pass apart.
  const agents = await run.getByTestId('agent').evaluateAll((els) => els.map((el) => ({
    agentId: el.dataset.agentId,
    pass: el.dataset.pass,
    name: el.querySelector('[data-testid="agent-name"]').textContent,
    status: el.querySelector('[data-testid="agent-status"]').textContent,
    model: el.querySelector('[data-testid="agent-model"]').textContent,
    text: el.querySelector('[data-testid="agent-text"]').textContent,
    usage: el.querySelector('[data-testid="agent-usage"]').textContent,
  })));
  const pass = (agentId, n, model) => ({
    agentId, pass: String(n), name: n > 1 ? `${agentId} · pass ${n}` : agentId, status: 'done', model, text: expected[agentId],
  });
  assert.deepEqual(agents.map(({ usage, ...rest }) => rest), [
    pass('researcher', 1, 'openai/gpt-4o-mini'),
    pass('writer', 1, 'anthropic/claude-3-5-haiku-latest'),
    pass('editor', 1, 'google/gemini-2.0-flash'),
    pass('writer', 2, 'anthropic/claude-3-5-haiku-latest'),
  ]);
  for (const agent of agents) assert.match(agent.usage, /^\d+ in · \d+ out$/);

  // The places the token went through, the log, usage, the resume.
  assert.deepEqual(await run.getByTestId('run-place').allTextContents(), ['start', 'researched', 'drafted', 'reviewed', 'revised', 'published']);
  assert.equal(await run.locator('[data-testid="run-place"][aria-current="step"]').textContent(), 'published');
  assert.deepEqual(await run.getByTestId('run-log-entry').allTextContents(), [
    'token created at start',
    'research: start → researched',
    'write: researched → drafted',
    'review: drafted → reviewed',
    'revise: reviewed → revised',
    'rewrite: revised → published',
    'completed at published',
  ]);
  assert.equal(await run.getByTestId('run-status').textContent(), 'done · published');
  assert.match(await run.getByTestId('run-usage').textContent(), /^\d+ in · \d+ out · \d+ tokens$/);
  assert.equal(await run.getByTestId('run-resumed').textContent(), 'resumed ×1');
  assert.equal(await run.getByTestId('run-cancel').isVisible(), false);
  assert.equal(await run.getByTestId('run-error').isVisible(), false);

  // Open the log for the screenshot, then save it (both tests' output on one page).
  await run.locator('.run-log-box > summary').click();
  mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log(`# screenshot: ${SCREENSHOT}`);

  assert.deepEqual(problems, []);
});

/** The page of the hub (the one the first test used, so the screenshot shows both). */
async function thePage() {
  let page = context.pages()[0];
  if (page && page.url().startsWith(hub.url)) return page;
  page ??= await context.newPage();
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  await page.goto(`${hub.url}/`);
  return page;
}
