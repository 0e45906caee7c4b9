// The SDK against a real hub (python -m hub.cli serve) backed by the mock provider.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { HubError, createClient } from '../src/index.js';
import { MODEL, ask, assertGapFree, expectedText, startHub, startMock, testSocket as recordingSocket, validate, waitFor, withTimeout } from './support.js';

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

/** A recording `ws` WebSocket kept away from the hub while `gate.closed` (support.js). */
const testSocket = (sent, gate) => recordingSocket(WebSocket, sent, gate);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function client(t, options = {}) {
  const c = createClient({ url: hub.wsUrl, WebSocket, reconnect: { baseDelayMs: 20, maxDelayMs: 200 }, ...options });
  t.after(() => c.close());
  return c;
}

/** Handlers that record everything, and the recording. */
function recorder() {
  const seen = { content: '', thinking: '', events: [], toolCalls: [], completed: [], errors: [] };
  const handlers = {
    onEvent: (message) => seen.events.push(message),
    onContent: (delta) => {
      seen.content += delta;
    },
    onThinking: (delta) => {
      seen.thinking += delta;
    },
    onToolCall: (call) => seen.toolCalls.push(call),
    onComplete: (result) => seen.completed.push(result),
    onError: (error) => seen.errors.push(error),
  };
  return { seen, handlers };
}

describe('streaming', () => {
  test('a completion streams the exact text; callbacks, iteration and result agree', async (t) => {
    const c = client(t);
    const { seen, handlers } = recorder();
    const stream = c.completion({ model: MODEL, messages: ask('tokens=60 reasoning=5 tool=get_weather seed=3') }, handlers);
    assert.match(stream.id, /^js-/);
    const iterated = [];
    for await (const event of stream) iterated.push(event);
    const result = await stream.result;

    assert.equal(result.text, expectedText(60, 3));
    assert.equal(seen.content, result.text);
    assert.ok(result.reasoning.length > 0);
    assert.equal(seen.thinking, result.reasoning);
    assert.equal(result.toolCalls.length, 1);
    assert.equal(result.toolCalls[0].tool, 'get_weather');
    assert.deepEqual(result.toolCalls[0].arguments, { city: 'Paris' });
    assert.deepEqual(seen.toolCalls, result.toolCalls);
    assert.equal(result.finishReason, 'tool_calls');
    assert.equal(result.provider, 'openai');
    assert.equal(typeof result.ttftMs, 'number');
    assert.equal(result.usage.completionTokens > 0, true);
    assert.deepEqual(seen.completed, [result]);
    assert.deepEqual(seen.errors, []);

    assert.deepEqual(iterated, seen.events);
    assert.equal(iterated.at(-1).type, 'completed');
    assertGapFree(iterated);
    for (const event of iterated) assert.deepEqual(validate(event), [], JSON.stringify(event));
    // Iterating again replays the same events.
    const again = [];
    for await (const event of stream) again.push(event);
    assert.deepEqual(again, iterated);
  });

  test('several completions at once over one socket', async (t) => {
    const c = client(t);
    const streams = [10, 40, 80].map((n) => c.completion({ model: MODEL, messages: ask(`tokens=${n} tps=400 seed=${n}`) }));
    const results = await withTimeout(Promise.all(streams.map((s) => s.result)), 'three results');
    assert.deepEqual(results.map((r) => r.text), [10, 40, 80].map((n) => expectedText(n, n)));
  });

  test('batch mode: ?batch=1 frames are split on newlines', async (t) => {
    const c = client(t, { batch: true });
    assert.match(c.url, /[?&]batch=1/);
    const streams = [30, 50].map((n) => c.completion({ model: MODEL, coalesce: false, messages: ask(`tokens=${n} seed=${n}`) }));
    const results = await withTimeout(Promise.all(streams.map((s) => s.result)), 'batched results');
    assert.deepEqual(results.map((r) => r.text), [expectedText(30, 30), expectedText(50, 50)]);
  });

  test('onStatus reports connecting, open, closed', async (t) => {
    const statuses = [];
    const c = client(t, { onStatus: (s) => statuses.push(s) });
    await c.completion({ model: MODEL, messages: ask('tokens=2') }).result;
    c.close();
    assert.deepEqual(statuses, ['open', 'closed']); // 'connecting' is the initial status
    assert.equal(c.status, 'closed');
  });
});

