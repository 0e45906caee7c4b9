// Workflows through the SDK: client.workflow(), subscribeWorkflow(), cancelWorkflow() against a
// real hub (python -m hub.cli serve) and the mock provider, and the resume rules of workflow
// channels against a scripted hub (FakeSocket).
//
// content_creation runs researcher, writer, editor, then (the mock's editor never answers
// APPROVED) the writer a second time. A mock directive in the input's topic reaches every
// agent whose prompt quotes the topic; expectedAgentTexts() renders the prompts to find out
// what each agent's answer is.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import WebSocket from 'ws';
import { HubError, createClient } from '../src/index.js';
import { FakeSocket, assertGapFree, expectedAgentTexts, expectedText, startHub, startMock, testSocket, validate, waitFor, withTimeout } from './support.js';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** What content_creation does with the mock: every transition, and the agent of each pass. */
const TRANSITIONS = ['research', 'write', 'review', 'revise', 'rewrite'];
const PASSES = ['researcher', 'writer', 'editor', 'writer'];

/** Handlers that record everything, and the recording. `passes`: each agent pass's text, from
 * onAgentProgress, closed by onAgentCompleted (`result` is the hub's). */
function recorder() {
  const seen = { events: [], transitions: [], started: [], functions: [], passes: [], snapshots: [], completed: [], errors: [] };
  const open = new Map();
  const handlers = {
    onEvent: (message) => seen.events.push(message),
    onTransition: (message) => seen.transitions.push(message.transitionId),
    onAgentStarted: (agentId, message) => {
      assert.equal(agentId, message.agentId);
      seen.started.push(agentId);
    },
    onAgentProgress: (agentId, delta, message) => {
      assert.equal(agentId, message.agentId);
      assert.equal(delta, message.content ?? '');
      open.set(agentId, (open.get(agentId) ?? '') + delta);
    },
    onFunction: (message) => seen.functions.push(message),
    onAgentCompleted: (agentId, result) => {
      seen.passes.push({ agentId, text: open.get(agentId) ?? '', result });
      open.delete(agentId);
    },
    onSnapshot: (snapshot) => seen.snapshots.push(snapshot),
    onComplete: (result) => seen.completed.push(result),
    onError: (error) => seen.errors.push(error),
  };
  return { seen, handlers };
}

/** The events without agent_progress, as `type agentId|transitionId`. */
function outline(events) {
  return events
    .filter((e) => e.type !== 'agent_progress')
    .map((e) => [e.type, e.agentId ?? e.transitionId].filter(Boolean).join(' '));
}

const CONTENT_CREATION_OUTLINE = [
  'token_created',
  'agent_started researcher', 'agent_completed researcher', 'workflow_transition research',
  'agent_started writer', 'agent_completed writer', 'workflow_transition write',
  'agent_started editor', 'agent_completed editor', 'workflow_transition review',
  'workflow_transition revise',
  'agent_started writer', 'agent_completed writer', 'workflow_transition rewrite',
  'workflow_completed',
];

