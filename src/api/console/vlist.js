// A virtualized list over a server-paged collection: only the rows in view (plus a margin)
// exist in the DOM, and only the pages they fall in are fetched. Fixed row height, so a
// 10,000-row list costs the same as a 30-row one. Rows are positioned through the CSSOM
// (element.style), which the console's Content-Security-Policy allows.

const OVERSCAN = 8;

export class VirtualList {
  /**
   * @param {HTMLElement} el scroll container (the listbox)
   * @param {object} opts
   *   rowHeight: px; pageSize: rows per request;
   *   fetchPage(offset, limit) -> Promise<{total, items}>;
   *   renderRow(item, index) -> HTMLElement; key(item) -> string (stable id);
   *   onActivate(item, index): Enter or click; onSelect(item, index): selection moved.
   */
  constructor(el, opts) {
    this.el = el;
    this.opts = { pageSize: 100, rowHeight: 40, ...opts };
    this.total = 0;
    this.items = new Map(); // index -> item
    this.pages = new Map(); // page number -> generation it was fetched for
    this.generation = 0;
    this.selected = -1;
    this.spacer = document.createElement('div');
    this.spacer.className = 'vlist-spacer';
    this.el.replaceChildren(this.spacer);
    this.frame = 0;
    this.el.addEventListener('scroll', () => this.schedule());
    this.el.addEventListener('click', (e) => {
      const row = e.target.closest('[data-index]');
      if (!row) return;
      const i = Number(row.dataset.index);
      this.select(i);
      const item = this.items.get(i);
      if (item && this.opts.onActivate) this.opts.onActivate(item, i);
    });
    new ResizeObserver(() => this.schedule()).observe(this.el);
  }

  setRowHeight(px) {
    this.opts.rowHeight = px;
    this.render();
  }

  /** Forget everything and fetch what is in view again (filters changed, reset). */
  reset() {
    this.generation++;
    this.items.clear();
    this.pages.clear();
    this.selected = -1;
    this.el.scrollTop = 0;
    return this.loadVisible(true);
  }

  /** Refetch the pages in view, keeping what is shown until the answer arrives. */
  refresh() {
    this.generation++;
    this.pages.clear();
    return this.loadVisible(true);
  }

  /** Replace cached items for which `update(item)` returns a new item; re-render. */
  patch(update) {
    let changed = false;
    for (const [i, item] of this.items) {
      const next = update(item);
      if (next && next !== item) {
        this.items.set(i, next);
        changed = true;
      }
    }
    if (changed) this.schedule();
    return changed;
  }

  range() {
    const h = this.opts.rowHeight;
    const first = Math.max(0, Math.floor(this.el.scrollTop / h) - OVERSCAN);
    const visible = Math.ceil((this.el.clientHeight || 600) / h);
    const last = Math.min(this.total, first + visible + 2 * OVERSCAN);
    return [first, last];
  }

  async loadVisible(force) {
    const [first, last] = this.range();
    const size = this.opts.pageSize;
    const wanted = [];
    const lastPage = Math.max(Math.floor(Math.max(last - 1, 0) / size), Math.floor(first / size));
    for (let p = Math.floor(first / size); p <= lastPage; p++) {
      if (force || !this.pages.has(p)) wanted.push(p);
    }
    await Promise.all(wanted.map((p) => this.loadPage(p)));
    this.render();
  }

  async loadPage(p) {
    const generation = this.generation;
    this.pages.set(p, generation);
    const size = this.opts.pageSize;
    let page;
    try {
      page = await this.opts.fetchPage(p * size, size);
    } catch (e) {
      this.pages.delete(p);
      if (this.opts.onError) this.opts.onError(e);
      return;
    }
    // Only the latest request for a page may land (a reset or refresh supersedes others).
    if (this.pages.get(p) !== generation) return;
    this.total = page.total;
    page.items.forEach((item, k) => this.items.set(p * size + k, item));
    // Rows past the end after a shrink.
    for (const i of this.items.keys()) if (i >= this.total) this.items.delete(i);
    if (this.opts.onTotal) this.opts.onTotal(this.total);
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
      this.loadVisible(false);
    });
  }

  render() {
    const h = this.opts.rowHeight;
    this.spacer.style.height = `${this.total * h}px`;
    const [first, last] = this.range();
    const rows = [];
    for (let i = first; i < last; i++) {
      const item = this.items.get(i);
      let row;
      if (item) {
        row = this.opts.renderRow(item, i);
      } else {
        row = document.createElement('div');
        row.className = 'row placeholder';
        row.textContent = 'loading…';
      }
      row.dataset.index = String(i);
      row.setAttribute('role', 'option');
      row.setAttribute('aria-selected', String(i === this.selected));
      row.setAttribute('aria-posinset', String(i + 1));
      row.setAttribute('aria-setsize', String(this.total));
      if (i === this.selected) row.classList.add('selected');
      row.style.transform = `translateY(${i * h}px)`;
      row.style.height = `${h}px`;
      rows.push(row);
    }
    this.spacer.replaceChildren(...rows);
    if (this.selected >= 0) {
      const item = this.items.get(this.selected);
      if (item && this.opts.key) this.el.setAttribute('aria-activedescendant', `row-${this.opts.key(item)}`);
    }
  }

  select(i) {
    if (this.total === 0) return;
    this.selected = Math.max(0, Math.min(this.total - 1, i));
    const h = this.opts.rowHeight;
    const top = this.selected * h;
    if (top < this.el.scrollTop) this.el.scrollTop = top;
    else if (top + h > this.el.scrollTop + this.el.clientHeight) this.el.scrollTop = top + h - this.el.clientHeight;
    this.render();
    this.loadVisible(false);
    const item = this.items.get(this.selected);
    if (item && this.opts.onSelect) this.opts.onSelect(item, this.selected);
  }

  move(delta) {
    this.select(this.selected < 0 ? 0 : this.selected + delta);
  }

  current() {
    return this.selected >= 0 ? this.items.get(this.selected) : undefined;
  }
}
