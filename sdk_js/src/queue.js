// An async-iterable queue of one stream's messages, shared by the SDK's stream classes: the
// producer pushes messages and ends the queue once (with an error or none); each iteration
// yields every message from the first, then returns or throws the error at the end.

export class EventQueue {
  #events = [];
  #waiters = [];
  #ended = false;
  #error = null;

  /** Add one message and wake the iterations waiting for one. */
  push(message) {
    this.#events.push(message);
    this.#wake();
  }

  /** End the queue: iterations finish after the messages so far, throwing `error` if given. */
  end(error = null) {
    this.#ended = true;
    this.#error = error;
    this.#wake();
  }

  #wake() {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  async *[Symbol.asyncIterator]() {
    let index = 0;
    for (;;) {
      if (index < this.#events.length) {
        yield this.#events[index];
        index += 1;
        continue;
      }
      if (this.#ended) {
        if (this.#error) throw this.#error;
        return;
      }
      await new Promise((resolve) => this.#waiters.push(resolve));
    }
  }
}
