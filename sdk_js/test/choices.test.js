// Choices (`n` above 1, docs/PROTOCOL.md "Choices") through the SDK against a real hub and the
// mock provider, which interleaves choice 1's words with choice 0's: the result's text is
// choice 0's, choice 1's is kept apart in `result.choices`, and a resume from a snapshot catches
// up each choice (before, choice 1's text was added to choice 0's and the snapshot failed the
// stream with resume_failed).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { createClient } from '../src/index.js';
import { MODEL, ask, assertGapFree, expectedText, runPython, startHub, startMock, testSocket, waitFor, withTimeout } from './support.js';

let mock;
let hub;
let small;

before(async () => {
  mock = await startMock();
  hub = await startHub(mock.url);
  small = await startHub(mock.url, { history_max_events: 3 });
});

after(async () => {
  await small?.stop();
  await hub?.stop();
  await mock?.stop();
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Choice `choice`'s text for `[[mock tokens=N seed=S]]` with n > 1 (mock_provider.py expected_choice_text). */
function expectedChoiceText(choice, tokens, seed) {
  const code = `import sys; from hub.testing.mock_provider import expected_choice_text; sys.stdout.write(expected_choice_text(${choice}, ${tokens}, ${seed}))`;
  return runPython(['-c', code]);
}

const textOf = (events, choice) =>
  events.filter((e) => e.type === 'content_chunk' && (e.choice ?? 0) === choice).map((e) => e.content).join('');

describe('choices (n = 2)', () => {
  test("the result's text is choice 0's; choice 1 is in result.choices; finishReasons", async (t) => {
    const c = createClient({ url: hub.wsUrl, WebSocket });
    t.after(() => c.close());
    const stream = c.completion({ model: MODEL, n: 2, messages: ask('tokens=15 seed=3') });
    const events = [];
    for await (const event of stream) events.push(event);
    const result = await withTimeout(stream.result, 'the result');
    assert.equal(result.text, expectedText(15, 3));
    assert.equal(textOf(events, 0), result.text);
    assert.deepEqual(Object.keys(result.choices), ['1']);
    assert.equal(result.choices[1].content, expectedChoiceText(1, 15, 3));
    assert.equal(textOf(events, 1), result.choices[1].content);
    assert.notEqual(result.choices[1].content, result.text);
    assert.deepEqual(result.finishReasons, ['stop', 'stop']);
  });

  test('a resume from a snapshot catches up each choice and does not fail', async (t) => {
    const gate = { closed: false };
    const c = createClient({
      url: small.wsUrl, WebSocket: testSocket(WebSocket, [], gate), reconnect: { baseDelayMs: 20, maxDelayMs: 200 },
    });
    t.after(() => c.close());
    const stream = c.completion({ model: MODEL, n: 2, coalesce: false, messages: ask('tokens=150 tps=200 seed=9') });
    const iterated = [];
    const iterating = (async () => {
      for await (const event of stream) iterated.push(event);
    })();
    await waitFor(() => iterated.filter((e) => e.type === 'content_chunk' && e.choice === 1).length >= 2, 'choice 1 output');
    gate.closed = true;
    c.dropConnection();
    await sleep(150); // about 60 messages pass: far more than the history keeps
    gate.closed = false;
    const result = await withTimeout(stream.result, 'the result');
    await iterating;

    const snapshots = iterated.filter((e) => e.type === 'snapshot');
    assert.equal(snapshots.length, 1);
    assert.ok((snapshots[0].choices ?? []).some((choice) => choice.choice === 1), 'the snapshot holds choice 1');
    assert.equal(result.text, expectedText(150, 9));
    assert.equal(textOf(iterated, 0), result.text);
    assert.equal(result.choices[1].content, expectedChoiceText(1, 150, 9));
    assert.equal(textOf(iterated, 1), result.choices[1].content);
    const synthetic = iterated.slice(iterated.indexOf(snapshots[0]) + 1).filter((e) => e.seq === snapshots[0].seq);
    assert.deepEqual(synthetic.filter((e) => e.type === 'content_chunk').map((e) => e.choice ?? 0), [0, 1]);
    assertGapFree(iterated);
  });
});