describe('listeners', () => {
  test('two listeners on two clients get identical messages and text', async (t) => {
    const a = client(t);
    const b = client(t);
    const first = recorder();
    const second = recorder();
    const stream = a.completion({ model: MODEL, messages: ask('tokens=120 tps=300 seed=7') }, first.handlers);
    await waitFor(() => first.seen.content.length > 0, 'the first content');
    const dispose = b.subscribe(stream.channel, second.handlers);
    await withTimeout(stream.result, 'the result');
    await waitFor(() => second.seen.completed.length === 1, "the second listener's completion");
    dispose();

    const expected = expectedText(120, 7);
    assert.equal(first.seen.content, expected);
    assert.equal(second.seen.content, expected);
    assert.deepEqual(second.seen.events, first.seen.events);
    assert.deepEqual(second.seen.completed, first.seen.completed);
  });

  test('a second listener on the same client gets the history, then the live messages', async (t) => {
    const c = client(t);
    const first = recorder();
    const second = recorder();
    const stream = c.completion({ model: MODEL, messages: ask('tokens=80 tps=300 seed=8') }, first.handlers);
    await waitFor(() => first.seen.content.length > 0, 'the first content');
    c.subscribe(stream.channel, second.handlers);
    await withTimeout(stream.result, 'the result');
    await waitFor(() => second.seen.completed.length === 1, "the second listener's completion");
    assert.equal(second.seen.content, expectedText(80, 8));
    assert.deepEqual(second.seen.events, first.seen.events);
  });

  test('subscribing to a channel the hub does not have reports unknown_channel', async (t) => {
    const c = client(t);
    const errors = [];
    c.subscribe('completion:does-not-exist', { onError: (e) => errors.push(e) });
    c.subscribeWorkflow('w1', { onError: (e) => errors.push(e) });
    await waitFor(() => errors.length === 2, 'two errors');
    assert.deepEqual(errors.map((e) => [e instanceof HubError, e.code]), [[true, 'unknown_channel'], [true, 'unknown_channel']]);
    assert.throws(() => c.subscribe('bogus'), TypeError);
  });
});

describe('errors and cancel', () => {
  test('a provider error rejects the result with a HubError carrying the code', async (t) => {
    const c = client(t);
    const { seen, handlers } = recorder();
    const stream = c.completion({ model: MODEL, messages: ask('status=401') }, handlers);
    const error = await stream.result.then(() => assert.fail('resolved'), (e) => e);
    assert.ok(error instanceof HubError);
    assert.equal(error.code, 'auth_failed');
    assert.equal(error.retryable, false);
    assert.equal(error.completionId, stream.id);
    assert.equal(error.event.type, 'error');
    assert.deepEqual(seen.errors, [error]);
    await assert.rejects(async () => {
      for await (const event of stream) assert.notEqual(event.type, 'error');
    }, (e) => e === error);
  });

  test('answers to a refused completion: invalid model, duplicate id', async (t) => {
    const a = client(t);
    const b = client(t);
    const notFound = await a.completion({ model: 'mistral-large', messages: ask('tokens=1') }).result.catch((e) => e);
    assert.equal(notFound.code, 'model_not_found');
    assert.equal(notFound.status, 404);
    const id = `dup-${Date.now()}`;
    await a.completion({ id, model: MODEL, messages: ask('tokens=1') }).result;
    const duplicate = await b.completion({ id, model: MODEL, messages: ask('tokens=1') }).result.catch((e) => e);
    assert.equal(duplicate.code, 'duplicate_id');
    assert.equal(duplicate.completionId, undefined);
  });

  test('cancel ends the stream with HubError cancelled', async (t) => {
    const c = client(t);
    const { seen, handlers } = recorder();
    const stream = c.completion({ model: MODEL, messages: ask('tokens=400 tps=100') }, handlers);
    await waitFor(() => seen.content.length > 0, 'the first content');
    await withTimeout(c.cancel(stream.id), 'the cancel');
    const error = await stream.result.catch((e) => e);
    assert.equal(error.code, 'cancelled');
    assert.ok(seen.content.length < expectedText(400).length);
    assert.ok(expectedText(400).startsWith(seen.content));
    await assert.rejects(c.cancel('no-such-completion'), (e) => e.code === 'unknown_completion');
  });
});

