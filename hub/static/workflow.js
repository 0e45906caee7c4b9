// The web page's workflow runs: `runWorkflow` starts one with the JS SDK's client.workflow() and
// adds a card that shows it as it goes: the places the token went through, one panel per agent
// pass (a second pass of the same agent gets its own panel, "writer · pass 2") with its text,
// progress and function calls, a log of transitions, function calls and resumes, and the
// run's usage at the end. The card belongs to the page's "Workflow" mode (app.js).

import { Card } from './card.js';

/**
 * Start a run and show it in `container`.
 * @param client the page's SDK client.
 * @param {{definitionName: string, input: object}} request
 * @param {HTMLElement} container where the card goes.
 * @returns {WorkflowView} the card (`busy` while the run goes on, `channel`, `resumed()`).
 */
export function runWorkflow(client, request, container) {
  const view = new WorkflowView(request, container);
  const stream = client.workflow(request, {
    onEvent(message) {
      if (message.type === 'token_created') view.place(message.place, `token created at ${message.place}`);
    },
    onTransition(message) {
      view.place(message.toPlace, `${message.transitionId}: ${message.fromPlace} → ${message.toPlace}`);
    },
    onAgentStarted(agentId, message) {
      view.agentStarted(agentId, message);
    },
    onAgentProgress(agentId, delta, message) {
      view.agentProgress(agentId, delta, message);
    },
    onFunction(message) {
      view.functionExecuted(message);
    },
    onAgentCompleted(agentId, result, message) {
      view.agentCompleted(agentId, message);
    },
    onSnapshot(snapshot) {
      view.place(snapshot.place, `resumed from a snapshot at ${snapshot.place}`);
    },
    onComplete(result) {
      view.complete(result);
    },
    onError(error) {
      view.fail(error);
    },
  });
  view.bind(stream);
  return view;
}

const template = (id) => document.getElementById(id).content.firstElementChild;

class WorkflowView extends Card {
  constructor(request, container) {
    super(template('run-template'), {
      title: 'run-title',
      input: 'run-input',
      status: 'run-status',
      track: 'run-track',
      agents: 'run-agents',
      log: 'run-log',
      error: 'run-error',
      usage: 'run-usage',
      resumed: 'run-resumed',
      cancel: 'run-cancel',
    });
    const root = this.root;
    this.busy = true;
    /** Called once when the run ends (set by the page). */
    this.onEnd = null;
    this.current = null; // the place the token is at
    this.passes = new Map(); // agentId -> its panels, in order
    this.el.title.textContent = request.definitionName ?? 'workflow';
    const topic = request.input?.topic;
    this.el.input.textContent = typeof topic === 'string' ? topic : JSON.stringify(request.input ?? {});
    this.el.input.title = JSON.stringify(request.input ?? {});
    container.append(root);
    root.scrollIntoView({ block: 'nearest', inline: 'nearest' });
  }

  bind(stream) {
    super.bind(stream, 'workflowId');
  }

  /** The token is at `place` now (shown on the track); `entry` goes to the log. */
  place(place, entry) {
    if (entry) this.log(entry);
    if (place === this.current) return;
    this.current = place;
    for (const item of this.el.track.children) item.removeAttribute('aria-current');
    const item = document.createElement('li');
    item.dataset.testid = 'run-place';
    const name = document.createElement('span');
    name.textContent = place;
    item.append(name);
    item.setAttribute('aria-current', 'step');
    this.el.track.append(item);
  }

  log(text, testid = 'run-log-entry') {
    const item = document.createElement('li');
    item.dataset.testid = testid;
    item.textContent = text;
    this.el.log.append(item);
  }

