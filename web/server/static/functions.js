// Views derived in the browser from one flame-graph payload (no second request): the function
// table (self and total per function), the inverted (bottom-up) graph and the sandwich of one
// function (its callers merged above it, its callees below). Each builds a payload of the same
// shape as /api/v1/flamegraph, so the one FlameGraph class draws them all.
// Names are untrusted: the table writes them with textContent only.

import { lazyIntl } from "./lazyintl.js";

// Per function (name index): self = samples where it is the leaf; total = samples with it anywhere
// on the stack, counted once per stack (a recursive call is not added again).
export function functionTotals(fg) {
  const { levels, names } = fg.data;
  const self = new Float64Array(names.length), total = new Float64Array(names.length);
  // Depth first over the levels (a level's nodes are in order of start, so each node's children are one
  // run of the next level), with a count per name of its frames on the current path: a node adds to its
  // name's total only when no ancestor has that name. O(nodes), whatever the depth.
  const first = [], ends = [];  // per level d: for each node of level d, its children's [first, end) in level d + 1
  for (let d = 0; d + 1 < levels.length; d++) {
    const lv = levels[d], down = levels[d + 1];
    const f = new Int32Array(lv.n), e = new Int32Array(lv.n);
    for (let j = down.n - 1; j >= 0; j--) { const p = down.parent[j]; if (p >= 0) { if (!e[p]) e[p] = j + 1; f[p] = j; } }
    first.push(f); ends.push(e);
  }
  const onPath = new Int32Array(names.length);
  const stackD = [], stackI = [], stackNext = [];
  const enter = (d, i) => {
    const name = levels[d].name[i];
    if (d > 0) {
      self[name] += levels[d].self[i];
      if (!onPath[name]) total[name] += levels[d].total[i];
      onPath[name]++;
    }
    stackD.push(d); stackI.push(i); stackNext.push(d < first.length && ends[d][i] ? first[d][i] : -1);
  };
  if (levels.length && levels[0].n) enter(0, 0);
  while (stackD.length) {
    const top = stackD.length - 1, d = stackD[top], i = stackI[top], next = stackNext[top];
    if (next >= 0 && next < ends[d][i]) {
      stackNext[top] = next + 1;
      enter(d + 1, next);
      continue;
    }
    if (d > 0) onPath[levels[d].name[i]]--;
    stackD.pop(); stackI.pop(); stackNext.pop();
  }
  const rows = [];
  for (let n = 1; n < names.length; n++) if (total[n] > 0 || self[n] > 0) rows.push({ idx: n, name: String(names[n]), self: self[n], total: total[n] });
  return rows;
}

// A payload (names + flat levels of [start, total, self, name]) from stacks of name indices, root
// first, with values; the root is name index 0 ("total"). Siblings are laid out by name, as the server does.
export function payloadFromStacks(names, stacks, extra = {}) {
  const root = { name: 0, total: 0, self: 0, kids: new Map() };
  for (const [path, value] of stacks) {
    if (!value) continue;
    let node = root;
    node.total += value;
    for (const n of path) {
      let k = node.kids.get(n);
      if (!k) { k = { name: n, total: 0, self: 0, kids: new Map() }; node.kids.set(n, k); }
      k.total += value;
      node = k;
    }
    node.self += value;
  }
  const levels = [];
  let row = [[root, 0]];
  while (row.length) {
    const flat = [], next = [];
    for (const [node, start] of row) {
      flat.push(start, node.total, node.self, node.name);
      let x = start;
      const kids = [...node.kids.values()].sort((a, b) => String(names[a.name]).localeCompare(String(names[b.name])));
      for (const k of kids) { next.push([k, x]); x += k.total; }
    }
    levels.push(flat);
    row = next;
  }
  return { names, levels, total: root.total, ...extra };
}

function pathTo(levels, d, i) {  // name indices from below the root down to (d, i)
  const path = new Array(d);
  for (let k = d - 1; d > 0 && i >= 0; i = levels[d].parent[i], d--, k--) path[k] = levels[d].name[i];
  return path;
}

// Bottom-up: every leaf's stack reversed (the hottest functions become the roots), weighted by self.
export function invertedPayload(fg, meta) {
  const { levels, names } = fg.data, stacks = [];
  for (let d = 1; d < levels.length; d++) {
    const lv = levels[d];
    for (let i = 0; i < lv.n; i++) if (lv.self[i] > 0) stacks.push([pathTo(levels, d, i).reverse(), lv.self[i]]);
  }
  return payloadFromStacks(names, stacks, meta);
}

