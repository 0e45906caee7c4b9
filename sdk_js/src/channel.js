// The state of one channel as a client sees it: no I/O, no timers. Hub messages go in
// (`apply`); the messages to hand to the listeners come out, each exactly once and in `seq`
// order. The client (index.js) only moves messages between the WebSocket and this object.
//
// Resume rules (docs/PROTOCOL.md "Resuming"), as in the Python SDK (hub/client.py):
// - every channel message carries a gap-free `seq`; one not newer than the last one applied is
//   a duplicate (a replay after a reconnect) and is dropped;
// - a `content_chunk` with `firstSeq` stands for the chunks `firstSeq`..`seq`;
// - a `snapshot` (sent instead of a replay the history cannot give) comes out itself, followed
//   by synthetic messages that carry only what had not been delivered yet, all with the
//   snapshot's `seq`: a `thinking_status` with the missing reasoning, a `content_chunk` with
//   the missing answer text (`firstSeq`: the first missed seq), a `refusal`, the missed
//   `tool_call` messages as the hub sent them, a `citation` per missed citation. Whoever
//   concatenates `content_chunk.content` gets the exact text and never a piece twice;
// - choices (`n` above 1, docs/PROTOCOL.md "Choices"): `content`, `reasoning`, `refusal`,
//   `toolCalls` and `citations` are choice 0's; the output of each other choice is kept apart
//   in `choices` (`{[index]: {content, reasoning, refusal, toolCalls, citations}}`). A snapshot
//   catches up choice 0 from its own fields and choice k from its entry of `choices`, the
//   synthetic messages of choice k carrying `choice: k`;
// - a snapshot that does not continue what was delivered (another instance of the channel,
//   with other text) fails the stream: `resume_failed`;
// - a forward jump of `seq` on a completion or workflow whose epoch is known fails it:
//   `stream_gap`.
//
// Workflow channels (`workflow:<id>`) keep the run's state as delivered: the token's place and
// data, the agents' results, and the agent pass at work with the text its `agent_progress`
// messages brought. A `workflow_snapshot` comes out itself, followed by synthetic messages,
// all with the snapshot's `seq`, that carry only what had not been delivered:
// - the rest of the text of the agent pass that was streaming (an `agent_progress`), and its
//   `agent_completed` when it ended meanwhile (its result is in the snapshot's data);
// - for each agent whose result in the snapshot's data is new, an `agent_progress` with the
//   whole result and an `agent_completed` (a pass that gave the same text as the one already
//   delivered cannot be told apart from it, and is not repeated);
// - the text so far of the agent pass now at work, when it started meanwhile (an
//   `agent_progress`; no `agent_started`: the snapshot does not say its completion or model);
// - a `workflow_completed` (`usage` null: the snapshot does not carry it) or an `error`
//   (`cancelled`, or `workflow_failed` when the run failed: the snapshot does not say why)
//   when the run ended meanwhile.
// Whoever concatenates an agent's `agent_progress.content` from one `agent_completed` to the
// next gets that pass's text, never a piece twice. A workflow channel whose epoch changed
// after messages were delivered (another run with the same id) fails: `resume_failed`.

/** A channel that cannot continue: `code` is `resume_failed` or `stream_gap`. */
export class ResumeError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export class ChannelState {
  /** @param {string} name the channel name, `completion:<id>`, `system`, ... */
  constructor(name) {
    this.name = name;
    this.completion = name.startsWith('completion:');
    this.workflow = name.startsWith('workflow:');
    /** The channel instance's epoch, once the hub said it (null before). */
    this.epoch = null;
    /** The last `seq` applied (0: none). */
    this.seq = 0;
    this.content = '';
    this.reasoning = '';
    this.refusal = '';
    this.toolCalls = [];
    this.citations = [];
    /** The output of each choice above 0 (`n` above 1), by index: `{content, reasoning, refusal, toolCalls, citations}`. */
    this.choices = {};
    /** The terminal `completed`, `workflow_completed` or `error` message, once it came. */
    this.terminal = null;
    // Workflow channels: the run as delivered so far.
    /** Where the token is (null before the first message). */
    this.place = null;
    /** The token's data (`input`, `results`) as last delivered. */
    this.data = null;
    /** The agents' results delivered so far, by agent id (the latest pass of each). */
    this.results = {};
    /** The latest agent pass: `{id, text, progress, done}` (`text`: its content so far). */
    this.agent = null;
    /** Set when the hub gave another epoch after messages of this workflow were delivered. */
    this.replaced = false;
  }

  /** Where to resume: `{seq, epoch}`, or null while the epoch is unknown. */
  cursor() {
    return this.epoch == null ? null : { seq: this.seq, epoch: this.epoch };
  }

