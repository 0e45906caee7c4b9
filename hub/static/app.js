// The hub's web page: every "Send" starts one completion on the page's one WebSocket (the JS
// SDK, served by the hub at /sdk/) and adds a panel that shows it as it streams: the answer,
// the reasoning apart from it, tool calls, then usage and time to first token. In "Workflow"
// mode, "Run" starts a workflow run and adds a card with a panel per agent (./workflow.js).
// "Drop connection" closes the socket abruptly; the SDK reconnects and resumes every open
// stream, completions and workflow runs alike.

import { createClient } from '../sdk/index.js';
import { Card } from './card.js';
import { runWorkflow } from './workflow.js';

const GET_WEATHER = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The current weather in a city.',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('connection-status'),
  reconnects: $('reconnects'),
  drop: $('drop'),
  form: $('composer'),
  model: $('model'),
  prompt: $('prompt'),
  tools: $('opt-tools'),
  reasoning: $('opt-reasoning'),
  clear: [$('clear'), $('workflow-clear')],
  modes: [$('mode-completion'), $('mode-workflow')],
  workflowForm: $('workflow-form'),
  workflowDefinition: $('workflow-definition'),
  workflowTopic: $('workflow-topic'),
  workflowAudience: $('workflow-audience'),
  panels: $('panels'),
  template: $('panel-template'),
};

/** Panels of completions and cards of workflow runs still running, by channel name
 * (`completion:<id>`, `workflow:<id>`). */
const running = new Map();
let reconnectCount = 0;

// A hub with auth.mode set wants a token: from the URL fragment (#token=..., removed from the
// address bar at once) or the token field, kept in this tab's sessionStorage only.
const TOKEN_KEY = 'cbhub-token';
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.has('token')) {
  sessionStorage.setItem(TOKEN_KEY, fragment.get('token'));
  history.replaceState(null, '', location.pathname + location.search);
}
const token = sessionStorage.getItem(TOKEN_KEY) || undefined;

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = $('token').value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

const client = createClient({
  token,
  batch: true,
  reconnect: { baseDelayMs: 250, maxDelayMs: 4000 },
  onStatus: showConnectionStatus,
  onReconnect(info) {
    reconnectCount += 1;
    const resumed = info.channels.filter((name) => running.has(name));
    ui.reconnects.dataset.count = String(reconnectCount);
    ui.reconnects.textContent =
      `reconnected ${reconnectCount}× · last after close ${info.code}, ` +
      `${plural(resumed.length, 'stream')} resumed`;
    for (const name of resumed) running.get(name).resumed();
  },
});
showConnectionStatus(client.status);
globalThis.cbhub = { client };

function showConnectionStatus(status) {
  ui.status.dataset.status = status;
  ui.status.textContent = status === 'closed' ? 'closed (reload the page)' : status;
  ui.drop.disabled = status !== 'open';
}

ui.drop.addEventListener('click', () => client.dropConnection());

ui.form.addEventListener('submit', (event) => {
  event.preventDefault();
  const prompt = ui.prompt.value.trim();
  if (!prompt) {
    ui.prompt.focus();
    return;
  }
  start(ui.model.value, prompt, { tools: ui.tools.checked, reasoning: ui.reasoning.checked });
});

ui.prompt.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) ui.form.requestSubmit();
});

for (const button of ui.clear) {
  button.addEventListener('click', () => {
    for (const panel of ui.panels.querySelectorAll(':scope > :is(.panel, .run):not([aria-busy="true"])')) panel.remove();
  });
}

// Modes: the completion composer or the workflow form (tabs).
for (const tab of ui.modes) {
  tab.addEventListener('click', () => selectMode(tab.dataset.mode));
  tab.addEventListener('keydown', (event) => {
    if (event.key !== 'ArrowLeft' && event.key !== 'ArrowRight') return;
    const other = ui.modes.find((candidate) => candidate !== tab);
    selectMode(other.dataset.mode);
    other.focus();
  });
}

function selectMode(mode) {
  for (const tab of ui.modes) {
    const selected = tab.dataset.mode === mode;
    tab.setAttribute('aria-selected', String(selected));
    tab.tabIndex = selected ? 0 : -1;
  }
  ui.form.hidden = mode !== 'completion';
  ui.workflowForm.hidden = mode !== 'workflow';
}

ui.workflowForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const topic = ui.workflowTopic.value.trim();
  if (!topic) {
    ui.workflowTopic.focus();
    return;
  }
  const input = { topic, audience: ui.workflowAudience.value.trim() || 'a general audience' };
  const view = runWorkflow(client, { definitionName: ui.workflowDefinition.value, input }, ui.panels);
  if (view.busy) {
    running.set(view.channel, view);
    view.onEnd = () => running.delete(view.channel);
  }
});

