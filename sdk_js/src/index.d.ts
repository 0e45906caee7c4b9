// Types of the circuit-breaker-hub JavaScript SDK (src/index.js). The message types come from
// ./protocol.d.ts, which is generated from the hub's msgspec Structs.

import type {
  Attempt,
  ChatMessage,
  CitationMessage,
  Completed,
  Completion,
  ContentChunk,
  ErrorMessage,
  HubMessage,
  RefusalChunk,
  Snapshot,
  ThinkingStatus,
  ToolCallMessage,
  UsageInfo,
} from './protocol.js';

export * from './protocol.js';

/** The `completion` message without `type`: `{model, messages, ...options}`; `id` is optional
 * (the SDK makes one up, so that the stream can be resumed before the hub has answered). */
export type CompletionRequest = Omit<Completion, 'type'>;

/** A message of a completion's channel, as the stream yields them. */
export type CompletionEvent =
  | ContentChunk
  | ThinkingStatus
  | RefusalChunk
  | ToolCallMessage
  | CitationMessage
  | Snapshot
  | Completed;

/** What a completion produced, once it `completed`. */
export interface CompletionResult {
  id: string;
  /** All answer text, exactly as the provider sent it. */
  text: string;
  /** All reasoning text. */
  reasoning: string;
  refusal: string;
  toolCalls: ToolCallMessage[];
  citations: Record<string, unknown>[];
  usage: UsageInfo | null;
  finishReason: string;
  provider: string;
  model: string;
  ttftMs: number | null;
  attempts: Attempt[];
}

/** SDK error codes that the hub never sends (see `HubError`). */
export type SdkErrorCode = 'connection_closed' | 'reconnect_failed' | 'resume_failed' | 'stream_gap';

/**
 * An error from the hub (`code` from docs/PROTOCOL.md "Error codes") or from the SDK:
 * `connection_closed` (the client was closed, or the socket closed with a code that does not
 * mean "reconnect"), `reconnect_failed` (`reconnect.maxAttempts` reached), `resume_failed`
 * (a snapshot did not continue the text already delivered), `stream_gap` (messages of a
 * completion never arrived; retryable).
 */
export declare class HubError extends Error {
  constructor(init?: {
    code: string;
    message?: string;
    retryable?: boolean;
    status?: number;
    usage?: UsageInfo;
    attempts?: Attempt[];
    completionId?: string;
    event?: ErrorMessage;
  });
  readonly name: 'HubError';
  code: import('./protocol.js').ErrorCode | SdkErrorCode | (string & {});
  retryable: boolean;
  /** The provider's HTTP status, when there was one. */
  status?: number;
  /** What the provider reported before failing (tokens already billed). */
  usage?: UsageInfo;
  attempts?: Attempt[];
  completionId?: string;
  /** The hub's `error` message, when the hub sent one. */
  event?: ErrorMessage;
  static fromMessage(message: ErrorMessage): HubError;
}

/** Callbacks of a channel's messages. Each is optional. */
export interface StreamHandlers {
  /** Every message of the channel, in `seq` order, without duplicates (the terminal `error`
   * too). After a `snapshot` come synthetic messages with what it adds (README "Resume"). */
  onEvent?(event: HubMessage): void;
  /** New answer text: each `content_chunk`'s content (after a resume: only the missing text). */
  onContent?(delta: string, message: ContentChunk): void;
  /** New reasoning text of each `thinking_status` (empty for a `done` or a signature). */
  onThinking?(delta: string, message: ThinkingStatus): void;
  /** Each tool call once (also those a `snapshot` brings). */
  onToolCall?(call: ToolCallMessage): void;
  onComplete?(result: CompletionResult): void;
  onError?(error: HubError): void;
}

