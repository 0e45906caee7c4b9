// The seeds' JavaScript SDK surface (src/seeds.js: CircuitBreakerStream, WorkflowStream) against
// a real hub and the mock provider, used as the seed (../shared/seeds/003, "Client Libraries and
// SDKs") shows it: `new CircuitBreakerStream({wsUrl, onContent, onAgentProgress,
// onStateTransition})`, `createCompletion(request)` resolving to `{completionId, usage}`,
// `createWorkflowStream(workflowId)` with the stream's `onComplete` / `onError`.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { CircuitBreakerStream, HubError, WorkflowStream, createClient } from '../src/index.js';
import { MODEL, expectedAgentTexts, expectedText, startHub, startMock, withTimeout } from './support.js';

const TRANSITIONS = [['start', 'researched'], ['researched', 'drafted'], ['drafted', 'reviewed'], ['reviewed', 'revised'], ['revised', 'published']];

describe('the seeds\' SDK surface against the hub', () => {
  let mock;
  let hub;

  before(async () => {
    mock = await startMock();
    hub = await startHub(mock.url);
  });

  after(async () => {
    await hub?.stop();
    await mock?.stop();
  });

  test('the seed\'s usage: a completion, then a workflow run someone started', async () => {
    const input = { topic: 'tides [[mock tokens=6]]', audience: 'sailors' };
    const starter = createClient({ url: hub.wsUrl, WebSocket });
    await withTimeout(starter.workflow({ definitionName: 'content_creation', input, workflowId: 'content-pipeline-123' }).result);
    starter.close();

    // ---- as the seed uses it (its config and its two methods), with the hub's URL ----
    const content = [];
    const progress = [];
    const transitions = [];
    const stream = new CircuitBreakerStream({
      wsUrl: hub.wsUrl,
      WebSocket,
      onContent: (text) => content.push(text),
      onAgentProgress: (agentId, agentProgress) => progress.push([agentId, agentProgress]),
      onStateTransition: (from, to, data) => transitions.push([from, to, data]),
    });
    const { completionId, usage } = await withTimeout(stream.createCompletion({
      model: MODEL,
      messages: [{ role: 'user', content: 'Hello! [[mock tokens=12 seed=3]]' }],
    }));
    const workflow = await stream.createWorkflowStream('content-pipeline-123');
    const result = await withTimeout(new Promise((resolve, reject) => {
      workflow.onComplete = resolve;
      workflow.onError = reject;
    }));
    stream.close();
    // ---- end of the seed's usage ----

    assert.equal(content.join(''), expectedText(12, 3));
    assert.match(completionId, /^js-/);
    assert.equal(usage.completionTokens, 12);
    assert.ok(workflow instanceof WorkflowStream);
    assert.deepEqual(transitions.map(([from, to]) => [from, to]), TRANSITIONS);
    for (const [from, to, data] of transitions) {
      assert.equal(data.from, from);
      assert.equal(data.to, to);
      assert.equal(data.tokenData.input.topic, input.topic);
    }
    const texts = {};
    for (const [agentId, agentProgress] of progress) {
      assert.equal(typeof agentProgress.progress, 'number');
      texts[agentId] = (texts[agentId] ?? '') + agentProgress.content;
    }
    const expected = expectedAgentTexts('content_creation', input);
    assert.deepEqual(texts, { researcher: expected.researcher, writer: expected.writer + expected.writer, editor: expected.editor });
    assert.equal(result.place, 'published');
    assert.deepEqual(result.results, expected);
  });

  test('createCompletion rejects with the hub\'s error', async () => {
    const stream = new CircuitBreakerStream({ wsUrl: hub.wsUrl, WebSocket });
    try {
      await assert.rejects(
        withTimeout(stream.createCompletion({ model: MODEL, messages: [{ role: 'user', content: 'Hi [[mock tokens=10 error_after=3]]' }] })),
        (error) => error instanceof HubError && typeof error.code === 'string' && error.completionId != null,
      );
      await assert.rejects(
        withTimeout(stream.createCompletion({ model: 'nosuch/model', messages: [{ role: 'user', content: 'Hi' }] })),
        HubError,
      );
    } finally {
      stream.close();
    }
  });

  test('createWorkflowStream can start the run; the stream is iterable and a hook can be replaced per run', async () => {
    const fromConfig = [];
    const stream = new CircuitBreakerStream({ wsUrl: hub.wsUrl, WebSocket, onStateTransition: (from, to) => fromConfig.push(to) });
    const input = { topic: 'tides [[mock tokens=5 tps=2000]]' };
    const run = await stream.createWorkflowStream('seed-js-1', { definitionName: 'content_creation', input });
    const mine = [];
    run.onAgentProgress = (agentId, agentProgress) => mine.push([agentId, agentProgress.content]);
    const types = [];
    for await (const event of run) types.push(event.type);
    const result = await run.result;
    stream.close();
    assert.deepEqual(fromConfig, TRANSITIONS.map(([, to]) => to));
    assert.equal(types[0], 'token_created');
    assert.equal(types.at(-1), 'workflow_completed');
    assert.equal(mine.filter(([agentId]) => agentId === 'researcher').map(([, text]) => text).join(''), expectedAgentTexts('content_creation', input).researcher);
    assert.equal(result.workflowId, 'seed-js-1');
  });

  test('a run that is not there ends with onError', async () => {
    const stream = new CircuitBreakerStream({ wsUrl: hub.wsUrl, WebSocket });
    const run = await stream.createWorkflowStream('never-was');
    const error = await withTimeout(new Promise((resolve) => {
      run.onError = resolve;
    }));
    stream.close();
    assert.ok(error instanceof HubError);
    assert.equal(error.code, 'unknown_channel');
    await assert.rejects(run.result, HubError);
  });
});
