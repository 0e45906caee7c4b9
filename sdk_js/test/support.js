// Test support: a real hub and mock provider as child processes, the mock's expected text,
// a fake WebSocket for tests that script the hub's side, and a small JSON Schema check.
//
// The Python is $CBHUB_PYTHON (default: the checkout's .venv/bin/python when it exists, else
// python3) and must have the hub installed (CI sets it to the virtualenv's). A relative path in
// it (`CBHUB_PYTHON=../.venv/bin/python`, with a slash) is resolved against the directory the
// command was typed in (npm's INIT_CWD, else the current directory), not against the checkout
// root the servers run in; a bare name (`python3.12`) is looked up on PATH. When it cannot run
// the mock or the hub, the error says what to set. Servers run on 127.0.0.1 with port 0 and
// print `listening on http://...`.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SCHEMA } from '../src/protocol.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const VENV_PYTHON = `${ROOT}.venv/bin/python`;

/** `$CBHUB_PYTHON` as a command: a path with a slash made absolute against where the command
 * was typed (spawn runs it with cwd ROOT, where a relative path would name another file). */
export function resolvePython(value, typedIn = process.env.INIT_CWD || process.cwd()) {
  return value.includes('/') ? path.resolve(typedIn, value) : value;
}

export const PYTHON = process.env.CBHUB_PYTHON
  ? resolvePython(process.env.CBHUB_PYTHON) : (existsSync(VENV_PYTHON) ? VENV_PYTHON : 'python3');
/** What to do when PYTHON cannot run the hub: appended to the errors of the servers it starts. */
export const PYTHON_HINT = `${PYTHON} (${process.env.CBHUB_PYTHON ? '$CBHUB_PYTHON' : 'the default'}) must be a Python with the hub `
  + `installed: create the checkout's virtualenv (python3 -m venv .venv && .venv/bin/pip install -e '.[test]' in ${ROOT}) `
  + `or set CBHUB_PYTHON to such a Python, e.g. CBHUB_PYTHON=${VENV_PYTHON} npm test`;
export const MODEL = 'openai/gpt-4o-mini';
/** Upper bound for anything a test waits on: a safety net, never a measured timing. */
export const TIMEOUT_MS = 10_000;

const LISTENING = /listening on (http:\/\/[0-9.]+:\d+)/;

