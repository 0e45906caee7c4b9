// createClient({token | getToken}) against a real hub that requires JWTs (auth.mode jwt, an
// HS256 secret), backed by the mock provider. The tokens are signed here with node:crypto.

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { HubError, createClient } from '../src/index.js';
import { MODEL, ask, expectedText, startHub, startMock, waitFor, withTimeout } from './support.js';

const SECRET = randomBytes(32).toString('hex');
let mock;
let hub;

before(async () => {
  mock = await startMock();
  hub = await startHub(mock.url, { auth_mode: 'jwt', jwt_secret: SECRET, jwt_leeway_s: 0 });
});

after(async () => {
  await hub?.stop();
  await mock?.stop();
});

const base64url = (data) => Buffer.from(data).toString('base64url');

/** An HS256 JWT for `sub` valid for `seconds` (RFC 7519), signed with `secret`. */
function jwt(sub, seconds, secret = SECRET) {
  const now = Math.floor(Date.now() / 1000);
  const head = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = base64url(JSON.stringify({ sub, iat: now, exp: now + seconds }));
  const signature = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

function client(t, options) {
  const c = createClient({ url: hub.wsUrl, WebSocket, reconnect: { baseDelayMs: 20, maxDelayMs: 200 }, ...options });
  t.after(() => c.close());
  return c;
}

describe('a hub that requires tokens', () => {
  test('a valid token: the completion streams, and getToken is asked again on every reconnect', async (t) => {
    let asked = 0;
    const c = client(t, { getToken: async () => { asked += 1; return jwt('alice', 600); } });
    const first = await withTimeout(c.completion({ model: MODEL, messages: ask('tokens=6 seed=1') }).result, 'first');
    assert.equal(first.text, expectedText(6, 1));
    assert.equal(asked, 1);
    c.dropConnection();
    await waitFor(() => asked === 2 && c.status === 'open', 'the reconnect to authenticate again');
    const second = await withTimeout(c.completion({ model: MODEL, messages: ask('tokens=4 seed=2') }).result, 'second');
    assert.equal(second.text, expectedText(4, 2));
  });

  test('a token close to expiry is refreshed on the open socket before it expires', async (t) => {
    let asked = 0;
    let firstExpiresAt = 0;
    let refreshedAt = 0;
    const c = client(t, {
      getToken: () => {
        asked += 1;
        if (asked === 1) firstExpiresAt = Date.now() + 7_000;
        else refreshedAt ||= Date.now();
        return jwt('bob', asked === 1 ? 7 : 600);
      },
    });
    await withTimeout(c.completion({ model: MODEL, messages: ask('tokens=2') }).result, 'first');
    // expiresAt is 7 s away: the SDK sends a fresh token 5 s before it, on the same socket,
    // not waiting for the hub's token_expired.
    await waitFor(() => asked === 2, 'the refresh');
    assert.ok(refreshedAt < firstExpiresAt - 3_000, `refreshed ${firstExpiresAt - refreshedAt} ms before expiry`);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, firstExpiresAt + 1_000 - Date.now())));
    const after = await withTimeout(c.completion({ model: MODEL, messages: ask('tokens=3 seed=3') }).result, 'after');
    assert.equal(after.text, expectedText(3, 3));
    assert.equal(c.status, 'open');
  });

  test('a refused token rejects with a clear error and the client stops reconnecting', async (t) => {
    const statuses = [];
    const c = client(t, { token: jwt('mallory', 600, 'not-the-secret-not-the-secret-00'), onStatus: (s) => statuses.push(s) });
    const stream = c.completion({ model: MODEL, messages: ask('tokens=2') });
    const error = await withTimeout(stream.result.then(() => null, (e) => e), 'the refusal');
    assert.ok(error instanceof HubError);
    assert.ok(['invalid_token', 'unauthorized'].includes(error.code), error.code);
    await waitFor(() => c.status === 'closed', 'the client to close');
    assert.ok(!statuses.includes('reconnecting'));
  });

  test('no token at all: the hub closes 4001 and the client rejects with unauthorized', async (t) => {
    const c = client(t, {});
    const error = await withTimeout(
      c.completion({ model: MODEL, messages: ask('tokens=2') }).result.then(() => null, (e) => e), 'the refusal');
    assert.ok(error instanceof HubError);
    assert.ok(['unauthorized', 'connection_closed'].includes(error.code), error.code);
  });
});
