// The client against a scripted hub (FakeSocket): resume from snapshots, merged chunks,
// duplicates, lost completion starts, close codes, backoff, cancel answers, batching.

import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import { HubError, RECONNECT_CLOSE_CODES, backoffDelay, createClient, shouldReconnect } from '../src/index.js';
import { FakeSocket, waitFor } from './support.js';

const URL = 'ws://hub.test/ws/stream';
const messages = [{ role: 'user', content: 'Hi' }];

function fakeClient(options = {}) {
  return createClient({ url: URL, WebSocket: FakeSocket, reconnect: { baseDelayMs: 1, maxDelayMs: 1 }, ...options });
}

function recorder() {
  const seen = { deltas: [], thinking: [], events: [], toolCalls: [], completed: [], errors: [] };
  const handlers = {
    onEvent: (m) => seen.events.push(m),
    onContent: (delta) => seen.deltas.push(delta),
    onThinking: (delta) => seen.thinking.push(delta),
    onToolCall: (call) => seen.toolCalls.push(call),
    onComplete: (r) => seen.completed.push(r),
    onError: (e) => seen.errors.push(e),
  };
  return { seen, handlers };
}

const ack = (channel, epoch, seq, recovered, extra = {}) => ({
  type: 'subscribed',
  channels: [channel],
  epochs: { [channel]: epoch },
  seqs: { [channel]: seq },
  recovered: { [channel]: recovered },
  ...extra,
});
const chunk = (id, seq, content, extra = {}) => ({ type: 'content_chunk', completionId: id, seq, content, ...extra });
const completed = (id, seq) => ({ type: 'completed', completionId: id, seq, finishReason: 'stop', provider: 'openai', model: 'm' });
const hubError = (code, extra = {}) => ({ type: 'error', error: { code, message: code, retryable: false }, ...extra });

/** Wait for the client's next socket and open it. */
async function nextSocket(previous) {
  await waitFor(() => FakeSocket.last !== previous, 'a new socket');
  FakeSocket.last.open();
  return FakeSocket.last;
}

beforeEach(() => {
  FakeSocket.instances = [];
});