  /**
   * Take the epoch of a `subscribed` acknowledgement. An epoch other than the one known is
   * another instance of the channel, whose `seq` starts again (a completion's `snapshot`
   * follows and brings its state; the `system` channel just starts over).
   */
  acknowledge(epoch) {
    if (typeof epoch !== 'string' || epoch === this.epoch) return;
    if (this.workflow && this.epoch != null && this.seq > 0) this.replaced = true;
    if (this.epoch != null) this.seq = 0;
    this.epoch = epoch;
  }

  /**
   * Apply one hub message of this channel.
   * @returns {object[]} the messages to deliver (none for a duplicate).
   * @throws {ResumeError} the channel cannot continue.
   */
  apply(message) {
    if (this.terminal) return [];
    if (message.type === 'snapshot') return this.#snapshot(message);
    if (message.type === 'workflow_snapshot') return this.#workflowSnapshot(message);
    const seq = message.seq;
    if (typeof seq === 'number') {
      if (seq <= this.seq) return [];
      const first = typeof message.firstSeq === 'number' ? message.firstSeq : seq;
      if (first > this.seq + 1 && (this.completion || this.workflow) && this.epoch != null && this.seq > 0) {
        throw new ResumeError('stream_gap', `messages ${this.seq + 1} to ${first - 1} of ${this.name} never arrived`);
      }
      this.seq = seq;
    }
    this.#record(message);
    return [message];
  }