describe('workflows against the hub', () => {
  let mock;
  let hub;
  let small;

  before(async () => {
    mock = await startMock();
    hub = await startHub(mock.url);
  });

  after(async () => {
    await small?.stop();
    await hub?.stop();
    await mock?.stop();
  });

  function client(t, options = {}) {
    const c = createClient({ url: hub.wsUrl, WebSocket, reconnect: { baseDelayMs: 20, maxDelayMs: 200 }, ...options });
    t.after(() => c.close());
    return c;
  }

  const input = (directive) => ({ topic: `tea [[mock ${directive}]]`, audience: 'children' });

  test('content_creation: the events in order, every agent pass with its exact text, the result', async (t) => {
    const c = client(t);
    const runInput = input('tokens=12 tps=200 seed=3');
    const expected = expectedAgentTexts('content_creation', runInput);
    const { seen, handlers } = recorder();
    const run = c.workflow({ definitionName: 'content_creation', input: runInput }, handlers);
    assert.match(run.id, /^js-wf-/);
    assert.equal(run.channel, `workflow:${run.id}`);
    const iterated = [];
    for await (const event of run) iterated.push(event);
    const result = await run.result;

    assert.deepEqual(outline(iterated), CONTENT_CREATION_OUTLINE);
    assert.deepEqual(iterated, seen.events);
    assertGapFree(iterated, 'workflow_snapshot');
    for (const event of iterated) assert.deepEqual(validate(event), [], JSON.stringify(event));
    // Every agent pass streams at least one piece between its start and its completion.
    let current = null;
    for (const event of iterated) {
      if (event.type === 'agent_started') current = event.agentId;
      else if (event.type === 'agent_progress') assert.equal(event.agentId, current);
      else if (event.type === 'agent_completed') current = null;
    }
    for (const agentId of new Set(PASSES)) {
      assert.ok(iterated.some((e) => e.type === 'agent_progress' && e.agentId === agentId), `${agentId} progress`);
    }

    assert.deepEqual(seen.started, PASSES);
    assert.deepEqual(seen.transitions, TRANSITIONS);
    assert.deepEqual(seen.passes, PASSES.map((agentId) => ({ agentId, text: expected[agentId], result: expected[agentId] })));
    assert.equal(expected.researcher, expected.writer, 'the topic directive reaches researcher and writer alike');

    assert.equal(result.workflowId, run.id);
    assert.equal(result.place, 'published');
    assert.deepEqual(result.data.input, runInput);
    assert.deepEqual(result.results, expected);
    assert.deepEqual(result.data.results, expected);
    const usages = iterated.filter((e) => e.type === 'agent_completed').map((e) => e.usage);
    assert.equal(result.usage.completionTokens, usages.reduce((sum, u) => sum + u.completionTokens, 0));
    assert.equal(result.usage.totalTokens, usages.reduce((sum, u) => sum + u.totalTokens, 0));
    assert.deepEqual(seen.completed, [result]);
    assert.deepEqual(seen.errors, []);
    assert.deepEqual(seen.snapshots, []);
    // Iterating again replays the same events.
    const again = [];
    for await (const event of run) again.push(event);
    assert.deepEqual(again, iterated);
  });

  for (const batch of [false, true]) {
    test(`dropping the socket mid-run loses and repeats nothing (batch: ${batch})`, async (t) => {
      const sent = [];
      const gate = { closed: false };
      const reconnects = [];
      const c = client(t, { batch, WebSocket: testSocket(WebSocket, sent, gate), onReconnect: (info) => reconnects.push(info) });
      const runInput = input('tokens=40 tps=200 seed=5');
      const expected = expectedAgentTexts('content_creation', runInput);
      const { seen, handlers } = recorder();
      const run = c.workflow({ definitionName: 'content_creation', workflowId: `drop-${batch}-${Date.now()}`, input: runInput }, handlers);
      // Mid-run: the writer has begun its first pass.
      await waitFor(() => seen.events.some((e) => e.type === 'agent_progress' && e.agentId === 'writer'), "the writer's first text");
      gate.closed = true;
      c.dropConnection();
      const atDrop = seen.events.length;
      await sleep(150); // the run goes on without us: those messages come from the history
      gate.closed = false;
      const result = await withTimeout(run.result, 'the result');

      assert.ok(seen.events.length > atDrop);
      assert.deepEqual(outline(seen.events), CONTENT_CREATION_OUTLINE);
      assertGapFree(seen.events, 'workflow_snapshot');
      assert.deepEqual(seen.snapshots, [], 'recovered from the history');
      assert.deepEqual(seen.passes, PASSES.map((agentId) => ({ agentId, text: expected[agentId], result: expected[agentId] })));
      assert.deepEqual(result.results, expected);
      assert.equal(reconnects.length, 1);
      assert.deepEqual(reconnects[0].channels, [run.channel]);

      // The resume: subscribe_workflow with the cursor of the last message delivered.
      const resumes = sent.filter((m) => m.type === 'subscribe_workflow');
      assert.equal(resumes.length, 1);
      assert.equal(resumes[0].workflowId, run.id);
      assert.equal(typeof resumes[0].since.epoch, 'string');
      assert.equal(resumes[0].since.seq, seen.events[atDrop - 1].seq);
      assert.equal(sent.filter((m) => m.type === 'create_workflow').length, 1);
    });
  }

  test('a second client subscribes mid-run: the history from the start, then live, the same messages', async (t) => {
    const a = client(t);
    const b = client(t);
    const first = recorder();
    const second = recorder();
    const run = a.workflow({ definitionName: 'content_creation', input: input('tokens=30 tps=300 seed=8') }, first.handlers);
    await waitFor(() => first.seen.started.length >= 2, 'the writer');
    const dispose = b.subscribeWorkflow(run.id, second.handlers);
    const result = await withTimeout(run.result, 'the result');
    await waitFor(() => second.seen.completed.length === 1, "the subscriber's onComplete");
    dispose();
    assert.deepEqual(second.seen.events, first.seen.events);
    assert.deepEqual(second.seen.passes, first.seen.passes);
    assert.deepEqual(second.seen.completed, [result]);
  });

  test('cancelWorkflow stops the run: HubError cancelled; unknown ids are refused', async (t) => {
    const c = client(t);
    const { seen, handlers } = recorder();
    const run = c.workflow({ definitionName: 'content_creation', input: input('tokens=400 tps=100') }, handlers);
    await waitFor(() => seen.events.some((e) => e.type === 'agent_progress'), 'the first text');
    await withTimeout(c.cancelWorkflow(run.id), 'the cancel');
    const error = await run.result.catch((e) => e);
    assert.ok(error instanceof HubError);
    assert.equal(error.code, 'cancelled');
    assert.equal(error.workflowId, run.id);
    assert.equal(error.event.type, 'error');
    assert.deepEqual(seen.errors, [error]);
    assert.deepEqual(seen.passes, [], 'the researcher never completed');
    assert.deepEqual(seen.completed, []);
    await assert.rejects(async () => {
      for await (const event of run) assert.notEqual(event.type, 'error');
    }, (e) => e === error);
    await assert.rejects(c.cancelWorkflow('no-such-workflow'), (e) => e.code === 'unknown_workflow');
  });

  test('stream.cancel() of a workflow stream', async (t) => {
    const c = client(t);
    const run = c.workflow({ definitionName: 'content_creation', input: input('tokens=400 tps=100') });
    for await (const event of run) {
      if (event.type === 'agent_started') break;
    }
    await withTimeout(run.cancel(), 'the cancel');
    await assert.rejects(run.result, (e) => e.code === 'cancelled');
  });

  test('refused runs: unknown definition, invalid inline definition, duplicate id', async (t) => {
    const a = client(t);
    const b = client(t);
    const unknown = await a.workflow({ definitionName: 'no_such_flow' }).result.catch((e) => e);
    assert.equal(unknown.code, 'unknown_workflow_definition');
    const invalid = await a.workflow({ definition: { places: ['a'], initialPlace: 'b', transitions: [] } }).result.catch((e) => e);
    assert.equal(invalid.code, 'invalid_workflow');
    assert.match(invalid.message, /initialPlace/);
    const workflowId = `dup-wf-${Date.now()}`;
    await a.workflow({ workflowId, definitionName: 'content_creation', input: input('tokens=2') }).result;
    const duplicate = await b.workflow({ workflowId, definitionName: 'content_creation', input: input('tokens=2') }).result.catch((e) => e);
    assert.equal(duplicate.code, 'duplicate_id');
  });

  test('an inline definition whose agent calls a registered function: onFunction, then the answer', async (t) => {
    const c = client(t);
    const definition = {
      places: ['start', 'done'],
      initialPlace: 'start',
      agents: [{ id: 'forecaster', model: 'openai/gpt-4o-mini', tools: ['get_weather'], prompt: 'Weather? [[mock tokens=3 seed=4 tool=get_weather]]' }],
      transitions: [{ id: 'forecast', from: 'start', to: 'done', agent: 'forecaster' }],
    };
    const { seen, handlers } = recorder();
    const run = c.workflow({ definition, input: {} }, handlers);
    const result = await withTimeout(run.result, 'the result');
    // The mock calls the tool, the hub runs get_weather and asks again with its result; the
    // mock answers a request that carries a tool result without calling the tool again.
    assert.deepEqual(outline(seen.events), [
      'token_created', 'agent_started forecaster', 'function_executed forecaster', 'agent_completed forecaster',
      'workflow_transition forecast', 'workflow_completed',
    ]);
    assert.equal(seen.functions.length, 1);
    const [call] = seen.functions;
    assert.equal(call.name, 'get_weather');
    assert.deepEqual(call.arguments, { city: 'Paris' });
    assert.deepEqual(call.result, { city: 'Paris', temperature_c: 16, conditions: 'light rain' });
    assert.equal(call.error ?? null, null);
    assert.match(call.callId, /^call_/);
    // The agent's text streams from both rounds; its result is the answer of the last one.
    const answer = expectedText(3, 4);
    assert.deepEqual(seen.passes, [{ agentId: 'forecaster', text: answer + answer, result: answer }]);
    assert.deepEqual(result.results, { forecaster: answer });
    assertGapFree(seen.events, 'workflow_snapshot');
    for (const event of seen.events) assert.deepEqual(validate(event), [], JSON.stringify(event));
  });

  test('an agent that fails fails the run with its error', async (t) => {
    const c = client(t);
    const run = c.workflow({ definitionName: 'content_creation', input: input('status=401') });
    const error = await withTimeout(run.result.catch((e) => e), 'the end');
    assert.equal(error.code, 'auth_failed');
    assert.equal(error.workflowId, run.id);
    assert.match(error.message, /researcher/);
  });

  describe('resume from a workflow_snapshot (history of 3 messages)', () => {
    before(async () => {
      small = await startHub(mock.url, { history_max_events: 3 });
    });

    test('the history cannot cover the gap: one snapshot, then the rest; no agent text twice, none lost', async (t) => {
      const sent = [];
      const gate = { closed: false };
      const c = createClient({ url: small.wsUrl, WebSocket: testSocket(WebSocket, sent, gate), reconnect: { baseDelayMs: 20, maxDelayMs: 100 } });
      t.after(() => c.close());
      const runInput = input('tokens=40 tps=200 seed=9');
      const expected = expectedAgentTexts('content_creation', runInput);
      const { seen, handlers } = recorder();
      const run = c.workflow({ definitionName: 'content_creation', input: runInput }, handlers);
      const iterated = [];
      const iterating = (async () => {
        for await (const event of run) iterated.push(event);
      })();
      await waitFor(() => seen.events.filter((e) => e.type === 'agent_progress').length >= 3, 'three pieces of text');
      gate.closed = true;
      c.dropConnection();
      await sleep(250); // far more than 3 messages pass
      gate.closed = false;
      const result = await withTimeout(run.result, 'the result');
      await iterating;

      assert.equal(seen.snapshots.length, 1);
      assert.deepEqual(validate(seen.snapshots[0]), []);
      assert.deepEqual(iterated, seen.events);
      assertGapFree(iterated, 'workflow_snapshot');
      for (const event of iterated) assert.deepEqual(validate(event), [], JSON.stringify(event));
      // Each pass the client saw complete came with exactly its text; the last result of every
      // agent is the mock's answer. (A pass that ran entirely while the client was away and
      // gave the same text as the one before cannot be told apart from it: not repeated.)
      assert.ok(seen.passes.length >= 3);
      for (const pass of seen.passes) {
        assert.equal(pass.text, pass.result, `${pass.agentId}'s text`);
        assert.equal(pass.result, expected[pass.agentId]);
      }
      assert.deepEqual([...new Set(seen.passes.map((p) => p.agentId))].sort(), ['editor', 'researcher', 'writer']);
      assert.deepEqual(result.results, expected);
      assert.deepEqual(seen.completed, [result]);
      assert.equal(sent.filter((m) => m.type === 'subscribe_workflow' && m.since).length, 1);
    });
  });
});