describe('resume', () => {
  test('replayed duplicates are dropped, a snapshot gives only the missing text, merged chunks count', async () => {
    const c = fakeClient();
    const { seen, handlers } = recorder();
    const stream = c.completion({ id: 'c1', model: 'm', messages }, handlers);
    const first = FakeSocket.last;
    first.open();
    assert.deepEqual(first.sent, [{ type: 'completion', id: 'c1', model: 'm', messages }]);
    first.receive(ack('completion:c1', 'E1', 0, true, { completionId: 'c1' }));
    first.receive(chunk('c1', 1, 'ab'), { type: 'thinking_status', completionId: 'c1', seq: 2, status: 'thinking', content: 'hm' });
    first.receive(chunk('c1', 3, 'cd'), chunk('c1', 3, 'cd'));
    first.serverClose(1006);

    const second = await nextSocket(first);
    assert.deepEqual(second.sent, [{ type: 'subscribe', channels: ['completion:c1'], since: { 'completion:c1': { seq: 3, epoch: 'E1' } } }]);
    second.receive(ack('completion:c1', 'E1', 6, false));
    second.receive({ type: 'snapshot', completionId: 'c1', channel: 'completion:c1', epoch: 'E1', seq: 6, content: 'abcdefgh', reasoning: 'hmm', toolCalls: [{ type: 'tool_call', completionId: 'c1', seq: 5, id: 't1', tool: 'f', arguments: {} }], refusal: '', citations: [] });
    second.receive(chunk('c1', 4, 'ef')); // older than the snapshot: dropped
    second.receive(chunk('c1', 9, 'ijkl', { firstSeq: 7 }), completed('c1', 10));
    const result = await stream.result;

    assert.deepEqual(seen.deltas, ['ab', 'cd', 'efgh', 'ijkl']);
    assert.deepEqual(seen.thinking, ['hm', 'm']);
    assert.deepEqual(seen.toolCalls.map((call) => call.id), ['t1']);
    assert.equal(result.text, 'abcdefghijkl');
    assert.equal(result.reasoning, 'hmm');
    // The snapshot, then what it adds (reasoning, text, the tool call as sent), then live.
    assert.deepEqual(seen.events.map((e) => [e.type, e.seq]), [
      ['content_chunk', 1], ['thinking_status', 2], ['content_chunk', 3], ['snapshot', 6],
      ['thinking_status', 6], ['content_chunk', 6], ['tool_call', 5], ['content_chunk', 9], ['completed', 10],
    ]);
    assert.equal(seen.events[5].firstSeq, 4);
    // Done with the channel: the client leaves it.
    assert.deepEqual(second.sent.at(-1), { type: 'unsubscribe', channels: ['completion:c1'] });
  });

  test('a snapshot that does not continue the delivered text fails the stream (resume_failed)', async () => {
    const c = fakeClient();
    const stream = c.completion({ id: 'c2', model: 'm', messages });
    const first = FakeSocket.last;
    first.open();
    first.receive(ack('completion:c2', 'E1', 0, true, { completionId: 'c2' }), chunk('c2', 1, 'hello'));
    first.serverClose(1012);
    const second = await nextSocket(first);
    second.receive(ack('completion:c2', 'E2', 3, false));
    second.receive({ type: 'snapshot', completionId: 'c2', channel: 'completion:c2', epoch: 'E2', seq: 3, content: 'other' });
    await assert.rejects(stream.result, (e) => e instanceof HubError && e.code === 'resume_failed');
    c.close();
  });

  test('a jump in seq on a resumable completion fails it with stream_gap', async () => {
    const c = fakeClient();
    const stream = c.completion({ id: 'g1', model: 'm', messages });
    const socket = FakeSocket.last;
    socket.open();
    socket.receive(ack('completion:g1', 'E', 0, true, { completionId: 'g1' }), chunk('g1', 1, 'a'), chunk('g1', 3, 'c'));
    await assert.rejects(stream.result, (e) => e.code === 'stream_gap' && e.retryable === true);
    c.close();
  });

  test('a completion whose answer was lost with the socket: subscribe first, send it again if the hub never had it', async () => {
    const c = fakeClient();
    const stream = c.completion({ id: 'c3', model: 'm', messages });
    const first = FakeSocket.last;
    first.open();
    first.serverClose(1006); // before any answer
    const second = await nextSocket(first);
    assert.deepEqual(second.sent, [{ type: 'subscribe', channels: ['completion:c3'] }]);
    second.receive(hubError('unknown_channel'));
    assert.deepEqual(second.sent.at(-1), { type: 'completion', id: 'c3', model: 'm', messages });
    second.receive(ack('completion:c3', 'E', 0, true, { completionId: 'c3' }), chunk('c3', 1, 'x'), completed('c3', 2));
    assert.equal((await stream.result).text, 'x');
    c.close();
  });

  test('a completion started while connecting is sent once, when the socket opens', async () => {
    const c = fakeClient();
    const stream = c.completion({ model: 'm', messages });
    assert.match(stream.id, /^js-[0-9a-f]{8}-\d+$/);
    const socket = FakeSocket.last;
    socket.open();
    assert.deepEqual(socket.sent, [{ type: 'completion', model: 'm', messages, id: stream.id }]);
    c.close();
  });

  test('the system channel starts over when its epoch changes (a restarted hub)', async () => {
    const c = fakeClient();
    const events = [];
    c.subscribe('system', { onEvent: (m) => events.push(m.seq) });
    const first = FakeSocket.last;
    first.open();
    const state = (seq) => ({ type: 'circuit_state', seq, provider: 'openai', baseUrl: 'http://x', state: 'open', previous: 'closed' });
    first.receive(ack('system', 'S1', 0, true), state(1), state(2));
    first.serverClose(1012);
    const second = await nextSocket(first);
    assert.deepEqual(second.sent[0].since, { system: { seq: 2, epoch: 'S1' } });
    second.receive(ack('system', 'S2', 1, false), state(1));
    assert.deepEqual(events, [1, 2, 1]);
    c.close();
  });
});