/** Start `python -m <module> ...args`; resolves once it printed its URL. */
export function startServer(name, args, env = {}) {
  const child = spawn(PYTHON, ['-m', ...args], {
    cwd: ROOT,
    env: { ...process.env, PYTHONUNBUFFERED: '1', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
  };
  return new Promise((resolve, reject) => {
    let output = '';
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`${name} did not start within 20 s: ${output}`));
    }, 20_000);
    const onData = (chunk) => {
      output += chunk;
      const match = LISTENING.exec(output);
      if (match) {
        clearTimeout(timer);
        child.stdout.off('data', onData);
        child.stdout.resume(); // keep draining
        resolve({ url: match[1], stop, child });
      }
    };
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', onData);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`${name}: cannot run ${PYTHON}: ${error.message}\n${PYTHON_HINT}`));
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before listening: ${output}\n${PYTHON_HINT}`));
    });
  });
}

/** The environment of a hub whose providers all point at the mock (tools/bench/procs.py hub_env). */
export function hubEnv(mockUrl, config = {}) {
  const env = {
    OPENAI_API_KEY: 'test-key',
    OPENAI_BASE_URL: `${mockUrl}/v1`,
    ANTHROPIC_API_KEY: 'test-key',
    ANTHROPIC_BASE_URL: mockUrl,
    GEMINI_API_KEY: 'test-key',
    GEMINI_BASE_URL: mockUrl,
    OLLAMA_HOST: mockUrl,
    CBHUB_SHUTDOWN_DRAIN_TIMEOUT_S: '0',
    CBHUB_DEAD_LETTER_PATH: '',
  };
  for (const [key, value] of Object.entries(config)) env[`CBHUB_${key.toUpperCase()}`] = String(value);
  return env;
}

export function startMock() {
  return startServer('mock provider', ['hub.testing.mock_provider', '--port', '0']);
}

/** A hub against the mock at `mockUrl`; `config` adds CBHUB_<KEY> settings. */
export async function startHub(mockUrl, config = {}) {
  const hub = await startServer('hub', ['hub.cli', 'serve', '--port', '0', '--log-level', 'WARNING'], hubEnv(mockUrl, config));
  return { ...hub, wsUrl: `${hub.url.replace('http', 'ws')}/ws/stream` };
}

/** Run PYTHON with `args` in the checkout; its stdout. A failure's error says what to set. */
export function runPython(args) {
  try {
    return execFileSync(PYTHON, args, {
      cwd: ROOT, encoding: 'utf8', env: { ...process.env, PYTHONIOENCODING: 'utf-8' },
    });
  } catch (error) {
    error.message += `\n${PYTHON_HINT}`;
    throw error;
  }
}

const expectedCache = new Map();

/** The answer text of `[[mock tokens=N seed=S]]` (hub/testing/mock_provider.py expected_text). */
export function expectedText(tokens, seed = 0) {
  const key = `${tokens}:${seed}`;
  if (!expectedCache.has(key)) {
    const code = `import sys; from hub.testing.mock_provider import expected_text; sys.stdout.write(expected_text(${tokens}, ${seed}))`;
    expectedCache.set(key, runPython(['-c', code]));
  }
  return expectedCache.get(key);
}

/**
 * The answer text the mock gives each agent of a workflow definition run with `input`: the
 * directive in the agent's rendered prompt (or the mock's defaults when there is none), as
 * `{agentId: text}`. The prompts are rendered with the input only: the mock's answers, which
 * later prompts quote, never carry a directive.
 */
export function expectedAgentTexts(definitionName, input) {
  const code = [
    'import json, sys',
    'from hub.workflows import named_definition, render',
    'from hub.testing.mock_provider import Directive, expected_text',
    'definition = named_definition(sys.argv[1])',
    'data = {"input": json.loads(sys.argv[2]), "results": {}}',
    'out = {}',
    'for agent in definition.agents:',
    '    d = Directive.parse((agent.system or "") + render(agent.prompt, data))',
    '    out[agent.id] = expected_text(d.tokens, d.seed)',
    'sys.stdout.write(json.dumps(out))',
  ].join('\n');
  return JSON.parse(runPython(['-c', code, definitionName, JSON.stringify(input)]));
}

/**
 * A `ws` WebSocket class that records what the client sends; while `gate.closed` is true it
 * connects to a closed port instead (the connection fails with 1006), which keeps the client
 * away from the hub for as long as a test needs.
 */
export function testSocket(WebSocket, sent = [], gate = { closed: false }) {
  return class extends WebSocket {
    constructor(url) {
      super(gate.closed ? 'ws://127.0.0.1:1/' : url);
    }

    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
  };
}

/** A user message carrying a mock directive. */
export function ask(directive, text = 'Hi') {
  return [{ role: 'user', content: `${text} [[mock ${directive}]]` }];
}

/** Resolve when `predicate()` holds (checked every 5 ms), reject after TIMEOUT_MS. */
export async function waitFor(predicate, what = 'condition') {
  const deadline = Date.now() + TIMEOUT_MS;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Reject after TIMEOUT_MS unless `promise` settles first. */
export function withTimeout(promise, what = 'promise') {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A minimal JSON Schema check covering what msgspec's schemas use: $ref, anyOf, enum, type,
// properties, required, additionalProperties, items. Returns a list of problems (empty: valid).
export function validate(value, schema = SCHEMA.HubMessage, path = '$') {
  if (schema.$ref) return validate(value, SCHEMA.$defs[schema.$ref.split('/').pop()], path);
  if (schema.anyOf) {
    if (schema.discriminator && value && typeof value === 'object') {
      const ref = schema.discriminator.mapping[value[schema.discriminator.propertyName]];
      if (!ref) return [`${path}: unknown ${schema.discriminator.propertyName} ${JSON.stringify(value.type)}`];
      return validate(value, { $ref: ref }, path);
    }
    const results = schema.anyOf.map((option) => validate(value, option, path));
    return results.some((problems) => problems.length === 0) ? [] : [`${path}: matches none of ${JSON.stringify(schema.anyOf)}`];
  }
  if (schema.enum) return schema.enum.includes(value) ? [] : [`${path}: ${JSON.stringify(value)} not in ${schema.enum}`];
  const type = schema.type;
  const typeOk = {
    undefined: () => true,
    string: () => typeof value === 'string',
    integer: () => Number.isInteger(value),
    number: () => typeof value === 'number',
    boolean: () => typeof value === 'boolean',
    null: () => value === null,
    array: () => Array.isArray(value),
    object: () => value !== null && typeof value === 'object' && !Array.isArray(value),
  }[type];
  if (!typeOk()) return [`${path}: expected ${type}, got ${JSON.stringify(value)}`];
  const problems = [];
  if (type === 'array' && schema.items) value.forEach((item, i) => problems.push(...validate(item, schema.items, `${path}[${i}]`)));
  if (type === 'object') {
    for (const key of schema.required ?? []) if (!(key in value)) problems.push(`${path}: missing ${key}`);
    for (const [key, item] of Object.entries(value)) {
      const property = schema.properties?.[key];
      if (property) problems.push(...validate(item, property, `${path}.${key}`));
      else if (schema.additionalProperties === false) problems.push(`${path}: unknown field ${key}`);
      else if (typeof schema.additionalProperties === 'object') problems.push(...validate(item, schema.additionalProperties, `${path}.${key}`));
    }
  }
  return problems;
}

/**
 * A WebSocket whose hub side the test plays: `FakeSocket.last` is the newest instance;
 * `sent` holds the parsed client messages; `open()`, `receive(message)`, `serverClose(code)`.
 */
export class FakeSocket {
  static instances = [];

  static get last() {
    return FakeSocket.instances.at(-1);
  }

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.instances.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(JSON.parse(data));
  }

  close(code = 1000, reason = '') {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    queueMicrotask(() => this.serverClose(1000, reason));
  }

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(...messages) {
    for (const message of messages) this.onmessage?.({ data: typeof message === 'string' ? message : JSON.stringify(message) });
  }

  serverClose(code, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

/**
 * Every channel message follows the previous one without a gap (a merged chunk covers
 * firstSeq..seq). After a snapshot (message type `snapshotType`), the synthetic messages that
 * carry what it added have its seq: for a completion `snapshot` they may also be older (tool
 * calls keep theirs); for a `workflow_snapshot` they must be exactly its seq.
 */
export function assertGapFree(events, snapshotType = 'snapshot') {
  const olderAllowed = snapshotType === 'snapshot';
  let last = 0;
  let snapshotSeq = -1;
  for (const event of events) {
    if (typeof event.seq !== 'number') continue;
    if (event.type === snapshotType) {
      assert.ok(event.seq > last, `snapshot at ${event.seq} after ${last}`);
      last = snapshotSeq = event.seq;
      continue;
    }
    if (olderAllowed ? event.seq <= snapshotSeq : event.seq === snapshotSeq) continue;
    const first = event.firstSeq ?? event.seq;
    assert.equal(first, last + 1, `${event.type} seq ${first}..${event.seq} after ${last}`);
    last = event.seq;
  }
}
