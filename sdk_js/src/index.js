// circuit-breaker-hub JavaScript SDK: one WebSocket to the hub, many completions, workflow runs
// and channel subscriptions over it, reconnect with backoff and resume of every open stream.
//
// Plain ES module with no dependencies: browsers load it as it is (the hub serves sdk_js/src/);
// Node passes a WebSocket implementation (the `ws` package). The wire protocol is
// docs/PROTOCOL.md; the message types and codes are in ./protocol.js, generated from the hub.
//
// Theory of operation
// - The client owns one socket at a time. Everything it must re-establish after a reconnect
//   is derived from its channels (one per `completion:<id>`, `system`, `workflow:<id>`, ...):
//   on every open it sends, per channel, either the `completion` or `create_workflow` that
//   starts it (not acknowledged yet) or a `subscribe` (`subscribe_workflow` for a workflow)
//   with `since` (the channel's epoch and last seq).
// - Answers that carry no channel (`subscribed`, `unsubscribed`, `pong`, an `error` without
//   `completionId` or `workflowId`) are matched to the requests in the order they were sent:
//   the hub handles a connection's messages one at a time and answers in order. A `cancel` or
//   `cancel_workflow` carries a request id (`rid`, docs/PROTOCOL.md): the hub answers it with
//   an `ack` or an `error` that echo the rid, and the client matches that answer by it (answers
//   without a rid go, in order, to the requests sent without one).
// - Channel messages go through ChannelState (./channel.js), which drops replayed duplicates
//   and turns a `snapshot` or `workflow_snapshot` into just what is missing, then to the
//   channel's listeners.
//   Reconnect and resume behave as in the Python SDK (hub/client.py).

import { ChannelState, ResumeError } from './channel.js';
import { CHANNEL_PATTERN, CLOSE_CODES, HUB_CLOSE_CODE_RANGE } from './protocol.js';
import { EventQueue } from './queue.js';

export * from './protocol.js';
// The seeds' names (CircuitBreakerStream, its WorkflowStream) over this client: ./seeds.js.
export { CircuitBreakerStream, WorkflowStream } from './seeds.js';

/** Reconnect settings when `createClient` is given none. */
export const DEFAULT_RECONNECT = Object.freeze({ baseDelayMs: 100, maxDelayMs: 5000, maxAttempts: Infinity });

/** The socket is open this long without a message and the backoff starts from 0 again. */
const STABLE_AFTER_MS = 5000;
const OPEN = 1;
/** A stream's Listener (kept off the stream's public properties). */
const LISTENER = Symbol('listener');

/**
 * An error reported by the hub (`error.code` of docs/PROTOCOL.md "Error codes"), or by the SDK
 * itself: `connection_closed` (the client was closed, or the socket closed with a code that does
 * not mean "reconnect"), `reconnect_failed` (`reconnect.maxAttempts` reached), `resume_failed`
 * (a snapshot did not continue the text already delivered), `stream_gap` (messages of a
 * completion or workflow never arrived), `workflow_failed` (a workflow failed while the client
 * was away and the hub's snapshot does not say why).
 */
export class HubError extends Error {
  constructor({ code, message, retryable = false, status, usage, attempts, completionId, workflowId, event } = {}) {
    super(message ?? code);
    this.name = 'HubError';
    this.code = code;
    this.retryable = retryable;
    if (status != null) this.status = status;
    if (usage != null) this.usage = usage;
    if (attempts != null) this.attempts = attempts;
    if (completionId != null) this.completionId = completionId;
    if (workflowId != null) this.workflowId = workflowId;
    if (event != null) this.event = event;
  }

  /** The HubError of a hub `error` message. */
  static fromMessage(message) {
    const error = message.error ?? {};
    return new HubError({
      ...error,
      usage: message.usage,
      attempts: message.attempts,
      completionId: message.completionId,
      workflowId: message.workflowId,
      event: message,
    });
  }
}

/** Whether a close code means "reconnect and resume" (docs/PROTOCOL.md "Close codes"). */
export function shouldReconnect(code) {
  const known = CLOSE_CODES[String(code)];
  if (known) return known.reconnect;
  return code >= HUB_CLOSE_CODE_RANGE[0] && code <= HUB_CLOSE_CODE_RANGE[1];
}

/**
 * Exponential backoff with full jitter: uniform in [0, min(maxDelayMs, baseDelayMs · 2^attempt)].
 * @param {number} attempt 0 for the first reconnect.
 */
