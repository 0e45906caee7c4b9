// The SDK moving between hubs that share the Redis broker (issue 13; docs/PROTOCOL.md "Running
// several hubs"): three `python -m hub.cli serve` processes on their own ports against a real
// Redis on 127.0.0.1 (database 15, or $CBHUB_TEST_REDIS_URL), every key under a prefix of this
// file's own that is deleted afterwards (SCAN + UNLINK, never FLUSHDB). Skipped when no Redis
// answers, unless CBHUB_REQUIRE_REDIS=1 (.ci/run sets it). The Python SDK's run of the same
// scenarios is tests/test_cluster_clients.py.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { createClient } from '../src/index.js';
import { MODEL, ask, assertGapFree, expectedAgentTexts, expectedText, runPython, startHub, startMock, withTimeout } from './support.js';

const REDIS_URL = process.env.CBHUB_TEST_REDIS_URL || 'redis://127.0.0.1:6379/15';
const PREFIX = `cbhub-test-js-${randomBytes(6).toString('hex')}:`;

/** Whether Redis answers at REDIS_URL (asked through the hub's Python, which has redis-py). */
function redisAnswers() {
  const code = 'import sys, redis; sys.stdout.write(str(redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()))';
  try {
    return runPython(['-c', code, REDIS_URL]) === 'True';
  } catch {
    return false;
  }
}

/** Unlink every key under PREFIX. */
function cleanRedis() {
  const code = [
    'import sys, redis',
    'client = redis.Redis.from_url(sys.argv[1])',
    'for key in client.scan_iter(match=sys.argv[2] + "*", count=500): client.unlink(key)',
  ].join('\n');
  runPython(['-c', code, REDIS_URL, PREFIX]);
}

const answers = redisAnswers();
if (!answers && process.env.CBHUB_REQUIRE_REDIS === '1') {
  throw new Error(`CBHUB_REQUIRE_REDIS=1 but no Redis answers at ${REDIS_URL}`);
}

describe('several hubs sharing Redis', { skip: answers ? false : `no Redis answers at ${REDIS_URL}` }, () => {
  let mock;
  let nodes = [];

  before(async () => {
    mock = await startMock();
    const config = { broker_url: REDIS_URL, broker_prefix: PREFIX };
    nodes = await Promise.all([0, 1, 2].map(() => startHub(mock.url, config)));
  });

  after(async () => {
    await Promise.all(nodes.map((node) => node.stop()));
    await mock?.stop();
    cleanRedis();
  });

  function client(t, options) {
    const c = createClient({ WebSocket, reconnect: { baseDelayMs: 10, maxDelayMs: 20 }, ...options });
    t.after(() => c.close());
    return c;
  }

  test('dropped from node A mid-stream, the client resumes on node C without loss', async (t) => {
    const [a, , c] = nodes;
    const reconnects = [];
    const hub = client(t, { urls: [a.wsUrl, c.wsUrl], onReconnect: (info) => reconnects.push(info) });
    assert.deepEqual(hub.urls, [a.wsUrl, c.wsUrl]);
    const events = [];
    const stream = hub.completion({ model: MODEL, coalesce: false, messages: ask('tokens=300 tps=600 seed=5') }, {
      onEvent: (event) => {
        events.push(event);
        if (event.seq === 20) hub.dropConnection();
      },
    });
    const result = await withTimeout(stream.result, 'the result');
    assert.equal(result.text, expectedText(300, 5));
    assert.equal(events.at(-1).type, 'completed');
    assert.deepEqual(events.map((event) => event.seq), events.map((_, index) => index + 1)); // no snapshot, no gap
    assertGapFree(events);
    assert.equal(reconnects.length, 1);
    assert.equal(reconnects[0].url, c.wsUrl);
    assert.equal(reconnects[0].code, 1006);
    assert.deepEqual(reconnects[0].channels, [stream.channel]);
    assert.equal(hub.url, c.wsUrl);
  });

  test('each reconnect goes to the next node, round the list', async (t) => {
    const urls = nodes.map((node) => node.wsUrl);
    const reconnects = [];
    const hub = client(t, { urls, onReconnect: (info) => reconnects.push(info) });
    const events = [];
    let drops = 0;
    const stream = hub.completion({ model: MODEL, coalesce: false, messages: ask('tokens=400 tps=800 seed=6') }, {
      onEvent: (event) => {
        events.push(event);
        // Only once the last move is over (its onReconnect came), four times at most.
        if (event.seq % 50 === 0 && drops < 4 && drops === reconnects.length) {
          drops += 1;
          hub.dropConnection();
        }
      },
    });
    const result = await withTimeout(stream.result, 'the result');
    assert.equal(result.text, expectedText(400, 6));
    assertGapFree(events);
    assert.ok(reconnects.length >= 2, `${reconnects.length} reconnects`);
    // A, then B, C, A, B: each attempt takes the URL after the one lost.
    assert.deepEqual(reconnects.map((info) => info.url), reconnects.map((_, index) => urls[(index + 1) % urls.length]));
  });

  test('a workflow run on node A resumes on node C with every agent text exact', async (t) => {
    const [a, , c] = nodes;
    const reconnects = [];
    const hub = client(t, { urls: [a.wsUrl, c.wsUrl], onReconnect: (info) => reconnects.push(info) });
    const input = { topic: 'tides [[mock tokens=60 tps=400 seed=9]]', audience: 'sailors' };
    const expected = expectedAgentTexts('content_creation', input);
    const events = [];
    let dropped = false;
    const run = hub.workflow({ definitionName: 'content_creation', input }, {
      onEvent: (event) => {
        events.push(event);
        if (!dropped && event.type === 'agent_progress' && event.agentId === 'researcher' && event.seq > 5) {
          dropped = true;
          hub.dropConnection();
        }
      },
    });
    const result = await withTimeout(run.result, 'the run');
    assert.ok(dropped);
    assert.deepEqual(reconnects.map((info) => info.url), [c.wsUrl]);
    assert.equal(events.at(-1).type, 'workflow_completed');
    assert.ok(!events.some((event) => event.type === 'workflow_snapshot'));
    assertGapFree(events, 'workflow_snapshot');
    assert.deepEqual(result.results, expected);
  });

  test('urls are checked; assigning urls moves later reconnects', async (t) => {
    assert.throws(() => createClient({ WebSocket, url: nodes[0].wsUrl, urls: [nodes[1].wsUrl] }), /`url` or `urls`/);
    assert.throws(() => createClient({ WebSocket, urls: [] }), /non-empty array/);
    assert.throws(() => createClient({ WebSocket, urls: nodes[0].wsUrl }), /non-empty array/);
    const [a, b] = nodes;
    const reconnects = [];
    const hub = client(t, { urls: [a.wsUrl], onReconnect: (info) => reconnects.push(info) });
    const events = [];
    const stream = hub.completion({ model: MODEL, coalesce: false, messages: ask('tokens=100 tps=600 seed=4') }, {
      onEvent: (event) => {
        events.push(event);
        if (event.seq === 10) {
          hub.urls = [b.wsUrl]; // e.g. A is being taken out of service
          hub.dropConnection();
        }
      },
    });
    const result = await withTimeout(stream.result, 'the result');
    assert.equal(result.text, expectedText(100, 4));
    assertGapFree(events);
    assert.deepEqual(reconnects.map((info) => info.url), [b.wsUrl]);
    assert.deepEqual(hub.urls, [b.wsUrl]);
  });
});