/** Start one completion and add its panel. */
function start(model, prompt, options) {
  const panel = new Panel(model, prompt);
  const request = { model, messages: [{ role: 'user', content: prompt }] };
  if (options.tools) request.tools = [GET_WEATHER];
  if (options.reasoning) request.reasoning = 'low';
  const sentAt = performance.now();
  let firstAt = null;
  const first = () => {
    if (firstAt == null) firstAt = performance.now() - sentAt;
  };
  const stream = client.completion(request, {
    onThinking(delta, message) {
      first();
      if (delta) panel.addReasoning(delta);
      if (message.redacted) panel.addReasoning('[redacted reasoning] ');
      if (!panel.hasText) panel.setStatus('thinking');
    },
    onContent(delta) {
      first();
      panel.addText(delta);
      panel.setStatus('streaming');
    },
    onToolCall(call) {
      first();
      panel.addToolCall(call);
    },
    onEvent(message) {
      if (message.type === 'refusal' && message.content) panel.addRefusal(message.content);
    },
    // (the SDK may call these before completion() returns: a closed client)
    onComplete(result) {
      running.delete(panel.channel);
      panel.complete(result, firstAt);
    },
    onError(error) {
      running.delete(panel.channel);
      panel.fail(error, firstAt);
    },
  });
  panel.bind(stream);
  if (panel.busy) running.set(stream.channel, panel);
}

class Panel extends Card {
  constructor(model, prompt) {
    super(ui.template.content.firstElementChild, {
      model: 'panel-model',
      status: 'panel-status',
      prompt: 'panel-prompt',
      reasoningBox: 'panel-reasoning-box',
      reasoning: 'panel-reasoning',
      text: 'panel-text',
      refusal: 'panel-refusal',
      tools: 'panel-tools',
      error: 'panel-error',
      ttft: 'panel-ttft',
      usage: 'panel-usage',
      resumed: 'panel-resumed',
      cancel: 'panel-cancel',
    });
    this.busy = true;
    this.hasText = false;
    this.el.model.textContent = model;
    this.el.prompt.textContent = prompt;
    this.el.prompt.title = prompt;
    ui.panels.append(this.root);
    this.root.scrollIntoView({ block: 'nearest', inline: 'nearest' });
  }

  bind(stream) {
    super.bind(stream, 'completionId');
  }

  addText(delta) {
    this.hasText = true;
    this.el.text.append(delta);
  }

  addReasoning(delta) {
    this.el.reasoningBox.hidden = false;
    this.el.reasoning.append(delta);
  }

  addRefusal(delta) {
    this.el.refusal.hidden = false;
    this.el.refusal.append(delta);
  }

  addToolCall(call) {
    const item = document.createElement('li');
    item.dataset.testid = 'panel-tool-call';
    const name = document.createElement('code');
    name.textContent = call.tool;
    const args = typeof call.arguments === 'string' ? call.arguments : JSON.stringify(call.arguments);
    item.append('🔧 ', name, `(${args})`);
    if (call.serverTool) item.append(' · run by the provider');
    item.title = call.id ?? '';
    this.el.tools.hidden = false;
    this.el.tools.append(item);
  }

  #finish() {
    this.busy = false;
    this.settle();
  }

  complete(result, pageTtftMs) {
    this.#finish();
    this.setStatus('done', `done · ${result.finishReason}`);
    if (result.provider || result.model) this.el.model.title = `served by ${result.provider} ${result.model}`;
    if (result.refusal) {
      this.el.refusal.hidden = false;
      this.el.refusal.textContent = result.refusal;
    }
    this.showTiming(result.ttftMs, pageTtftMs);
    const usage = result.usage;
    if (usage) {
      let text = `${usage.promptTokens} in · ${usage.completionTokens} out`;
      if (usage.reasoningTokens) text += ` (${usage.reasoningTokens} reasoning)`;
      this.el.usage.textContent = `${text} · ${usage.totalTokens} tokens`;
    }
    const attempts = result.attempts ?? [];
    if (attempts.length > 1) this.el.usage.textContent += ` · ${plural(attempts.length, 'attempt')}`;
  }

  fail(error, pageTtftMs) {
    this.#finish();
    if (error.code === 'cancelled') this.setStatus('cancelled');
    else this.setStatus('error', `error · ${error.code ?? 'failed'}`);
    this.showError(error);
    this.showTiming(null, pageTtftMs);
  }

  showTiming(hubTtftMs, pageTtftMs) {
    const parts = [];
    if (hubTtftMs != null) parts.push(`${formatMs(hubTtftMs)} (hub)`);
    if (pageTtftMs != null) parts.push(`${formatMs(pageTtftMs)} (page)`);
    this.el.ttft.textContent = parts.length ? `TTFT ${parts.join(' · ')}` : '';
  }
}

function formatMs(ms) {
  return ms >= 100 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