/** A running completion: an async iterable of its messages, and its result. */
export interface CompletionStream extends AsyncIterable<CompletionEvent> {
  /** The completion id (the request's, or one the SDK made up). */
  readonly id: string;
  /** `completion:<id>`. */
  readonly channel: string;
  /** Resolves when the completion `completed`; rejects with a HubError otherwise. */
  readonly result: Promise<CompletionResult>;
  /** `client.cancel(this.id)`. */
  cancel(): Promise<void>;
  /** Every message of the completion from the start, then the live ones; ends after
   * `completed`, throws the HubError of a terminal `error` or of a lost connection. */
  [Symbol.asyncIterator](): AsyncIterator<CompletionEvent>;
}

export type ClientStatus = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ReconnectOptions {
  /** Backoff base in ms (default 100): the wait before reconnect n is uniform in
   * [0, min(maxDelayMs, baseDelayMs * 2^n)]. */
  baseDelayMs?: number;
  /** Backoff cap in ms (default 5000). */
  maxDelayMs?: number;
  /** Give up after this many reconnects in a row without a message (default Infinity). */
  maxAttempts?: number;
}

export interface ReconnectInfo {
  /** The reconnect attempt that succeeded, from 1. */
  attempt: number;
  /** The close code that caused it (1006 for a dropped connection). */
  code: number;
  reason: string;
  /** The wait before this attempt, in ms. */
  delayMs: number;
  /** The channels resumed (`completion:<id>`, ...). */
  channels: string[];
}

/** Any WebSocket constructor with the browser's interface (`ws` in Node). */
export interface WebSocketConstructor {
  new (url: string): WebSocketLike;
}

export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
}

export interface ClientOptions {
  /** `ws://host:port/ws/stream`; in a browser it may be relative (default `/ws/stream` of the page's host). */
  url?: string | URL;
  /** The WebSocket implementation (default `globalThis.WebSocket`; in Node pass `ws`). */
  WebSocket?: WebSocketConstructor | (new (url: string) => unknown);
  /** Ask for `?batch=1`: several messages per frame, newline-separated. */
  batch?: boolean;
  /** Backoff settings, or `false` to never reconnect. */
  reconnect?: ReconnectOptions | false;
  /** Called after a reconnect, once the streams were resumed. */
  onReconnect?(info: ReconnectInfo): void;
  /** Called on every status change. */
  onStatus?(status: ClientStatus): void;
}

export interface HubClient {
  readonly status: ClientStatus;
  /** The WebSocket URL in use. */
  readonly url: string;
  /** Start a completion; it is resumed across reconnects until it ends. */
  completion(request: CompletionRequest, handlers?: StreamHandlers): CompletionStream;
  /** Watch a channel (`completion:<id>`, `system`, `workflow:<id>`, `agent:<id>`): the
   * handlers get its history, then the live messages, across reconnects. Returns dispose. */
  subscribe(channel: string, handlers?: StreamHandlers): () => void;
  /** `subscribe('workflow:' + workflowId, handlers)`. */
  subscribeWorkflow(workflowId: string, handlers?: StreamHandlers): () => void;
  /** Cancel a completion this client watches. Resolves once the hub accepted it (the stream
   * then ends with HubError `cancelled`); rejects with `unknown_completion`, `not_subscribed`. */
  cancel(completionId: string): Promise<void>;
  /** Close the socket for good; streams still open fail with `connection_closed`. */
  close(): void;
  /** Drop the socket abruptly, as a network failure would, and reconnect (tests, demos). */
  dropConnection(): void;
}

export declare const DEFAULT_RECONNECT: Readonly<Required<ReconnectOptions>>;

/** Connect to the hub (at once) and return the client. */
export declare function createClient(options?: ClientOptions): HubClient;

/** Whether a close code means "reconnect and resume" (docs/PROTOCOL.md "Close codes"). */
export declare function shouldReconnect(code: number): boolean;

/** Full-jitter backoff: uniform in [0, min(maxDelayMs, baseDelayMs * 2^attempt)], in ms. */
export declare function backoffDelay(
  attempt: number,
  options?: { baseDelayMs: number; maxDelayMs: number },
  random?: () => number,
): number;

export type { ChatMessage };