// The sandwich of one function (name index f): `callers` has f at its root and each of f's
// outermost occurrences' call paths above it (reversed, so the graph reads "f <- caller <- ..."),
// `callees` has f at its root and everything f called merged below it.
export function sandwichPayloads(fg, f, meta) {
  const { levels, names } = fg.data, callers = [], callees = [];
  let prevInside = new Uint8Array(1);
  for (let d = 1; d < levels.length; d++) {
    const lv = levels[d], inside = new Uint8Array(lv.n);
    const parentInside = (i) => lv.parent[i] >= 0 && prevInside[lv.parent[i]];
    for (let i = 0; i < lv.n; i++) {
      if (parentInside(i)) {
        inside[i] = 1;
        if (lv.self[i] > 0) {  // a leaf below an occurrence of f: its path from f down
          const path = pathTo(levels, d, i);
          const from = path.indexOf(f);
          callees.push([path.slice(from), lv.self[i]]);
        }
        continue;
      }
      if (lv.name[i] !== f) continue;
      inside[i] = 1;
      callers.push([pathTo(levels, d, i).reverse(), lv.total[i]]);
      if (lv.self[i] > 0) callees.push([[f], lv.self[i]]);
    }
    prevInside = inside;
  }
  return { callers: payloadFromStacks(names, callers, meta), callees: payloadFromStacks(names, callees, meta) };
}

// ---- the table ---------------------------------------------------------------------------------

const collator = lazyIntl(() => new Intl.Collator());
const SORTS = {
  self: (a, b) => b.self - a.self || b.total - a.total,
  total: (a, b) => b.total - a.total || b.self - a.self,
  name: (a, b) => collator.compare(a.name, b.name),
};

// The first k of `rows` in `cmp` order, sorted, without sorting them all: a 100k-function profile shows
// 300 rows, and one comparison rejects most candidates.
export function firstK(rows, cmp, k) {
  const out = [];
  for (const r of rows) {
    if (out.length === k && cmp(r, out[k - 1]) >= 0) continue;
    let lo = 0, hi = out.length;
    while (lo < hi) { const mid = (lo + hi) >>> 1; if (cmp(r, out[mid]) < 0) hi = mid; else lo = mid + 1; }
    out.splice(lo, 0, r);
    if (out.length > k) out.pop();
  }
  return out;
}
export const TABLE_LIMIT = 300;  // rows drawn at once; the filter finds the rest

// A long qualified name cut in its middle to `max` characters, so both ends stay readable: the
// namespace or package it starts with and the function's own name it ends with (an end-ellipsis would
// cut "std::__1::basic_string<char>::append" to "std::__1::basi…", the same for every method).
// The tail gets the larger share and starts after a separator (::, ., /) when one is near.
export function elideMiddle(name, max) {
  if (!(max > 0) || name.length <= max) return name;
  if (max < 6) return name.slice(0, Math.max(1, max - 1)) + "\u2026";
  const keep = max - 1;
  let tail = Math.ceil(keep * 0.6);
  const from = name.length - tail, near = name.slice(from, from + Math.floor(tail / 3));
  const sep = near.search(/::|[./:]/);
  if (sep > 0) tail -= sep + (near.startsWith("::", sep) ? 2 : 1);
  return name.slice(0, keep - tail) + "\u2026" + name.slice(name.length - tail);
}

const charWidths = new Map();  // font -> width of one character (the table's names are monospace)
export function charWidth(font) {
  let w = charWidths.get(font);
  if (!w) {
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.font = font;
    w = ctx.measureText("abcdefghijklmnopqrstuvwxyz:_.<>()").width / 33 || 7;
    charWidths.set(font, w);
  }
  return w;
}

// Names in `cells` (elements whose dataset.name is the full name) cut in the middle to fit `width` px.
export function fitNamesTo(cells, width) {
  let fit = Infinity;
  for (const el of cells) {
    if (fit === Infinity) fit = width > 0 ? Math.max(4, Math.floor(width / charWidth(getComputedStyle(el).font))) : Infinity;
    const name = el.dataset.name, shown = elideMiddle(name, fit);
    el.textContent = shown;
    if (shown !== name) el.setAttribute("aria-label", name); else el.removeAttribute("aria-label");
  }
}

function td(text, className) {
  const el = document.createElement("td");
  el.textContent = text;
  if (className) el.className = className;
  return el;
}