describe('listeners', () => {
  test('a second local listener gets the history, then live; dispose of the last one unsubscribes', async () => {
    const c = fakeClient();
    const socket = FakeSocket.last;
    socket.open();
    const a = recorder();
    const b = recorder();
    const disposeA = c.subscribe('completion:s1', a.handlers);
    assert.deepEqual(socket.sent, [{ type: 'subscribe', channels: ['completion:s1'] }]);
    socket.receive(ack('completion:s1', 'E', 2, true), chunk('s1', 1, 'a'), chunk('s1', 2, 'b'));
    const disposeB = c.subscribe('completion:s1', b.handlers);
    assert.equal(socket.sent.length, 1, 'one hub subscription for both');
    await new Promise((resolve) => setTimeout(resolve, 0));
    socket.receive(chunk('s1', 3, 'c'));
    assert.deepEqual(a.seen.deltas, ['a', 'b', 'c']);
    assert.deepEqual(b.seen.deltas, ['a', 'b', 'c']);
    disposeA();
    assert.equal(socket.sent.length, 1);
    disposeB();
    assert.deepEqual(socket.sent.at(-1), { type: 'unsubscribe', channels: ['completion:s1'] });
    socket.receive({ type: 'unsubscribed', channels: ['completion:s1'] }, chunk('s1', 4, 'd'));
    assert.deepEqual(b.seen.deltas, ['a', 'b', 'c']);
    c.close();
  });

  test('batched frames are split on newlines', async () => {
    const c = fakeClient({ batch: true });
    assert.equal(c.url, `${URL}?batch=1`);
    const { seen, handlers } = recorder();
    const stream = c.completion({ id: 'b1', model: 'm', messages }, handlers);
    const socket = FakeSocket.last;
    socket.open();
    const lines = [ack('completion:b1', 'E', 0, true, { completionId: 'b1' }), chunk('b1', 1, 'x\ny'), chunk('b1', 2, 'z'), completed('b1', 3)];
    socket.receive(lines.map((m) => JSON.stringify(m)).join('\n'));
    assert.equal((await stream.result).text, 'x\nyz');
    assert.deepEqual(seen.deltas, ['x\ny', 'z']);
  });
});

describe('cancel', () => {
  test('carries a rid; resolves on the ack that echoes it, rejects with the error that echoes it', async () => {
    const c = fakeClient();
    const socket = FakeSocket.last;
    socket.open();
    const ok = c.cancel('c1');
    const bad = c.cancel('nope');
    const [first, second] = socket.sent;
    assert.deepEqual(socket.sent, [
      { type: 'cancel', completionId: 'c1', rid: first.rid },
      { type: 'cancel', completionId: 'nope', rid: second.rid },
    ]);
    assert.ok(typeof first.rid === 'string' && first.rid.length <= 64 && first.rid !== second.rid);
    // Answered out of order: the rid, not the order, says which request an answer is for.
    socket.receive({ ...hubError('unknown_completion'), rid: second.rid }, { type: 'ack', rid: first.rid });
    await ok;
    await assert.rejects(bad, (e) => e.code === 'unknown_completion');
    c.close();
  });

  test('a cancel made while disconnected goes out after the streams are resumed', async () => {
    const c = fakeClient();
    const stream = c.completion({ id: 'c9', model: 'm', messages });
    const first = FakeSocket.last;
    first.open();
    first.receive(ack('completion:c9', 'E', 0, true, { completionId: 'c9' }));
    first.serverClose(1006);
    const cancelled = c.cancel('c9');
    const second = await nextSocket(first);
    assert.deepEqual(second.sent.map((m) => m.type), ['subscribe', 'cancel']);
    second.receive(ack('completion:c9', 'E', 0, true), { type: 'ack', rid: second.sent[1].rid });
    await cancelled;
    second.receive(hubError('cancelled', { completionId: 'c9', seq: 1 }));
    await assert.rejects(stream.result, (e) => e.code === 'cancelled' && e.completionId === 'c9');
    await assert.rejects(async () => {
      for await (const event of stream) assert.fail(`unexpected ${event.type}`);
    }, (e) => e.code === 'cancelled');
  });
});

