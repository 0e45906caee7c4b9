// Compiled (never run) by test/types.test.js with `tsc --noEmit --strict`: the API of the
// README, typed through src/index.d.ts and the generated src/protocol.d.ts. `WebSocket` is the
// browser's (lib.dom); Node code passes the `ws` package's in the same place.
import {
  CLOSE_CODES,
  ERROR_CODES,
  HubError,
  createClient,
  type CompletionEvent,
  type CompletionResult,
  type ErrorCode,
  type HubMessageOf,
  type WorkflowEvent,
  type WorkflowResult,
} from '../../src/index.js';

const client = createClient({
  url: 'ws://127.0.0.1:8765/ws/stream',
  WebSocket,
  batch: true,
  reconnect: { baseDelayMs: 100, maxDelayMs: 5000 },
  onReconnect(info) {
    const channels: string[] = info.channels;
    console.log(info.attempt, info.code, channels);
  },
  onStatus(status) {
    const s: 'connecting' | 'open' | 'reconnecting' | 'closed' = status;
    console.log(s);
  },
});

// Several hubs sharing a broker: reconnects move round the list.
const clustered = createClient({
  urls: ['ws://10.0.0.1:8765/ws/stream', new URL('ws://10.0.0.2:8765/ws/stream')],
  WebSocket,
  onReconnect(info) {
    const url: string = info.url;
    console.log(url);
  },
});
const nodes: string[] = clustered.urls;
clustered.urls = [...nodes.slice(1), 'ws://10.0.0.3:8765/ws/stream'];

async function main(): Promise<void> {
  const stream = client.completion(
    { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 10 },
    {
      onContent(delta: string, message) {
        console.log(delta, message.seq);
      },
      onThinking(delta) {
        console.log(delta);
      },
      onToolCall(call) {
        console.log(call.tool, call.arguments);
      },
      onComplete(result: CompletionResult) {
        console.log(result.text);
      },
      onError(error: HubError) {
        console.log(error.code, error.retryable, error.status);
      },
    },
  );
  const id: string = stream.id;
  for await (const event of stream) {
    const e: CompletionEvent = event;
    if (e.type === 'content_chunk') console.log(e.content, e.firstSeq);
    if (e.type === 'snapshot') console.log(e.content, e.epoch);
  }
  try {
    const result = await stream.result;
    const usage = result.usage?.totalTokens;
    console.log(id, result.text, result.reasoning, result.toolCalls, usage, result.finishReason, result.provider, result.model, result.ttftMs);
  } catch (error) {
    if (error instanceof HubError) console.log(error.code satisfies string);
  }
  const dispose: () => void = client.subscribe('completion:c1', { onEvent: (m) => console.log(m.type) });
  dispose();
  client.subscribeWorkflow('w1', { onError: (e) => console.log(e.code) });
  await client.cancel(id);

  const run = client.workflow(
    { definitionName: 'content_creation', input: { topic: 'tea', audience: 'kids' } },
    {
      onTransition(m) {
        console.log(m.transitionId, m.fromPlace, m.toPlace);
      },
      onAgentStarted(agentId: string, m) {
        console.log(agentId, m.completionId, m.model);
      },
      onAgentProgress(agentId: string, delta: string, m) {
        console.log(agentId, delta, m.progress, m.reasoning);
      },
      onFunction(m) {
        console.log(m.name, m.arguments, m.result, m.error);
      },
      onAgentCompleted(agentId: string, result: string, m) {
        console.log(agentId, result, m.usage?.totalTokens);
      },
      onSnapshot(snapshot) {
        console.log(snapshot.place, snapshot.agentId, snapshot.agentContent);
      },
      onComplete(result: WorkflowResult) {
        console.log(result.results.writer, result.usage?.totalTokens);
      },
      onError(error: HubError) {
        console.log(error.code, error.workflowId);
      },
    },
  );
  for await (const event of run) {
    const e: WorkflowEvent = event;
    if (e.type === 'agent_progress') console.log(e.agentId, e.content);
    if (e.type === 'workflow_transition') console.log(e.toPlace);
  }
  const finished: WorkflowResult = await run.result;
  console.log(run.id, run.channel, finished.place, finished.data.input);
  await run.cancel();
  await client.cancelWorkflow(run.id);
  client.workflow({ definition: { places: ['a', 'b'], initialPlace: 'a', transitions: [{ id: 't', from: 'a', to: 'b' }] } });
  const disposeWorkflow: () => void = client.subscribeWorkflow(run.id, {
    onAgentProgress: (agentId, delta) => console.log(agentId, delta),
    onComplete: (result) => console.log(result.results),
  });
  disposeWorkflow();
  client.dropConnection();
  client.close();

  const code: ErrorCode = 'rate_limited';
  console.log(ERROR_CODES[code].retryable, CLOSE_CODES[4008].reconnect);
  const chunk: HubMessageOf<'content_chunk'> = { type: 'content_chunk', completionId: 'c', seq: 1, content: 'x' };
  console.log(chunk);
}

void main();

// The seeds' names (../shared/seeds/003, "Client Libraries and SDKs").
import { CircuitBreakerStream, type StreamResponse, type WorkflowStream } from '../../src/index.js';

async function seedUsage(): Promise<void> {
  const stream = new CircuitBreakerStream({
    wsUrl: 'ws://127.0.0.1:8765/ws/stream',
    WebSocket,
    onContent: (content: string) => console.log(content),
    onAgentProgress: (agentId, progress) => console.log(agentId, progress.progress, progress.content),
    onStateTransition: (from, to, data) => console.log(from, to, data.tokenData.results),
  });
  const response: StreamResponse = await stream.createCompletion({ model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'Hello!' }] });
  const id: string = response.completionId;
  console.log(id, response.usage?.totalTokens);
  const run: WorkflowStream = await stream.createWorkflowStream('content-pipeline-123');
  run.onComplete = (result) => console.log(result.place, result.results);
  run.onError = (error) => console.log(error.code);
  for await (const event of run) console.log(event.type);
  await stream.createWorkflowStream('run-2', { definitionName: 'content_creation', input: { topic: 'tides' } });
  stream.close();
}
void seedUsage;
