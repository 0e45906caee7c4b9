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
// - a snapshot that does not continue what was delivered (another instance of the channel,
//   with other text) fails the stream: `resume_failed`;
// - a forward jump of `seq` on a completion whose epoch is known fails it: `stream_gap`.

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
    /** The channel instance's epoch, once the hub said it (null before). */
    this.epoch = null;
    /** The last `seq` applied (0: none). */
    this.seq = 0;
    this.content = '';
    this.reasoning = '';
    this.refusal = '';
    this.toolCalls = [];
    this.citations = [];
    /** The terminal `completed` or `error` message, once it came. */
    this.terminal = null;
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
    const seq = message.seq;
    if (typeof seq === 'number') {
      if (seq <= this.seq) return [];
      const first = typeof message.firstSeq === 'number' ? message.firstSeq : seq;
      if (first > this.seq + 1 && this.completion && this.epoch != null && this.seq > 0) {
        throw new ResumeError('stream_gap', `messages ${this.seq + 1} to ${first - 1} of ${this.name} never arrived`);
      }
      this.seq = seq;
    }
    this.#record(message);
    return [message];
  }

  #record(message) {
    switch (message.type) {
      case 'content_chunk':
        this.content += message.content ?? '';
        break;
      case 'thinking_status':
        this.reasoning += message.content ?? '';
        break;
      case 'refusal':
        this.refusal += message.content ?? '';
        break;
      case 'tool_call':
        this.toolCalls.push(message);
        break;
      case 'citation':
        this.citations.push(message.citation);
        break;
      case 'completed':
        this.terminal = message;
        break;
      case 'error':
        if (message.completionId != null) this.terminal = message;
        break;
      default:
        break;
    }
  }

  #snapshot(snapshot) {
    if (snapshot.epoch === this.epoch && snapshot.seq <= this.seq) return [snapshot]; // nothing new in it
    const content = snapshot.content ?? '';
    const reasoning = snapshot.reasoning ?? '';
    const refusal = snapshot.refusal ?? '';
    const calls = snapshot.toolCalls ?? [];
    const citations = snapshot.citations ?? [];
    const continues =
      content.startsWith(this.content) &&
      reasoning.startsWith(this.reasoning) &&
      refusal.startsWith(this.refusal) &&
      calls.length >= this.toolCalls.length &&
      this.toolCalls.every((call, i) => calls[i].id === call.id) &&
      citations.length >= this.citations.length;
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
    if (reasoning.length > this.reasoning.length) {
      out.push({ type: 'thinking_status', completionId, seq, status: 'thinking', content: reasoning.slice(this.reasoning.length) });
    }
    if (content.length > this.content.length) {
      const chunk = { type: 'content_chunk', completionId, seq, content: content.slice(this.content.length) };
      if (first < seq) chunk.firstSeq = first;
      out.push(chunk);
    }
    if (refusal.length > this.refusal.length) {
      out.push({ type: 'refusal', completionId, seq, content: refusal.slice(this.refusal.length) });
    }
    out.push(...calls.slice(this.toolCalls.length));
    for (const citation of citations.slice(this.citations.length)) out.push({ type: 'citation', completionId, seq, citation });
    for (const message of out) this.#record(message);
    this.epoch = snapshot.epoch;
    this.seq = seq;
    return out;
  }
}