describe('close codes and backoff', () => {
  test('the reconnect codes come from docs/PROTOCOL.md; the 4000-4999 range means reconnect', () => {
    assert.deepEqual([...RECONNECT_CLOSE_CODES], [1006, 1011, 1012, 1013, 4008]);
    for (const code of [1006, 1011, 1012, 1013, 4008, 4100]) assert.equal(shouldReconnect(code), true, String(code));
    for (const code of [1000, 1001, 1007, 1009, 3000]) assert.equal(shouldReconnect(code), false, String(code));
  });

  test('full jitter: uniform in [0, min(max, base * 2^n)]', () => {
    const options = { baseDelayMs: 100, maxDelayMs: 5000 };
    assert.equal(backoffDelay(0, options, () => 0), 0);
    assert.equal(backoffDelay(0, options, () => 0.999999), 99);
    assert.equal(backoffDelay(3, options, () => 0.5), 400);
    assert.equal(backoffDelay(10, options, () => 0.999999), 4999);
    assert.equal(backoffDelay(1000, options, () => 0.5), 2500);
  });

  test('a close code that does not mean reconnect fails the open streams', async () => {
    const statuses = [];
    const c = fakeClient({ onStatus: (s) => statuses.push(s) });
    const { seen, handlers } = recorder();
    const stream = c.completion({ id: 'x', model: 'm', messages }, handlers);
    FakeSocket.last.open();
    FakeSocket.last.serverClose(1009, 'too big');
    await assert.rejects(stream.result, (e) => e.code === 'connection_closed' && /1009/.test(e.message));
    assert.equal(seen.errors.length, 1);
    assert.deepEqual(statuses, ['open', 'closed']);
    await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(FakeSocket.instances.length, 1, 'no reconnect');
    await assert.rejects(c.completion({ model: 'm', messages }).result, (e) => e.code === 'connection_closed');
  });

  test('reconnect.maxAttempts: gives up with reconnect_failed', async () => {
    const c = fakeClient({ reconnect: { baseDelayMs: 1, maxDelayMs: 1, maxAttempts: 2 } });
    const stream = c.completion({ model: 'm', messages });
    for (let i = 0; i < 3; i += 1) {
      await waitFor(() => FakeSocket.instances.length === i + 1, `socket ${i + 1}`);
      FakeSocket.last.serverClose(1006);
    }
    await assert.rejects(stream.result, (e) => e.code === 'reconnect_failed');
    assert.equal(c.status, 'closed');
  });

  test('reconnect: false never reconnects; close() fails what is open', async () => {
    const c = fakeClient({ reconnect: false });
    const stream = c.completion({ model: 'm', messages });
    FakeSocket.last.open();
    c.close();
    await assert.rejects(stream.result, (e) => e.code === 'connection_closed');
    assert.equal(c.status, 'closed');
  });

  test('without a WebSocket implementation createClient explains what to pass', () => {
    const saved = globalThis.WebSocket;
    globalThis.WebSocket = undefined;
    try {
      assert.throws(() => createClient({ url: URL }), /pass \{WebSocket\}/);
    } finally {
      globalThis.WebSocket = saved;
    }
  });
});