  /** The panel of the agent's pass at work, or a new one (also for a pass that began while the
   * page was away: the SDK then brings its text without an agent_started). */
  #pass(agentId, fresh = false) {
    const passes = this.passes.get(agentId) ?? [];
    const last = passes.at(-1);
    if (last && !last.done && !fresh) return last;
    if (last && !last.done) last.finish('done'); // (not expected: a pass ends with agent_completed)
    const pass = new AgentPanel(agentId, passes.length + 1, this.el.agents);
    passes.push(pass);
    this.passes.set(agentId, passes);
    if (this.busy) this.setStatus('running', `running · ${agentId}`);
    return pass;
  }

  agentStarted(agentId, message) {
    this.#pass(agentId, true).started(message);
  }

  agentProgress(agentId, delta, message) {
    this.#pass(agentId).progress(delta, message);
  }

  functionExecuted(message) {
    this.#pass(message.agentId).functionExecuted(message);
    this.log(`${message.agentId} called ${describeCall(message)}`, 'run-log-function');
  }

  agentCompleted(agentId, message) {
    this.#pass(agentId).completed(message);
  }

  #finish() {
    this.busy = false;
    this.onEnd?.();
    this.settle();
  }

  complete(result) {
    this.#finish();
    this.place(result.place, `completed at ${result.place}`);
    this.setStatus('done', `done · ${result.place}`);
    const usage = result.usage;
    this.el.usage.textContent = usage
      ? `${usage.promptTokens} in · ${usage.completionTokens} out · ${usage.totalTokens} tokens`
      : 'usage unknown (the run ended while the page was away)';
  }

  fail(error) {
    this.#finish();
    for (const passes of this.passes.values()) {
      const last = passes.at(-1);
      if (!last.done) last.finish(error.code === 'cancelled' ? 'cancelled' : 'error');
    }
    if (error.code === 'cancelled') this.setStatus('cancelled');
    else this.setStatus('error', `error · ${error.code ?? 'failed'}`);
    this.showError(error);
    if (error.usage) this.el.usage.textContent = `${error.usage.totalTokens} tokens`;
  }
}

class AgentPanel extends Card {
  constructor(agentId, pass, container) {
    super(template('agent-template'), {
      name: 'agent-name',
      status: 'agent-status',
      model: 'agent-model',
      progress: 'agent-progress',
      reasoningBox: 'agent-reasoning-box',
      reasoning: 'agent-reasoning',
      text: 'agent-text',
      functions: 'agent-functions',
      usage: 'agent-usage',
    });
    const root = this.root;
    this.done = false;
    root.dataset.agentId = agentId;
    root.dataset.pass = String(pass);
    this.el.name.textContent = pass > 1 ? `${agentId} · pass ${pass}` : agentId;
    this.setStatus('working');
    container.append(root);
  }

  started(message) {
    this.el.model.textContent = message.model;
    this.el.model.title = `completion ${message.completionId}`;
  }

  progress(delta, message) {
    if (delta) this.el.text.append(delta);
    if (message.reasoning) {
      this.el.reasoningBox.hidden = false;
      this.el.reasoning.append(message.reasoning);
    }
    if (typeof message.progress === 'number') this.el.progress.value = message.progress;
    this.setStatus('streaming');
  }

  functionExecuted(message) {
    const item = document.createElement('li');
    item.dataset.testid = 'agent-function';
    const name = document.createElement('code');
    name.textContent = message.name;
    item.append('🔧 ', name, describeCall(message).slice(message.name.length));
    item.title = message.callId;
    this.el.functions.hidden = false;
    this.el.functions.append(item);
  }

  completed(message) {
    this.finish('done');
    this.el.progress.value = 1;
    if (message.provider || message.model) this.el.model.title = `served by ${message.provider} ${message.model}`;
    const usage = message.usage;
    if (usage) this.el.usage.textContent = `${usage.promptTokens} in · ${usage.completionTokens} out`;
  }

  finish(status) {
    this.done = true;
    this.settle();
    this.setStatus(status);
  }
}

function describeCall(message) {
  const outcome = message.error != null ? `failed: ${message.error}` : JSON.stringify(message.result);
  return `${message.name}(${JSON.stringify(message.arguments)}) → ${outcome}`;
}
