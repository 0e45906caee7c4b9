// Types of the circuit-breaker-hub JavaScript SDK (src/index.js). The message types come from
// ./protocol.d.ts, which is generated from the hub's msgspec Structs.

import type {
  AgentCompleted,
  AgentProgress,
  AgentStarted,
  Attempt,
  ChatMessage,
  CitationMessage,
  Completed,
  Completion,
  ContentChunk,
  ErrorMessage,
  FunctionExecuted,
  HubMessage,
  RefusalChunk,
  Snapshot,
  ThinkingStatus,
  TokenCreated,
  ToolCallMessage,
  UsageInfo,
  WorkflowCompleted,
  WorkflowSnapshot,
  WorkflowTransition,
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

/** The output of one choice above 0 of a completion with `n` above 1. */
export interface ChoiceOutput {
  content: string;
  reasoning: string;
  refusal: string;
  toolCalls: ToolCallMessage[];
  citations: Record<string, unknown>[];
}

/** What a completion produced, once it `completed`. */
export interface CompletionResult {
  id: string;
  /** All answer text of choice 0, exactly as the provider sent it. */
  text: string;
  /** All reasoning text of choice 0. */
  reasoning: string;
  refusal: string;
  toolCalls: ToolCallMessage[];
  citations: Record<string, unknown>[];
  /** With `n` above 1: the output of each choice above 0, by index (docs/PROTOCOL.md "Choices"); else `{}`. */
  choices: Record<number, ChoiceOutput>;
  usage: UsageInfo | null;
  finishReason: string;
  /** With `n` above 1: every choice's finish reason, at its index (`completed.finishReasons`); else null. */
  finishReasons: string[] | null;
  provider: string;
  model: string;
  ttftMs: number | null;
  attempts: Attempt[];
}

/** SDK error codes that the hub never sends (see `HubError`). */
export type SdkErrorCode = 'connection_closed' | 'reconnect_failed' | 'resume_failed' | 'stream_gap' | 'workflow_failed';

/**
 * An error from the hub (`code` from docs/PROTOCOL.md "Error codes") or from the SDK:
 * `connection_closed` (the client was closed, or the socket closed with a code that does not
 * mean "reconnect"), `reconnect_failed` (`reconnect.maxAttempts` reached), `resume_failed`
 * (a snapshot did not continue the text already delivered), `stream_gap` (messages of a
 * completion or workflow never arrived; retryable), `workflow_failed` (a workflow failed while
 * the client was away and the hub's `workflow_snapshot` does not say why).
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
    workflowId?: string;
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
  /** The workflow run that failed (its terminal `error`, or an SDK error of its channel). */
  workflowId?: string;
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

/** The `create_workflow` message without `type`: exactly one of `definitionName` (a definition
 * shipped with the hub, e.g. `content_creation`) and `definition` (an inline one); `workflowId`
 * is optional (the SDK makes one up, so that the run can be resumed before the hub answered). */
export interface WorkflowRequest {
  definitionName?: string;
  definition?: Record<string, unknown>;
  /** The run's input, read by the agents' prompt templates (`{input.topic}`). */
  input?: Record<string, unknown>;
  workflowId?: string;
}

/** A message of a workflow's channel, as the stream yields them. */
export type WorkflowEvent =
  | TokenCreated
  | WorkflowTransition
  | AgentStarted
  | AgentProgress
  | FunctionExecuted
  | AgentCompleted
  | WorkflowSnapshot
  | WorkflowCompleted;

/** The token's data: the run's input and the agents' results. */
export interface WorkflowData {
  input?: Record<string, unknown>;
  /** Each agent's answer text (an agent that ran twice: its latest answer). */
  results?: Record<string, string>;
  [key: string]: unknown;
}

/** What a workflow run produced, once it `workflow_completed`. */
export interface WorkflowResult {
  workflowId: string;
  /** The final place the token reached. */
  place: string;
  /** The token's final data (`workflow_completed.result`). */
  data: WorkflowData;
  /** `data.results`: each agent's answer text. */
  results: Record<string, string>;
  /** The agents' usage summed; null when the hub did not say (a run that ended while the
   * client was away and was resumed from a `workflow_snapshot`). */
  usage: UsageInfo | null;
}

/** Callbacks of a workflow run's messages. Each is optional. */
export interface WorkflowHandlers {
  /** Every message of the run, in `seq` order, without duplicates (the terminal `error` too).
   * After a `workflow_snapshot` come synthetic messages with what it adds (README "Workflows"). */
  onEvent?(event: HubMessage): void;
  /** The token moved (`transitionId`, `fromPlace`, `toPlace`, `data`). */
  onTransition?(message: WorkflowTransition): void;
  /** An agent began a pass (its LLM completion is `message.completionId`). */
  onAgentStarted?(agentId: string, message: AgentStarted): void;
  /** New answer text of an agent (`message.reasoning`: new reasoning text; after a resume:
   * only what was missing). */
  onAgentProgress?(agentId: string, delta: string, message: AgentProgress): void;
  /** The hub ran a registered function for an agent's tool call. */
  onFunction?(message: FunctionExecuted): void;
  /** An agent finished a pass: `result` is its answer text. */
  onAgentCompleted?(agentId: string, result: string, message: AgentCompleted): void;
  /** The hub sent the run's state instead of a replay it could not give (then come the
   * synthetic messages that carry what was missed). */
  onSnapshot?(snapshot: WorkflowSnapshot): void;
  onComplete?(result: WorkflowResult): void;
  onError?(error: HubError): void;
}

/** A running workflow (`client.workflow`): an async iterable of its messages, and its result. */
export interface WorkflowRunStream extends AsyncIterable<WorkflowEvent> {
  /** The workflow id (the request's, or one the SDK made up). */
  readonly id: string;
  /** `workflow:<id>`. */
  readonly channel: string;
  /** Resolves when the run `workflow_completed`; rejects with a HubError otherwise. */
  readonly result: Promise<WorkflowResult>;
  /** `client.cancelWorkflow(this.id)`. */
  cancel(): Promise<void>;
  /** Every message of the run from the start, then the live ones; ends after
   * `workflow_completed`, throws the HubError of a terminal `error` or of a lost connection. */
  [Symbol.asyncIterator](): AsyncIterator<WorkflowEvent>;
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
  /** The URL of the new connection (with several `urls`, maybe another hub's). */
  url: string;
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
  /**
   * Instead of `url`: the URLs of several hubs sharing one broker (docs/PROTOCOL.md "Running
   * several hubs"). The first connection goes to the first; each reconnect attempt goes to the
   * URL after the one lost or failed (wrapping around), and the streams resume there.
   */
  urls?: (string | URL)[];
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
  /**
   * A JWT or API key for a hub with `auth.mode` set (docs/PROTOCOL.md "Authentication"): sent in
   * the first message of every connection; nothing else is sent until the hub answers
   * `authenticated`. A close 4001/4003 stops reconnecting and rejects with code
   * `unauthorized` / `forbidden`.
   */
  token?: string;
  /** Called for the token on every connection and before it expires (refresh); wins over `token`. */
  getToken?(): string | Promise<string>;
}

export interface HubClient {
  readonly status: ClientStatus;
  /** The WebSocket URL in use (or last tried). */
  readonly url: string;
  /** The hubs' URLs in the order tried; assign to move later reconnects there (from the first on). */
  urls: string[];
  /** Start a completion; it is resumed across reconnects until it ends. */
  completion(request: CompletionRequest, handlers?: StreamHandlers): CompletionStream;
  /** Watch a channel (`completion:<id>`, `system`, `workflow:<id>`,
   * `agent:<workflowId>.<agentId>`): the handlers get its history, then the live messages,
   * across reconnects. Returns dispose. */
  subscribe(channel: string, handlers?: StreamHandlers & Omit<WorkflowHandlers, 'onComplete'>): () => void;
  /** Start a workflow run (`create_workflow`); it is resumed across reconnects until it ends. */
  workflow(request: WorkflowRequest, handlers?: WorkflowHandlers): WorkflowRunStream;
  /** Watch a workflow run (`subscribe_workflow`): the handlers get its history (or a
   * `workflow_snapshot` and what it adds), then the live messages, across reconnects.
   * Returns dispose. */
  subscribeWorkflow(workflowId: string, handlers?: WorkflowHandlers): () => void;
  /** Cancel a completion this client watches. Resolves once the hub accepted it (the stream
   * then ends with HubError `cancelled`); rejects with `unknown_completion`, `not_subscribed`. */
  cancel(completionId: string): Promise<void>;
  /** Cancel a workflow run this client watches, and the completion its agent is running.
   * Resolves once the hub accepted it (the run then ends with HubError `cancelled`); rejects
   * with `unknown_workflow`, `not_subscribed`. */
  cancelWorkflow(workflowId: string): Promise<void>;
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

// The seeds' names (./seeds.js): thin names over the client.

/** What `new CircuitBreakerStream(config)` takes (the seed's StreamConfig). */
export interface StreamConfig {
  /** The hub's WebSocket URL (`ws://host:port/ws/stream`); in a browser, relative to the page. */
  wsUrl?: string | URL;
  /** Each piece of answer text of the completions made with `createCompletion`. */
  onContent?(content: string): void;
  /** Forwarded from every WorkflowStream's `onAgentProgress` (unless the stream's is replaced). */
  onAgentProgress?(agentId: string, progress: AgentProgressInfo): void;
  /** Forwarded from every WorkflowStream's `onStateTransition` (unless the stream's is replaced). */
  onStateTransition?(from: string, to: string, data: StateTransitionData): void;
  /** As in ClientOptions. */
  WebSocket?: ClientOptions['WebSocket'];
  reconnect?: ReconnectOptions | false;
  onReconnect?(info: ReconnectInfo): void;
  onStatus?(status: ClientStatus): void;
  batch?: boolean;
}

/** The seed's AgentProgress: one `agent_progress`. */
export interface AgentProgressInfo {
  /** 0..1, the hub's estimate. */
  progress: number;
  /** New answer text of the agent (after a resume: only what was missing). */
  content: string;
  /** New reasoning text. */
  reasoning: string;
}

/** The data of a state transition (one `workflow_transition`). */
export interface StateTransitionData {
  from: string;
  to: string;
  transitionId: string;
  tokenId: string;
  /** The token's data after the transition (`input`, `results`). */
  tokenData: WorkflowData;
}

/** What `createCompletion` resolves to. */
export interface StreamResponse {
  completionId: string;
  /** The completion's usage (null when the provider reported none). */
  usage: UsageInfo | null;
  /** Everything the client accumulated (text, reasoning, tool calls...). */
  result: CompletionResult;
}

/** How `createWorkflowStream` starts a run (without it, the run is only watched). */
export interface WorkflowStart {
  definitionName?: string;
  definition?: Record<string, unknown>;
  input?: Record<string, unknown>;
}

/** The seed's WorkflowStream: one workflow run watched through a CircuitBreakerStream. The SDK
 * calls its hook properties; replace them to handle one run differently. */
export declare class WorkflowStream implements WorkflowRunStream {
  private constructor();
  readonly workflowId: string;
  readonly id: string;
  readonly channel: string;
  readonly result: Promise<WorkflowResult>;
  onAgentProgress?: (agentId: string, progress: AgentProgressInfo) => void;
  onStateTransition?: (from: string, to: string, data: StateTransitionData) => void;
  onComplete?: (result: WorkflowResult) => void;
  onError?: (error: HubError) => void;
  /** `client.cancelWorkflow(this.workflowId)`. */
  cancel(): Promise<void>;
  /** Stop watching (the run goes on in the hub). */
  close(): void;
  [Symbol.asyncIterator](): AsyncIterator<WorkflowEvent>;
}

/** The seed's client: one connection (opened at once), completions as promises, workflow
 * runs as streams. */
export declare class CircuitBreakerStream {
  constructor(config?: StreamConfig);
  readonly config: StreamConfig;
  /** The client underneath, for everything the seed's surface does not show. */
  readonly client: HubClient;
  /** Stream one completion; `config.onContent` gets its text. Rejects with a HubError. */
  createCompletion(request: CompletionRequest): Promise<StreamResponse>;
  /** Watch a workflow run (with `start`: start it first). */
  createWorkflowStream(workflowId: string, start?: WorkflowStart): Promise<WorkflowStream>;
  cancel(completionId: string): Promise<void>;
  close(): void;
}
