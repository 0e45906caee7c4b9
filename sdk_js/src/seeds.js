// The SDK surface of the project's original design documents ("Client Libraries and SDKs"): thin names over
// the client of ./index.js.
//
//   const stream = new CircuitBreakerStream({ wsUrl, onContent, onAgentProgress, onStateTransition });
//   const { completionId, usage } = await stream.createCompletion({ model, messages });
//   const run = await stream.createWorkflowStream('content-pipeline-123');
//   run.onComplete = (result) => ...;
//
// What maps to what:
// - `new CircuitBreakerStream(config)` creates a client (`createClient({url: config.wsUrl, ...})`)
//   and connects at once, as the seed's constructor opens its WebSocket. In Node pass
//   `config.WebSocket` (the `ws` package); `reconnect`, `onReconnect`, `onStatus` and `batch`
//   go to the client as they are.
// - `createCompletion(request)` is `client.completion(request, {onContent})`: `config.onContent`
//   gets every piece of answer text; it resolves to `{completionId, usage}` (plus `result`,
//   the client's CompletionResult) after `completed`, and rejects with a HubError.
// - `createWorkflowStream(workflowId)` is `client.subscribeWorkflow(workflowId)` (with a
//   second argument `{definitionName | definition, input}` it starts the run first, as
//   `client.workflow`); it resolves to a WorkflowStream whose hook properties the SDK calls:
//   `onAgentProgress(agentId, {progress, content, reasoning})` per `agent_progress` and
//   `onStateTransition(from, to, {from, to, transitionId, tokenId, tokenData})` per
//   `workflow_transition`, preset to forward to the config's hooks as in the seed, and
//   `onComplete(result)` / `onError(error)` at the end. The stream is also an async iterable
//   of the run's hub messages with a `result` promise, like `client.workflow`'s.

import { createClient } from './index.js';
import { EventQueue } from './queue.js';

/** A seed WorkflowStream: one workflow run, watched through a CircuitBreakerStream. */
export class WorkflowStream {
  constructor(client, workflowId, start) {
    this.workflowId = workflowId;
    this.id = workflowId;
    this.channel = `workflow:${workflowId}`;
    /** Called with (agentId, {progress, content, reasoning}) for each agent_progress. */
    this.onAgentProgress = undefined;
    /** Called with (from, to, {from, to, transitionId, tokenId, tokenData}) for each transition. */
    this.onStateTransition = undefined;
    /** Called with the run's result ({workflowId, place, data, results, usage}) at its end. */
    this.onComplete = undefined;
    /** Called with the HubError that ended the run. */
    this.onError = undefined;
    this.#client = client;
    this.result = new Promise((resolve, reject) => {
      this.#settle = { resolve, reject };
    });
    this.result.catch(() => {}); // a run nobody awaits must not be an unhandled rejection
    const handlers = {
      onEvent: (message) => {
        if (!(message.type === 'error' && message.seq != null)) this.#queue.push(message);
      },
      onAgentProgress: (agentId, content, message) => {
        this.onAgentProgress?.(agentId, { progress: message.progress, content, reasoning: message.reasoning ?? '' });
      },
      onTransition: (message) => {
        const data = { from: message.fromPlace, to: message.toPlace, transitionId: message.transitionId, tokenId: message.tokenId, tokenData: message.data };
        this.onStateTransition?.(message.fromPlace, message.toPlace, data);
      },
      onComplete: (result) => {
        this.#queue.end(null);
        this.#settle.resolve(result);
        this.onComplete?.(result);
      },
      onError: (error) => {
        this.#queue.end(error);
        this.#settle.reject(error);
        this.onError?.(error);
      },
    };
    if (start) {
      this.#run = client.workflow({ ...start, workflowId }, handlers);
      this.#dispose = () => {};
    } else {
      this.#dispose = client.subscribeWorkflow(workflowId, handlers);
    }
  }

  #client;
  #settle;
  #run = null;
  #dispose;
  #queue = new EventQueue();

  /** Cancel the run (`client.cancelWorkflow`). */
  cancel() {
    return this.#client.cancelWorkflow(this.workflowId);
  }

  /** Stop watching the run (it goes on in the hub). */
  close() {
    this.#dispose();
  }

  [Symbol.asyncIterator]() {
    return this.#queue[Symbol.asyncIterator]();
  }
}

export class CircuitBreakerStream {
  constructor(config = {}) {
    this.config = config;
    const { wsUrl, WebSocket, reconnect, onReconnect, onStatus, batch } = config;
    /** The client underneath (./index.js), for everything the seed's surface does not show. */
    this.client = createClient({ url: wsUrl, WebSocket, reconnect, onReconnect, onStatus, batch });
  }

  /** Stream one completion; resolves to {completionId, usage, result} after `completed`. */
  createCompletion(request) {
    const stream = this.client.completion(request, {
      onContent: (content) => this.config.onContent?.(content),
    });
    return stream.result.then((result) => ({ completionId: stream.id, usage: result.usage, result }));
  }

  /** Watch (or with `start`, start) a workflow run; resolves to its WorkflowStream. */
  async createWorkflowStream(workflowId, start) {
    const stream = new WorkflowStream(this.client, workflowId, start);
    stream.onAgentProgress = (agentId, progress) => {
      this.config.onAgentProgress?.(agentId, progress);
    };
    stream.onStateTransition = (from, to, data) => {
      this.config.onStateTransition?.(from, to, data);
    };
    return stream;
  }

  /** Cancel a completion (`client.cancel`). */
  cancel(completionId) {
    return this.client.cancel(completionId);
  }

  /** Close the connection; open streams fail with `connection_closed`. */
  close() {
    this.client.close();
  }
}
