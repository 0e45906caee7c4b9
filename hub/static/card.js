// What the page's cards have in common (a completion's panel in app.js; a workflow run and an
// agent pass in workflow.js): built from a <template>, their parts found by data-testid, a
// status badge, busy while their stream runs, a Cancel button, an error line and a
// "resumed ×n" label.

export class Card {
  /**
   * @param {Element} templateElement the template's element, cloned for this card.
   * @param {Record<string, string>} parts `{name: data-testid}`: the elements the card uses, as `this.el.name`.
   */
  constructor(templateElement, parts) {
    const root = templateElement.cloneNode(true);
    this.root = root;
    this.el = {};
    for (const [name, testid] of Object.entries(parts)) this.el[name] = root.querySelector(`[data-testid="${testid}"]`);
    this.resumes = 0;
    root.setAttribute('aria-busy', 'true');
  }

  /** Remember the stream's channel, tag the card with its id (`data-<idKey>`), wire Cancel. */
  bind(stream, idKey) {
    this.channel = stream.channel;
    this.root.dataset[idKey] = stream.id;
    this.el.cancel.addEventListener('click', () => {
      this.el.cancel.disabled = true;
      stream.cancel().catch((error) => this.showError(error));
    });
  }

  setStatus(status, label = status) {
    this.el.status.dataset.status = status;
    this.el.status.textContent = label;
  }

  resumed() {
    this.resumes += 1;
    this.el.resumed.hidden = false;
    this.el.resumed.textContent = `resumed ×${this.resumes}`;
  }

  showError(error) {
    this.el.error.hidden = false;
    this.el.error.textContent = error.code ? `${error.code}: ${error.message}` : String(error.message ?? error);
  }

  /** The stream ended: no longer busy, no Cancel. */
  settle() {
    this.root.removeAttribute('aria-busy');
    if (this.el.cancel) this.el.cancel.hidden = true;
  }
}