describe('reconnect and resume', () => {
  for (const batch of [false, true]) {
    test(`dropping the socket mid-stream loses and repeats nothing (batch: ${batch})`, async (t) => {
      const sent = [];
      const gate = { closed: false };
      const reconnects = [];
      const statuses = [];
      const c = client(t, {
        batch,
        WebSocket: testSocket(sent, gate),
        onReconnect: (info) => reconnects.push(info),
        onStatus: (s) => statuses.push(s),
      });
      const { seen, handlers } = recorder();
      const stream = c.completion({ model: MODEL, messages: ask('tokens=200 tps=200 seed=5') }, handlers);
      await waitFor(() => seen.events.filter((e) => e.type === 'content_chunk').length >= 3, 'three chunks');
      const before = seen.content.length;
      gate.closed = true;
      c.dropConnection();
      await sleep(150); // the stream goes on without us: those messages come from the history
      gate.closed = false;
      const result = await withTimeout(stream.result, 'the result');

      const expected = expectedText(200, 5);
      assert.ok(before > 0 && before < expected.length, 'the drop happened mid-stream');
      assert.equal(result.text, expected);
      assert.equal(seen.content, expected);
      assertGapFree(seen.events);
      assert.equal(seen.events.filter((e) => e.type === 'snapshot').length, 0, 'recovered from the history');
      assert.equal(reconnects.length, 1);
      assert.equal(reconnects[0].code, 1006);
      assert.ok(reconnects[0].attempt >= 2, 'connection attempts failed while the gate was closed');
      assert.deepEqual(reconnects[0].channels, [stream.channel]);
      assert.equal(statuses[0], 'open');
      assert.deepEqual(statuses.slice(-3), ['reconnecting', 'connecting', 'open']);

      const resumes = sent.filter((m) => m.type === 'subscribe' && m.channels?.includes(stream.channel));
      assert.equal(resumes.length, 1);
      const cursor = resumes[0].since[stream.channel];
      assert.equal(typeof cursor.epoch, 'string');
      assert.ok(cursor.seq >= 3);
      assert.equal(cursor.seq, seen.events.filter((e) => e.seq <= cursor.seq).at(-1).seq);
    });
  }

  test('a completion that ended while the client was away: the end is replayed', async (t) => {
    const gate = { closed: false };
    const c = client(t, { WebSocket: testSocket([], gate) });
    const { seen, handlers } = recorder();
    const stream = c.completion({ model: MODEL, messages: ask('tokens=40 tps=200 seed=6') }, handlers);
    await waitFor(() => seen.content.length > 0, 'the first content');
    gate.closed = true;
    c.dropConnection();
    await sleep(400); // 40 tokens at 200/s: it has ended by now
    gate.closed = false;
    assert.equal((await withTimeout(stream.result, 'the result')).text, expectedText(40, 6));
    assert.equal(seen.content, expectedText(40, 6));
  });

  test('a completion started while disconnected is sent once the socket opens', async (t) => {
    const c = client(t);
    await c.completion({ model: MODEL, messages: ask('tokens=1') }).result;
    c.dropConnection();
    const stream = c.completion({ model: MODEL, messages: ask('tokens=20 seed=2') });
    assert.equal((await withTimeout(stream.result, 'the result')).text, expectedText(20, 2));
  });
});

describe('resume from a snapshot (history of 3 messages)', () => {
  let small;
  before(async () => {
    small = await startHub(mock.url, { history_max_events: 3 });
  });
  after(() => small?.stop());

  test('the history cannot cover the gap: one snapshot, then the rest; the text is intact', async (t) => {
    const gate = { closed: false };
    const c = client(t, { url: small.wsUrl, WebSocket: testSocket([], gate) });
    const { seen, handlers } = recorder();
    const stream = c.completion({ model: MODEL, coalesce: false, messages: ask('tokens=200 tps=200 reasoning=3 seed=9') }, handlers);
    const iterated = [];
    const iterating = (async () => {
      for await (const event of stream) iterated.push(event);
    })();
    await waitFor(() => seen.events.filter((e) => e.type === 'content_chunk').length >= 3, 'three chunks');
    gate.closed = true;
    c.dropConnection();
    await sleep(150); // about 30 messages pass: far more than the history keeps
    gate.closed = false;
    const result = await withTimeout(stream.result, 'the result');
    await iterating;

    const expected = expectedText(200, 9);
    assert.equal(result.text, expected);
    assert.equal(seen.content, expected, 'onContent got exactly the missing text from the snapshot');
    assert.ok(result.reasoning.length > 0);
    assert.equal(seen.thinking, result.reasoning);
    const chunks = iterated.filter((e) => e.type === 'content_chunk').map((e) => e.content);
    assert.equal(chunks.join(''), expected, 'iterated content_chunks add up to the text too');
    const snapshots = iterated.filter((e) => e.type === 'snapshot');
    assert.equal(snapshots.length, 1);
    assert.deepEqual(validate(snapshots[0]), []);
    assert.ok(snapshots[0].content.length > 0 && expected.startsWith(snapshots[0].content));
    assertGapFree(iterated);
  });
});

describe('no SDK', () => {
  test("the seed examples' raw usage keeps working: send completion, switch on content_chunk and completed", async () => {
    const ws = new WebSocket(hub.wsUrl);
    let text = '';
    const done = new Promise((resolve, reject) => {
      ws.onmessage = (event) => {
        const message = JSON.parse(event.data);
        switch (message.type) {
          case 'content_chunk':
            text += message.content;
            break;
          case 'completed':
            resolve(message);
            break;
          case 'error':
            reject(new Error(message.error.message));
            break;
          default:
            break;
        }
      };
    });
    await new Promise((resolve) => {
      ws.onopen = resolve;
    });
    ws.send(JSON.stringify({ type: 'completion', id: `raw-${Date.now()}`, model: MODEL, messages: ask('tokens=25 seed=4') }));
    const completed = await withTimeout(done, 'completed');
    ws.close();
    assert.equal(text, expectedText(25, 4));
    assert.equal(completed.finishReason, 'stop');
  });
});