describe('workflow channels against a scripted hub', () => {
  const URL = 'ws://hub.test/ws/stream';
  const fakeClient = (options = {}) => createClient({ url: URL, WebSocket: FakeSocket, reconnect: { baseDelayMs: 1, maxDelayMs: 1 }, ...options });
  const ack = (channel, epoch, seq, recovered, extra = {}) => ({
    type: 'subscribed', channels: [channel], epochs: { [channel]: epoch }, seqs: { [channel]: seq }, recovered: { [channel]: recovered }, ...extra,
  });
  const W = 'w1';
  const created = (seq = 1) => ({ type: 'token_created', workflowId: W, seq, tokenId: 'w1.token', place: 'start', data: { input: {}, results: {} } });
  const started = (seq, agentId, place) => ({ type: 'agent_started', workflowId: W, seq, agentId, place, completionId: `${W}.${agentId}.${seq}`, model: 'm' });
  const progress = (seq, agentId, content) => ({ type: 'agent_progress', workflowId: W, seq, agentId, progress: 0.1, content });
  const completed = (seq, agentId, result) => ({ type: 'agent_completed', workflowId: W, seq, agentId, result });
  const moved = (seq, transitionId, fromPlace, toPlace, results) => ({ type: 'workflow_transition', workflowId: W, seq, tokenId: 'w1.token', transitionId, fromPlace, toPlace, data: { input: {}, results } });
  const snapshot = (seq, status, place, results, agentId, agentContent, epoch = 'E1') => ({
    type: 'workflow_snapshot', workflowId: W, channel: `workflow:${W}`, epoch, seq, status, place, data: { input: {}, results }, agentId, agentContent,
  });

  async function nextSocket(previous) {
    await waitFor(() => FakeSocket.last !== previous, 'a new socket');
    FakeSocket.last.open();
    return FakeSocket.last;
  }

  /** A run of w1 on a fake hub, dropped after `before` messages; returns the second socket. */
  async function dropped(c, handlers, before) {
    const run = c.workflow({ workflowId: W, definitionName: 'flow', input: { topic: 't' } }, handlers);
    const first = FakeSocket.last;
    first.open();
    assert.deepEqual(first.sent, [{ type: 'create_workflow', workflowId: W, input: { topic: 't' }, definitionName: 'flow' }]);
    first.receive(ack(`workflow:${W}`, 'E1', 0, true, { workflowId: W }), ...before);
    first.serverClose(1006);
    const second = await nextSocket(first);
    const last = before.at(-1).seq;
    assert.deepEqual(second.sent, [{ type: 'subscribe_workflow', workflowId: W, since: { seq: last, epoch: 'E1' } }]);
    return { run, second };
  }

  /** `[type, seq, what, text]` of each message. */
  const summary = (events) => events.map((e) => {
    switch (e.type) {
      case 'agent_progress':
        return [e.type, e.seq, e.agentId, e.content];
      case 'agent_completed':
        return [e.type, e.seq, e.agentId, e.result];
      case 'workflow_snapshot':
        return [e.type, e.seq, e.place, e.agentContent];
      case 'workflow_completed':
        return [e.type, e.seq, e.place, ''];
      default:
        return [e.type, e.seq, e.agentId ?? e.transitionId ?? e.place ?? e.error?.code, ''];
    }
  });

  beforeEach(() => {
    FakeSocket.instances = [];
  });

  test('the same agent pass continues: only the missing text', async () => {
    const c = fakeClient();
    const { seen, handlers } = recorder();
    const { run, second } = await dropped(c, handlers, [created(), started(2, 'a', 'start'), progress(3, 'a', 'ab')]);
    second.receive(ack(`workflow:${W}`, 'E1', 6, false), snapshot(6, 'running', 'start', {}, 'a', 'abcd'));
    second.receive(progress(5, 'a', 'c'), progress(7, 'a', 'ef'), completed(8, 'a', 'abcdef'));
    second.receive(moved(9, 't', 'start', 'end', { a: 'abcdef' }), { type: 'workflow_completed', workflowId: W, seq: 10, place: 'end', result: { input: {}, results: { a: 'abcdef' } }, usage: { promptTokens: 1, completionTokens: 2, totalTokens: 3 } });
    const result = await run.result;
    assert.deepEqual(seen.passes, [{ agentId: 'a', text: 'abcdef', result: 'abcdef' }]);
    assert.deepEqual(summary(seen.events).slice(3, 5), [['workflow_snapshot', 6, 'start', 'abcd'], ['agent_progress', 6, 'a', 'cd']]);
    assert.equal(result.usage.totalTokens, 3);
    assert.deepEqual(second.sent.at(-1), { type: 'unsubscribe', channels: [`workflow:${W}`] });
  });

  test('passes that ended and began meanwhile: the rest of the one streaming, the ones missed, the one at work', async () => {
    const c = fakeClient();
    const { seen, handlers } = recorder();
    const { run, second } = await dropped(c, handlers, [
      created(), started(2, 'r', 'start'), progress(3, 'r', 'R'), completed(4, 'r', 'R'), moved(5, 'research', 'start', 'researched', { r: 'R' }),
      started(6, 'w', 'researched'), progress(7, 'w', 'ab'),
    ]);
    // Meanwhile: the writer finished ('abcd'), the editor ran ('E'), the writer is at work again.
    second.receive(ack(`workflow:${W}`, 'E1', 20, false), snapshot(20, 'running', 'revised', { r: 'R', w: 'abcd', e: 'E' }, 'w', 'xy'));
    second.receive(progress(21, 'w', 'z'), completed(22, 'w', 'xyz'));
    second.receive({ type: 'workflow_completed', workflowId: W, seq: 23, place: 'published', result: { input: {}, results: { r: 'R', w: 'xyz', e: 'E' } } });
    await run.result;
    assert.deepEqual(summary(seen.events.slice(7)), [
      ['workflow_snapshot', 20, 'revised', 'xy'],
      ['agent_progress', 20, 'w', 'cd'],
      ['agent_completed', 20, 'w', 'abcd'],
      ['agent_progress', 20, 'e', 'E'],
      ['agent_completed', 20, 'e', 'E'],
      ['agent_progress', 20, 'w', 'xy'],
      ['agent_progress', 21, 'w', 'z'],
      ['agent_completed', 22, 'w', 'xyz'],
      ['workflow_completed', 23, 'published', ''],
    ]);
    assert.deepEqual(seen.passes, [
      { agentId: 'r', text: 'R', result: 'R' },
      { agentId: 'w', text: 'abcd', result: 'abcd' },
      { agentId: 'e', text: 'E', result: 'E' },
      { agentId: 'w', text: 'xyz', result: 'xyz' },
    ]);
    for (const event of seen.events) assert.deepEqual(validate(event), [], JSON.stringify(event));
  });

  test('a run that ended meanwhile: its end comes from the snapshot (usage unknown; a failure says so)', async () => {
    const c = fakeClient();
    const { seen, handlers } = recorder();
    const { run, second } = await dropped(c, handlers, [created(), started(2, 'a', 'start'), progress(3, 'a', 'ab')]);
    second.receive(ack(`workflow:${W}`, 'E1', 9, false), snapshot(9, 'completed', 'end', { a: 'abc' }, null, 'abc'));
    const result = await run.result;
    assert.deepEqual(seen.passes, [{ agentId: 'a', text: 'abc', result: 'abc' }]);
    assert.deepEqual(result, { workflowId: W, place: 'end', data: { input: {}, results: { a: 'abc' } }, results: { a: 'abc' }, usage: null });

    FakeSocket.instances = [];
    const d = fakeClient();
    const failed = recorder();
    const next = await dropped(d, failed.handlers, [created(), started(2, 'a', 'start'), progress(3, 'a', 'ab')]);
    next.second.receive(ack(`workflow:${W}`, 'E1', 9, false), snapshot(9, 'failed', 'start', {}, null, 'ab'));
    await assert.rejects(next.run.result, (e) => e.code === 'workflow_failed' && e.workflowId === W);
    assert.deepEqual(failed.seen.passes, []);
  });

  test('a late subscriber gets a snapshot first: every result, then the pass at work', async () => {
    const c = fakeClient();
    const { seen, handlers } = recorder();
    c.subscribeWorkflow(W, handlers);
    const socket = FakeSocket.last;
    socket.open();
    assert.deepEqual(socket.sent, [{ type: 'subscribe_workflow', workflowId: W }]);
    socket.receive(ack(`workflow:${W}`, 'E1', 30, false), snapshot(30, 'running', 'drafted', { r: 'R', w: 'W' }, 'e', 'e1'));
    socket.receive(progress(31, 'e', 'e2'), completed(32, 'e', 'e1e2'));
    assert.deepEqual(seen.passes, [
      { agentId: 'r', text: 'R', result: 'R' },
      { agentId: 'w', text: 'W', result: 'W' },
      { agentId: 'e', text: 'e1e2', result: 'e1e2' },
    ]);
    c.close();
  });

  test('another run under the same id (a new epoch) fails the stream: resume_failed', async () => {
    const c = fakeClient();
    const { run, second } = await dropped(c, {}, [created(), started(2, 'a', 'start')]);
    second.receive(ack(`workflow:${W}`, 'E2', 4, false), snapshot(4, 'running', 'start', {}, 'a', 'zz', 'E2'));
    await assert.rejects(run.result, (e) => e.code === 'resume_failed' && e.workflowId === W);
    c.close();
  });

  test('a jump in seq fails the run with stream_gap', async () => {
    const c = fakeClient();
    const run = c.workflow({ workflowId: W, definitionName: 'flow' });
    const socket = FakeSocket.last;
    socket.open();
    socket.receive(ack(`workflow:${W}`, 'E1', 0, true, { workflowId: W }), created(1), progress(3, 'a', 'x'));
    await assert.rejects(run.result, (e) => e.code === 'stream_gap' && e.workflowId === W);
    c.close();
  });

  test('a create_workflow whose answer was lost: subscribe first, send it again if the hub never had it', async () => {
    const c = fakeClient();
    const run = c.workflow({ workflowId: 'w2', definition: { places: ['a'] }, input: { x: 1 } });
    const first = FakeSocket.last;
    first.open();
    first.serverClose(1006);
    const second = await nextSocket(first);
    assert.deepEqual(second.sent, [{ type: 'subscribe_workflow', workflowId: 'w2' }]);
    second.receive({ type: 'error', error: { code: 'unknown_channel', message: 'no channel', retryable: false } });
    assert.deepEqual(second.sent.at(-1), { type: 'create_workflow', workflowId: 'w2', input: { x: 1 }, definition: { places: ['a'] } });
    second.receive(ack('workflow:w2', 'E', 0, true, { workflowId: 'w2' }));
    second.receive({ type: 'workflow_completed', workflowId: 'w2', seq: 1, place: 'a', result: { input: { x: 1 }, results: {} } });
    assert.equal((await run.result).place, 'a');
    c.close();
  });

  test('cancelWorkflow: cancel_workflow with a rid; the ack echoing it resolves it, the error echoing it rejects it', async () => {
    const c = fakeClient();
    const socket = FakeSocket.last;
    socket.open();
    const ok = c.cancelWorkflow('w1');
    const bad = c.cancelWorkflow('nope');
    const [first, second] = socket.sent;
    assert.deepEqual(socket.sent, [
      { type: 'cancel_workflow', workflowId: 'w1', rid: first.rid },
      { type: 'cancel_workflow', workflowId: 'nope', rid: second.rid },
    ]);
    socket.receive({ type: 'ack', rid: first.rid }, { type: 'error', error: { code: 'unknown_workflow', message: 'no', retryable: false }, rid: second.rid });
    await ok;
    await assert.rejects(bad, (e) => e.code === 'unknown_workflow');
    assert.throws(() => c.subscribeWorkflow('bad id'), TypeError);
    c.close();
  });

  test("agent events go to the agent channel when the client does not watch the workflow's", async () => {
    const c = fakeClient();
    const deltas = [];
    c.subscribe(`agent:${W}.a`, { onAgentProgress: (agentId, delta) => deltas.push([agentId, delta]) });
    const socket = FakeSocket.last;
    socket.open();
    socket.receive(ack(`agent:${W}.a`, 'A1', 0, true), started(1, 'a', 'start'), progress(2, 'a', 'x'), progress(3, 'a', 'y'));
    assert.deepEqual(deltas, [['a', 'x'], ['a', 'y']]);
    c.close();
  });
});