  /** The state of choice `index`: this object for 0, else its entry of `choices` (made on first use). */
  #choice(index) {
    if (!index) return this;
    this.choices[index] ??= { content: '', reasoning: '', refusal: '', toolCalls: [], citations: [] };
    return this.choices[index];
  }

  #record(message) {
    switch (message.type) {
      case 'content_chunk':
        this.#choice(message.choice).content += message.content ?? '';
        break;
      case 'thinking_status':
        this.#choice(message.choice).reasoning += message.content ?? '';
        break;
      case 'refusal':
        this.#choice(message.choice).refusal += message.content ?? '';
        break;
      case 'tool_call':
        this.#choice(message.choice).toolCalls.push(message);
        break;
      case 'citation':
        this.#choice(message.choice).citations.push(message.citation);
        break;
      case 'completed':
        this.terminal = message;
        break;
      case 'error':
        if (message.completionId != null || (message.workflowId != null && message.seq != null)) this.terminal = message;
        break;
      case 'token_created':
        this.place = message.place;
        this.#takeData(message.data);
        break;
      case 'workflow_transition':
        this.place = message.toPlace;
        this.#takeData(message.data);
        break;
      case 'agent_started':
        this.agent = { id: message.agentId, text: '', progress: 0, done: false };
        break;
      case 'agent_progress': {
        const agent = this.agent;
        if (!agent || agent.done || agent.id !== message.agentId) {
          this.agent = { id: message.agentId, text: '', progress: 0, done: false };
        }
        this.agent.text += message.content ?? '';
        this.agent.progress = message.progress ?? this.agent.progress;
        break;
      }
      case 'agent_completed':
        this.results[message.agentId] = message.result;
        if (this.agent?.id === message.agentId) {
          this.agent.done = true;
          this.agent.progress = 1;
        }
        break;
      case 'workflow_completed':
        this.place = message.place;
        this.#takeData(message.result);
        this.terminal = message;
        break;
      case 'workflow_snapshot':
        this.place = message.place;
        this.#takeData(message.data);
        break;
      default:
        break;
    }
  }

  #takeData(data) {
    if (data == null || typeof data !== 'object') return;
    this.data = data;
    const results = data.results;
    if (results && typeof results === 'object') Object.assign(this.results, results);
  }

  #snapshot(snapshot) {
    if (snapshot.epoch === this.epoch && snapshot.seq <= this.seq) return [snapshot]; // nothing new in it
    // Choice 0 is the snapshot's own fields, choice k its entry of `choices`; each must
    // continue what was delivered of it (citations are in a snapshot for choice 0 only).
    const empty = { content: '', reasoning: '', refusal: '', toolCalls: [], citations: [] };
    const of = (state) => ({
      content: state.content ?? '',
      reasoning: state.reasoning ?? '',
      refusal: state.refusal ?? '',
      toolCalls: state.toolCalls ?? [],
      citations: state.citations ?? [],
    });
    const others = new Map((snapshot.choices ?? []).map((c) => [Number(c.choice), of(c)]));
    const indexes = new Set([...others.keys(), ...Object.keys(this.choices).map(Number)]);
    const pairs = [[0, of(snapshot), this]];
    for (const k of [...indexes].sort((a, b) => a - b)) pairs.push([k, others.get(k) ?? empty, this.choices[k] ?? empty]);
    const continues = pairs.every(
      ([k, next, had]) =>
        next.content.startsWith(had.content) &&
        next.reasoning.startsWith(had.reasoning) &&
        next.refusal.startsWith(had.refusal) &&
        next.toolCalls.length >= had.toolCalls.length &&
        had.toolCalls.every((call, i) => next.toolCalls[i].id === call.id) &&
        (k !== 0 || next.citations.length >= had.citations.length),
    );
    if (!continues) {
      throw new ResumeError(
        'resume_failed',
        `the snapshot of ${this.name} (epoch ${snapshot.epoch}) does not continue what was delivered (epoch ${this.epoch})`,
      );
    }
    const first = this.seq + 1;
    const seq = snapshot.seq;
    const completionId = snapshot.completionId;
    const out = [snapshot];
    for (const [k, next, had] of pairs) {
      const mark = (message) => (k ? { ...message, choice: k } : message);
      if (next.reasoning.length > had.reasoning.length) {
        out.push(mark({ type: 'thinking_status', completionId, seq, status: 'thinking', content: next.reasoning.slice(had.reasoning.length) }));
      }
      if (next.content.length > had.content.length) {
        const chunk = mark({ type: 'content_chunk', completionId, seq, content: next.content.slice(had.content.length) });
        if (first < seq) chunk.firstSeq = first;
        out.push(chunk);
      }
      if (next.refusal.length > had.refusal.length) {
        out.push(mark({ type: 'refusal', completionId, seq, content: next.refusal.slice(had.refusal.length) }));
      }
      out.push(...next.toolCalls.slice(had.toolCalls.length));
      if (k === 0) {
        for (const citation of next.citations.slice(had.citations.length)) out.push({ type: 'citation', completionId, seq, citation });
      }
    }
    for (const message of out) this.#record(message);
    this.epoch = snapshot.epoch;
    this.seq = seq;
    return out;
  }

  #workflowSnapshot(snapshot) {
    if (this.replaced) {
      throw new ResumeError('resume_failed', `${this.name} is another run now (epoch ${snapshot.epoch}); what was delivered came from epoch ${this.epoch}`);
    }
    if (snapshot.epoch === this.epoch && snapshot.seq <= this.seq) return [snapshot]; // nothing new in it
    const { workflowId, seq, status, place } = snapshot;
    const results = snapshot.data?.results ?? {};
    const content = snapshot.agentContent ?? '';
    const running = status === 'running';
    const out = [snapshot];
    const progress = (agentId, text, value) => {
      if (text) out.push({ type: 'agent_progress', workflowId, seq, agentId, progress: value, content: text });
    };
    const completed = (agentId, result) => out.push({ type: 'agent_completed', workflowId, seq, agentId, result });
    const done = new Set(); // agents whose latest result the messages above already carry
    let continued = false; // the agent pass at work is the one that was streaming
    const agent = this.agent && !this.agent.done ? this.agent : null;
    if (agent) {
      if (running && snapshot.agentId === agent.id && place === this.place) {
        if (!content.startsWith(agent.text)) {
          throw new ResumeError('resume_failed', `the snapshot of ${this.name} does not continue the text of agent ${agent.id}`);
        }
        progress(agent.id, content.slice(agent.text.length), agent.progress);
        continued = true;
        done.add(agent.id);
      } else if (place !== this.place || status === 'completed') {
        // The token moved on: the pass that was streaming completed meanwhile.
        const result = results[agent.id];
        if (typeof result === 'string') {
          if (result.startsWith(agent.text)) progress(agent.id, result.slice(agent.text.length), 1);
          completed(agent.id, result);
          done.add(agent.id);
        }
      } else if (running) {
        throw new ResumeError('resume_failed', `the snapshot of ${this.name} has agent ${snapshot.agentId} at work where ${agent.id} was`);
      } // else the run ended during that pass: the error below says so
    }
    for (const [agentId, result] of Object.entries(results)) {
      if (done.has(agentId) || typeof result !== 'string' || this.results[agentId] === result) continue;
      progress(agentId, result, 1);
      completed(agentId, result);
    }
    if (running && snapshot.agentId && !continued) progress(snapshot.agentId, content, 0);
    if (status === 'completed') {
      out.push({ type: 'workflow_completed', workflowId, seq, place, result: snapshot.data, usage: null });
    } else if (!running) {
      const cancelled = status === 'cancelled';
      out.push({
        type: 'error', workflowId, seq,
        error: {
          code: cancelled ? 'cancelled' : 'workflow_failed',
          message: `the workflow ${cancelled ? 'was cancelled' : 'failed'} while the client was away (the hub's snapshot does not say why)`,
          retryable: false,
        },
      });
    }
    for (const message of out) this.#record(message);
    if (running && snapshot.agentId && !continued && !content) {
      this.agent = { id: snapshot.agentId, text: '', progress: 0, done: false };
    }
    this.epoch = snapshot.epoch;
    this.seq = seq;
    return out;
  }
}