export function backoffDelay(attempt, { baseDelayMs, maxDelayMs } = DEFAULT_RECONNECT, random = Math.random) {
  const cap = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/** Create a client; it connects at once (see docs in index.d.ts and README.md). */
export function createClient(options) {
  return new HubClient(options);
}

let idCounter = 0;
let ridCounter = 0;
const idPrefix = randomHex(4);

function randomHex(bytes) {
  const values = new Uint8Array(bytes);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(values);
  else for (let i = 0; i < bytes; i += 1) values[i] = Math.floor(Math.random() * 256);
  return Array.from(values, (b) => b.toString(16).padStart(2, '0')).join('');
}

function resolveUrl(url, batch) {
  const location = globalThis.location;
  let resolved;
  if (url == null) {
    if (!location) throw new TypeError('createClient: `url` is required outside a browser');
    resolved = new URL('/ws/stream', location.href);
  } else {
    resolved = new URL(String(url), location?.href);
  }
  if (resolved.protocol === 'http:') resolved.protocol = 'ws:';
  else if (resolved.protocol === 'https:') resolved.protocol = 'wss:';
  if (batch) resolved.searchParams.set('batch', '1');
  return resolved.toString();
}

/** `urls` resolved as `resolveUrl` does each; a TypeError unless a non-empty array. */
function resolveUrls(urls, batch) {
  if (!Array.isArray(urls) || urls.length === 0) throw new TypeError('createClient: `urls` must be a non-empty array of URLs');
  return urls.map((url) => {
    if (url == null) throw new TypeError('createClient: `urls` must be a non-empty array of URLs');
    return resolveUrl(url, batch);
  });
}

/**
 * The channel a hub message belongs to. The agent events of a workflow are published on
 * `workflow:<id>` and on `agent:<id>.<agentId>` alike, without a channel name: they go to the
 * agent channel when the client watches it and not the workflow's (README "Workflows").
 */
function channelOf(message, channels) {
  if (typeof message.channel === 'string') return message.channel;
  if (message.workflowId != null) {
    // (before completionId: an `agent_started` carries its agent's completion id)
    const workflow = `workflow:${message.workflowId}`;
    if (message.agentId != null && !channels.has(workflow)) return `agent:${message.workflowId}.${message.agentId}`;
    return workflow;
  }
  if (message.completionId != null) return `completion:${message.completionId}`;
  if (message.type === 'circuit_state') return 'system';
  return null;
}

/** Call a user callback; an exception in it is re-thrown outside the SDK's own code. */
function invoke(callback, ...args) {
  if (typeof callback !== 'function') return;
  try {
    callback(...args);
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
  }
}

/** What a workflow run produced, from its `workflow_completed`. */
function workflowResultOf(completed) {
  const data = completed.result ?? {};
  return {
    workflowId: completed.workflowId,
    place: completed.place,
    data,
    results: data.results ?? {},
    usage: completed.usage ?? null,
  };
}

function resultOf(state, completed, id) {
  return {
    id,
    text: state.content,
    reasoning: state.reasoning,
    refusal: state.refusal,
    toolCalls: state.toolCalls,
    citations: state.citations,
    choices: state.choices,
    usage: completed.usage ?? null,
    finishReason: completed.finishReason,
    finishReasons: completed.finishReasons ?? null,
    provider: completed.provider,
    model: completed.model,
    ttftMs: completed.ttftMs ?? null,
    attempts: completed.attempts ?? [],
  };
}

/** Whether a hub message ends its channel with an error (a completion's or a workflow's). */
function isTerminalError(message) {
  return message.type === 'error' && (message.completionId != null || (message.workflowId != null && message.seq != null));
}

// One local subscriber of a channel: a `client.subscribe` handler set, a completion stream or
// a workflow stream.
class Listener {
  constructor(handlers, onDone) {
    this.handlers = handlers ?? {};
    this.onDone = onDone;
    this.done = false;
  }

  deliver(message, channel) {
    if (this.done) return;
    const h = this.handlers;
    invoke(h.onEvent, message);
    switch (message.type) {
      case 'content_chunk':
        invoke(h.onContent, message.content, message);
        break;
      case 'thinking_status':
        invoke(h.onThinking, message.content ?? '', message);
        break;
      case 'tool_call':
        invoke(h.onToolCall, message);
        break;
      case 'completed':
        this.finish(null, resultOf(channel.state, message, channel.id));
        break;
      case 'error':
        if (isTerminalError(message)) this.finish(HubError.fromMessage(message), null);
        break;
      case 'workflow_transition':
        invoke(h.onTransition, message);
        break;
      case 'agent_started':
        invoke(h.onAgentStarted, message.agentId, message);
        break;
      case 'agent_progress':
        invoke(h.onAgentProgress, message.agentId, message.content ?? '', message);
        break;
      case 'function_executed':
        invoke(h.onFunction, message);
        break;
      case 'agent_completed':
        invoke(h.onAgentCompleted, message.agentId, message.result, message);
        break;
      case 'workflow_snapshot':
        invoke(h.onSnapshot, message);
        break;
      case 'workflow_completed':
        this.finish(null, workflowResultOf(message));
        break;
      default:
        break;
    }
  }

  finish(error, result) {
    if (this.done) return;
    this.done = true;
    if (error) invoke(this.handlers.onError, error);
    else invoke(this.handlers.onComplete, result);
    this.onDone?.(error, result);
  }
}

// A channel the client watches: its state, its local listeners and the messages delivered so
// far (a listener added later gets them first).
class Channel {
  constructor(name, start) {
    this.name = name;
    this.id = name.startsWith('completion:') || name.startsWith('workflow:') ? name.slice(name.indexOf(':') + 1) : null;
    this.state = new ChannelState(name);
    this.listeners = new Set();
    this.delivered = [];
    /** The `completion` or `create_workflow` message that starts this channel, until the hub
     * acknowledged it. */
    this.start = start ?? null;
    this.startSent = false;
    /** The socket on which the hub has (or will have) this channel subscribed. */
    this.socket = null;
  }
}

// A stream of one channel's messages: an async iterable with a `result` promise (the base of
// CompletionStream and WorkflowStream).
class Stream {
  constructor(channel, handlers, cancel) {
    this.id = channel.id;
    this.channel = channel.name;
    this.#cancel = cancel;
    this.result = new Promise((resolve, reject) => {
      this.#settle = { resolve, reject };
    });
    this.result.catch(() => {}); // a stream nobody awaits must not be an unhandled rejection
    const wrapped = { ...handlers };
    const userEvent = handlers?.onEvent;
    wrapped.onEvent = (message) => {
      if (!isTerminalError(message)) this.#queue.push(message);
      invoke(userEvent, message);
    };
    this[LISTENER] = new Listener(wrapped, (error, result) => {
      if (error) {
        this.#settle.reject(error);
      } else {
        this.#settle.resolve(result);
      }
      this.#queue.end(error);
    });
  }

  #cancel;
  #queue = new EventQueue();
  #settle;

  /** Cancel what this stream shows (see `client.cancel` and `client.cancelWorkflow`). */
  cancel() {
    return this.#cancel(this.id);
  }

  [Symbol.asyncIterator]() {
    return this.#queue[Symbol.asyncIterator]();
  }
}

class CompletionStream extends Stream {}

class WorkflowStream extends Stream {}

class HubClient {
  constructor(options = {}) {
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketImpl !== 'function') {
      throw new TypeError('createClient: no WebSocket implementation; pass {WebSocket} (in Node: the `ws` package)');
    }
    this.#WebSocket = WebSocketImpl;
    if (options.urls != null && options.url != null) throw new TypeError('createClient: give `url` or `urls`, not both');
    this.#urls = options.urls != null ? resolveUrls(options.urls, options.batch) : [resolveUrl(options.url, options.batch)];
    this.#url = this.#urls[0];
    this.#batch = Boolean(options.batch);
    this.#reconnect = options.reconnect === false ? null : { ...DEFAULT_RECONNECT, ...(options.reconnect ?? {}) };
    this.#onReconnect = options.onReconnect;
    this.#onStatus = options.onStatus;
    if (options.token != null && typeof options.token !== 'string') throw new TypeError('createClient: `token` must be a string');
    if (options.getToken != null && typeof options.getToken !== 'function') throw new TypeError('createClient: `getToken` must be a function');
    this.#token = options.token ?? null;
    this.#getToken = options.getToken ?? null;
    this.#connect();
  }

  #token;
  #getToken;
  #authed = false; // the current socket has been answered `authenticated` (or needs no auth)
  #refreshTimer = null;

  #WebSocket;
  #urls; // every hub URL, in the order tried (several hubs sharing a broker)
  #urlIndex = -1; // the position in #urls of the URL last tried
  #url;
  #batch;
  #reconnect;
  #onReconnect;
  #onStatus;
  #status = 'connecting';
  #ws = null;
  #closed = false;
  #channels = new Map();
  #expected = []; // answers awaited on the current socket, in the order the requests went out
  #outbox = []; // cancels waiting for a socket
  #attempt = 0;
  #timer = null;
  #stableTimer = null;
  #lastClose = null;

  /** `connecting`, `open`, `reconnecting` (waiting to reconnect) or `closed`. */
  get status() {
    return this.#status;
  }

  /** The WebSocket URL in use, or last tried (with `batch=1` when batching). */
  get url() {
    return this.#url;
  }

  /** The hubs' WebSocket URLs, in the order they are tried. */
  get urls() {
    return [...this.#urls];
  }

  /** Move later reconnects to other hubs (sharing the broker), from the first of `urls` on. */
  set urls(urls) {
    this.#urls = resolveUrls(urls, this.#batch);
    this.#urlIndex = -1;
  }

  // Public API.

  completion(request, handlers = {}) {
    if (request == null || typeof request !== 'object') throw new TypeError('completion(request): request must be an object');
    const id = request.id ?? `js-${idPrefix}-${(idCounter += 1)}`;
    const name = `completion:${id}`;
    const start = { type: 'completion', ...request, id };
    const channel = new Channel(name, start);
    const stream = new CompletionStream(channel, handlers, (completionId) => this.cancel(completionId));
    if (this.#closed) {
      stream[LISTENER].finish(new HubError({ code: 'connection_closed', message: 'the client is closed' }), null);
      return stream;
    }
    if (this.#channels.has(name)) {
      stream[LISTENER].finish(new HubError({ code: 'duplicate_id', message: `completion id '${id}' is already in use by this client` }), null);
      return stream;
    }
    this.#addListener(channel, stream[LISTENER]);
    return stream;
  }

  subscribe(channelName, handlers = {}) {
    if (typeof channelName !== 'string' || !CHANNEL_PATTERN.test(channelName)) {
      throw new TypeError(`subscribe: '${channelName}' is not a channel name (completion:<id>, workflow:<id>, agent:<id> or system)`);
    }
    if (this.#closed) {
      new Listener(handlers).finish(new HubError({ code: 'connection_closed', message: 'the client is closed' }), null);
      return () => {};
    }
    let channel = this.#channels.get(channelName);
    const listener = new Listener(handlers, () => this.#removeListener(channel, listener));
    if (channel) {
      channel.listeners.add(listener);
      const replay = channel.delivered.slice();
      queueMicrotask(() => {
        for (const message of replay) listener.deliver(message, channel);
      });
    } else {
      channel = new Channel(channelName, null);
      this.#addListener(channel, listener);
    }
    return () => {
      if (listener.done) return;
      listener.done = true;
      this.#removeListener(channel, listener);
    };
  }

  workflow(request, handlers = {}) {
    if (request == null || typeof request !== 'object') throw new TypeError('workflow(request): request must be an object');
    const { workflowId: given, definitionName, definition, input, ...rest } = request;
    const workflowId = given ?? `js-wf-${idPrefix}-${(idCounter += 1)}`;
    const name = `workflow:${workflowId}`;
    const start = { type: 'create_workflow', workflowId, ...rest, input: input ?? {} };
    if (definitionName != null) start.definitionName = definitionName;
    if (definition != null) start.definition = definition;
    const channel = new Channel(name, start);
    const stream = new WorkflowStream(channel, handlers, (id) => this.cancelWorkflow(id));
    if (this.#closed) {
      stream[LISTENER].finish(new HubError({ code: 'connection_closed', message: 'the client is closed' }), null);
      return stream;
    }
    if (this.#channels.has(name)) {
      stream[LISTENER].finish(new HubError({ code: 'duplicate_id', message: `workflow id '${workflowId}' is already in use by this client` }), null);
      return stream;
    }
    this.#addListener(channel, stream[LISTENER]);
    return stream;
  }

  subscribeWorkflow(workflowId, handlers = {}) {
    if (typeof workflowId !== 'string' || !CHANNEL_PATTERN.test(`workflow:${workflowId}`)) {
      throw new TypeError(`subscribeWorkflow: '${workflowId}' is not a workflow id (1-128 characters from A-Z a-z 0-9 _ . : -)`);
    }
    return this.subscribe(`workflow:${workflowId}`, handlers);
  }

  cancel(completionId) {
    return this.#cancelRequest({ type: 'cancel', completionId });
  }

  cancelWorkflow(workflowId) {
    return this.#cancelRequest({ type: 'cancel_workflow', workflowId });
  }

  #cancelRequest(message) {
    return new Promise((resolve, reject) => {
      if (this.#closed) {
        reject(new HubError({ code: 'connection_closed', message: 'the client is closed' }));
        return;
      }
      const request = { message, resolve, reject };
      if (this.#isOpen()) this.#sendCancel(request);
      else this.#outbox.push(request);
    });
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#stableTimer);
    clearTimeout(this.#refreshTimer);
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      try {
        ws.close(1000, 'client closed');
      } catch {
        // already closing
      }
    }
    this.#failAll(new HubError({ code: 'connection_closed', message: 'the client was closed' }));
    this.#setStatus('closed');
  }

  dropConnection() {
    const ws = this.#ws;
    if (!ws) return;
    if (typeof ws.terminate === 'function') {
      ws.terminate(); // Node's `ws`: drop the TCP connection, as a network failure would
    } else {
      try {
        ws.close(4000, 'dropped by the client'); // browsers cannot drop a socket abruptly
      } catch {
        // already closing
      }
    }
    this.#handleClose(ws, 1006, 'dropped by dropConnection()');
  }

  // Channels and listeners.

  #addListener(channel, listener) {
    channel.listeners.add(listener);
    this.#channels.set(channel.name, channel);
    if (this.#isOpen()) this.#sync(channel);
  }

  #removeListener(channel, listener) {
    channel.listeners.delete(listener);
    if (channel.listeners.size > 0 || this.#channels.get(channel.name) !== channel) return;
    this.#channels.delete(channel.name);
    if (channel.socket && channel.socket === this.#ws && this.#isOpen()) {
      this.#send({ type: 'unsubscribe', channels: [channel.name] }, { kind: 'unsubscribe' });
    }
  }

  /** Start or resubscribe one channel on the current (open) socket. */
  #sync(channel) {
    channel.socket = this.#ws;
    if (channel.start && !channel.startSent) {
      channel.startSent = true;
      this.#send(channel.start, { kind: 'start', channel });
      return;
    }
    const cursor = channel.state.cursor();
    let message;
    if (channel.state.workflow) {
      message = { type: 'subscribe_workflow', workflowId: channel.id };
      if (cursor) message.since = cursor;
    } else {
      message = { type: 'subscribe', channels: [channel.name] };
      if (cursor) message.since = { [channel.name]: cursor };
    }
    this.#send(message, { kind: 'subscribe', channel });
  }

  #failChannel(channel, error) {
    if (this.#channels.get(channel.name) === channel) this.#channels.delete(channel.name);
    for (const listener of [...channel.listeners]) listener.finish(error, null);
    channel.listeners.clear();
  }

  #failAll(error) {
    for (const channel of [...this.#channels.values()]) this.#failChannel(channel, error);
    for (const request of this.#outbox) request.reject(error);
    this.#outbox = [];
    for (const expected of this.#expected) if (expected.kind === 'cancel') expected.request.reject(error);
    this.#expected = [];
  }

  // Sending.

  #isOpen() {
    return this.#ws != null && this.#ws.readyState === OPEN && this.#authed;
  }

  #needsAuth() {
    return this.#token != null || this.#getToken != null;
  }

  #send(message, expected) {
    this.#ws.send(JSON.stringify(message));
    if (expected) this.#expected.push(expected);
  }

  #sendCancel(request) {
    ridCounter += 1;
    const rid = `js-${ridCounter}`;
    this.#send({ ...request.message, rid }, { kind: 'cancel', request, rid });
  }

  // The socket.

  #setStatus(status) {
    if (this.#status === status) return;
    this.#status = status;
    invoke(this.#onStatus, status);
  }

  #connect() {
    this.#setStatus('connecting');
    // The URL after the one last tried: after a lost or failed connection, another hub first.
    this.#urlIndex = (this.#urlIndex + 1) % this.#urls.length;
    this.#url = this.#urls[this.#urlIndex];
    let ws;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch (error) {
      this.#ws = null;
      this.#afterClose(1006, String(error?.message ?? error));
      return;
    }
    this.#ws = ws;
    this.#expected = [];
    this.#authed = !this.#needsAuth();
    ws.onopen = () => {
      if (ws !== this.#ws) return;
      if (this.#authed) this.#handleOpen();
      else this.#authenticate(ws);
    };
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#handleFrame(event.data);
    };
    ws.onclose = (event) => this.#handleClose(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
  }

  // Authentication (docs/PROTOCOL.md "Authentication"): the token goes in the first message of
  // every socket; nothing else is sent until the hub answers `authenticated`, and a fresh
  // token is sent again before `expiresAt`.

  async #currentToken() {
    return this.#getToken ? String(await this.#getToken()) : this.#token;
  }

  async #authenticate(ws) {
    let token;
    try {
      token = await this.#currentToken();
    } catch (error) {
      this.#fatal(new HubError({ code: 'unauthorized', message: `getToken failed: ${error?.message ?? error}` }));
      return;
    }
    if (ws !== this.#ws || ws.readyState !== OPEN) return;
    ws.send(JSON.stringify({ type: 'auth', token }));
  }

  #authenticated(message) {
    clearTimeout(this.#refreshTimer);
    const expiresAt = Number(message.expiresAt);
    if (Number.isFinite(expiresAt) && expiresAt > 0) {
      // Refresh a little before expiry: 10% of the remaining time, 5 s to 60 s ahead.
      const remaining = expiresAt - Date.now();
      const ahead = Math.min(60_000, Math.max(5_000, remaining / 10));
      const ws = this.#ws;
      this.#refreshTimer = setTimeout(() => {
        if (ws === this.#ws && ws.readyState === OPEN) this.#authenticate(ws);
      }, Math.max(0, remaining - ahead));
    }
    if (!this.#authed) {
      this.#authed = true;
      this.#handleOpen();
    }
  }

  #fatal(error) {
    this.#closed = true;
    clearTimeout(this.#refreshTimer);
    this.#failAll(error);
    this.#setStatus('closed');
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
  }

  #handleOpen() {
    const reconnected = this.#lastClose;
    this.#setStatus('open');
    clearTimeout(this.#stableTimer);
    this.#stableTimer = setTimeout(() => {
      this.#attempt = 0;
    }, STABLE_AFTER_MS);
    const names = [];
    for (const channel of this.#channels.values()) {
      names.push(channel.name);
      this.#sync(channel);
    }
    const outbox = this.#outbox;
    this.#outbox = [];
    for (const request of outbox) this.#sendCancel(request);
    if (reconnected) {
      this.#lastClose = null;
      invoke(this.#onReconnect, { ...reconnected, channels: names, url: this.#url });
    }
  }

  #handleClose(ws, code, reason) {
    if (ws !== this.#ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    this.#ws = null;
    clearTimeout(this.#stableTimer);
    // Cancels whose answer did not come are sent again on the next socket.
    const lost = this.#expected;
    this.#expected = [];
    for (const expected of lost) if (expected.kind === 'cancel') this.#outbox.push(expected.request);
    for (const channel of this.#channels.values()) channel.socket = null;
    this.#afterClose(code, reason);
  }

  #afterClose(code, reason) {
    if (this.#closed) return;
    clearTimeout(this.#refreshTimer);
    if (code === 4001 || code === 4003) {
      // The credential is refused: reconnecting with it would be refused again.
      const kind = code === 4001 ? 'unauthorized' : 'forbidden';
      this.#fatal(new HubError({ code: kind, message: `the hub closed the connection with ${code}${reason ? ` (${reason})` : ''}: ${kind}` }));
      return;
    }
    const policy = this.#reconnect;
    if (!policy || !shouldReconnect(code)) {
      this.#closed = true;
      this.#failAll(new HubError({ code: 'connection_closed', message: `the connection closed with ${code}${reason ? ` (${reason})` : ''}` }));
      this.#setStatus('closed');
      return;
    }
    if (this.#attempt >= policy.maxAttempts) {
      this.#closed = true;
      this.#failAll(new HubError({ code: 'reconnect_failed', message: `gave up after ${this.#attempt} reconnect attempts (last close ${code})`, retryable: true }));
      this.#setStatus('closed');
      return;
    }
    const delayMs = backoffDelay(this.#attempt, policy);
    this.#attempt += 1;
    this.#lastClose = { attempt: this.#attempt, code, reason: reason ?? '', delayMs };
    this.#setStatus('reconnecting');
    this.#timer = setTimeout(() => this.#connect(), delayMs);
  }

  // Receiving.

  #handleFrame(data) {
    const text = typeof data === 'string' ? data : new TextDecoder().decode(data);
    if (this.#batch) {
      for (const line of text.split('\n')) if (line) this.#handleText(line);
    } else {
      this.#handleText(text);
    }
  }

  #handleText(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message == null || typeof message !== 'object') return;
    clearTimeout(this.#stableTimer);
    this.#attempt = 0;
    switch (message.type) {
      case 'subscribed':
        this.#answer(message, (expected) => expected.kind === 'start' || expected.kind === 'subscribe');
        this.#acknowledged(message);
        return;
      case 'unsubscribed':
        this.#answer(message, (expected) => expected.kind === 'unsubscribe');
        return;
      case 'pong':
        this.#answer(message, (expected) => expected.kind === 'ping');
        return;
      case 'ack':
        this.#answer(message, (expected) => expected.kind === 'cancel');
        return;
      case 'authenticated':
        this.#authenticated(message);
        return;
      case 'error':
        if (this.#needsAuth() && message.rid == null && message.seq == null
            && ['invalid_token', 'unauthorized', 'token_expired'].includes(message.error?.code)) {
          // token_expired while authenticated: send a fresh token now; otherwise the hub refused it.
          if (this.#authed && message.error.code === 'token_expired') this.#authenticate(this.#ws);
          else this.#fatal(HubError.fromMessage(message));
          return;
        }
        if (message.rid != null || (message.completionId == null && message.workflowId == null)) {
          this.#answer(message, () => true);
          return;
        }
        break;
      default:
        break;
    }
    const name = channelOf(message, this.#channels);
    const channel = name == null ? undefined : this.#channels.get(name);
    if (channel) this.#deliver(channel, message);
  }

  /** Give an answer to the request with its `rid`, or without one, to the oldest request sent
   * without a rid. */
  #answer(message, accepts) {
    const rid = message.rid ?? null;
    const index = this.#expected.findIndex((expected) => (expected.rid ?? null) === rid);
    const expected = this.#expected[index];
    if (!expected || !accepts(expected)) return; // not ours (should not happen)
    this.#expected.splice(index, 1);
    switch (expected.kind) {
      case 'cancel':
        if (message.type === 'error') expected.request.reject(HubError.fromMessage(message));
        else expected.request.resolve();
        return;
      case 'start':
      case 'subscribe':
        if (message.type === 'error') this.#refused(expected, message);
        return;
      default:
        break;
    }
  }

  #refused(expected, message) {
    const channel = expected.channel;
    if (this.#channels.get(channel.name) !== channel) return;
    const code = message.error?.code;
    // A `completion` whose fate was unknown (the socket dropped before its answer) and whose
    // channel the hub does not have: it never arrived, so send it again.
    if (expected.kind === 'subscribe' && code === 'unknown_channel' && channel.start) {
      channel.startSent = false;
      if (this.#isOpen()) this.#sync(channel);
      return;
    }
    this.#failChannel(channel, HubError.fromMessage(message));
  }

  #acknowledged(message) {
    for (const name of message.channels ?? []) {
      const channel = this.#channels.get(name);
      if (!channel) continue;
      channel.start = null;
      channel.state.acknowledge(message.epochs?.[name]);
    }
  }

  #deliver(channel, message) {
    let messages;
    try {
      messages = channel.state.apply(message);
    } catch (error) {
      if (!(error instanceof ResumeError)) throw error;
      const retryable = error.code === 'stream_gap';
      const id = channel.state.workflow ? { workflowId: channel.id } : { completionId: channel.id };
      this.#failChannel(channel, new HubError({ code: error.code, message: error.message, retryable, ...id }));
      return;
    }
    for (const delivered of messages) {
      channel.delivered.push(delivered);
      for (const listener of [...channel.listeners]) listener.deliver(delivered, channel);
    }
    if (channel.state.terminal && this.#channels.get(channel.name) === channel) {
      for (const listener of [...channel.listeners]) listener.finish(null, null);
      this.#channels.delete(channel.name);
      if (channel.socket === this.#ws && this.#isOpen()) {
        this.#send({ type: 'unsubscribe', channels: [channel.name] }, { kind: 'unsubscribe' });
      }
    }
  }
}