// The function table: sorted, filtered (regular expression, as the search) and linked to the graph
// through callbacks: onHover(name|null) while the pointer is on a row, onSelect(name) on a click.
//
// Numbers: the self and total columns show either the share ("pct", the default) or the value in the
// profile's unit ("value", counts compact: "311M"), one at a time so the function's name keeps most of
// the width; the other is in the cell's tooltip. Names longer than their column are cut in the middle
// (full name on hover and as the cell's accessible name), again whenever the column's width changes.
export class FunctionTable {
  constructor(tbody, { onHover, onSelect, format, formatCompact }) {
    this.tbody = tbody;
    this.onHover = onHover;
    this.onSelect = onSelect;
    this.format = format;  // (value) -> text in the profile's unit
    this.formatCompact = formatCompact || format;  // (value) -> short text for the value column
    this.rows = [];
    this.total = 0;
    this.sort = "self";
    this.filter = null;
    this.selected = null;
    this.shown = [];
    this.show = "pct";
    this.table = tbody.closest("table");
    this.nameHead = this.table ? this.table.querySelector("th") : null;
    this.fitChars = Infinity;
    tbody.addEventListener("mouseleave", () => this.onHover(null));
    if (this.nameHead && typeof ResizeObserver !== "undefined") {
      new ResizeObserver(() => this.fitNames()).observe(this.nameHead);
    }
  }

  setShow(mode) {
    this.show = mode === "value" ? "value" : "pct";
    if (this.table) this.table.classList.toggle("show-value", this.show === "value");
    this.fitNames();
  }

  // Characters of a name that fit its column now (Infinity while the table is not laid out).
  measure() {
    const head = this.nameHead;
    if (!head || !head.clientWidth) return Infinity;
    const cell = this.tbody.querySelector("td.fn");
    const font = cell ? getComputedStyle(cell).font : "12px monospace";
    return Math.max(4, Math.floor((head.clientWidth - 13) / charWidth(font)));
  }

  nameCell(cell, name) {
    const shown = elideMiddle(name, this.fitChars);
    cell.textContent = shown;
    cell.title = name;
    if (shown !== name) cell.setAttribute("aria-label", name); else cell.removeAttribute("aria-label");
  }

  fitNames() {
    const fit = this.measure();
    if (fit === this.fitChars) return;
    this.fitChars = fit;
    for (const tr of this.tbody.children) if (tr.firstChild) this.nameCell(tr.firstChild, tr.dataset.name);
  }

  setRows(rows, total) { this.rows = rows; this.total = total; this.render(); }

  setSort(key) { if (SORTS[key]) { this.sort = key; this.render(); } }

  setFilter(re) { this.filter = re; this.render(); }

  select(name, scroll = true) {
    this.selected = name;
    for (const tr of this.tbody.children) {
      const on = tr.dataset.name === name;
      tr.classList.toggle("selected", on);
      tr.setAttribute("aria-selected", on ? "true" : "false");
      if (on && scroll) tr.scrollIntoView({ block: "nearest" });
    }
  }

  render() {
    const pct = (v) => {
      if (!this.total) return "0%";
      const p = (100 * v) / this.total;
      if (p === 100) return "100%";
      return (p >= 10 || p === 0 ? p.toFixed(1) : p.toPrecision(2)) + "%";
    };
    let rows = this.rows;
    if (this.filter) rows = rows.filter((r) => this.filter.test(r.name.slice(0, 2048)));
    this.matching = rows.length;
    this.shown = firstK(rows, SORTS[this.sort], TABLE_LIMIT);
    const trs = this.shown.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.name = r.name;
      const fn = td("", "fn");
      this.nameCell(fn, r.name);
      const cell = (v) => {  // value and share in one cell, one of them shown (.show-value): "600" / "75.0%"
        const c = document.createElement("td");
        c.className = "num";
        const val = document.createElement("span");
        val.className = "val";
        val.textContent = this.formatCompact(v);
        const share = document.createElement("span");
        share.className = "pct";
        share.textContent = pct(v);
        c.append(val, share);
        c.title = `${this.format(v)} \u00b7 ${share.textContent}`;
        return c;
      };
      tr.append(fn, cell(r.self), cell(r.total));
      if (r.name === this.selected) { tr.classList.add("selected"); tr.setAttribute("aria-selected", "true"); }
      tr.addEventListener("mouseenter", () => this.onHover(r.name));
      tr.addEventListener("click", () => this.onSelect(r.name));
      return tr;
    });
    this.tbody.replaceChildren(...trs);
    if (this.fitChars === Infinity && trs.length) this.fitNames();  // first rows: measure their font
  }
}
