// Canvas flame graph of the /api/v1/flamegraph payload (names + levels, see docs/api.md), and of
// the /api/v1/diff payload (8 integers per node: the same 4, then base_total, base_self,
// comp_total, comp_self).
//
// Root at top ("icicle") or at the bottom ("flame"). levels[d] is a flat list of [start, total, self, name] per node with
// absolute starts, so a node's x is (start - viewStart) / viewTotal * width: no tree is built.
// Names are untrusted: they reach the screen only through canvas fillText and textContent.
import { fastColor, sizeCanvas } from "./canvas.js";
import { formatInt } from "./lazyintl.js";

const ROW = 18;          // px per stack level
const MIN_WIDTH = 0.3;   // px; narrower nodes are drawn merged with their narrow neighbours
const LABEL_MIN = 22;    // px; narrower nodes get no label
const FONT = "12px ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace";

function hashName(s) {  // FNV-1a, so a function keeps its colour across views and reloads
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export function colorFor(name) {  // warm flame palette, hue and lightness from the name
  const h = hashName(name);
  const hue = h % 55;
  const sat = 70 + ((h >>> 8) % 20);
  const light = 58 + ((h >>> 16) % 14);
  return `hsl(${hue} ${sat}% ${light}%)`;
}

const fmtInt = { format: formatInt };

// Frame kinds as the sampler records them (podflame/model.py FrameKind), with their legend colours.
export const KIND_COLORS = {
  kernel: "hsl(200 55% 66%)", native: "hsl(28 85% 64%)", python: "hsl(130 45% 60%)",
  jit: "hsl(280 45% 72%)", unknown: "hsl(30 8% 78%)",
};

// Distinct hues for the heaviest modules (the legend's order), a hashed hue for the rest.
export const MODULE_PALETTE = ["hsl(28 85% 64%)", "hsl(200 60% 64%)", "hsl(130 45% 60%)", "hsl(280 45% 72%)",
  "hsl(48 85% 60%)", "hsl(340 60% 70%)", "hsl(170 45% 55%)", "hsl(0 65% 68%)", "hsl(230 50% 72%)", "hsl(90 45% 60%)"];

export function moduleColor(module, palette) {
  if (!module) return "hsl(30 8% 82%)";  // no module known (the root, [other], unmapped frames)
  const fixed = palette && palette.get(module);
  if (fixed) return fixed;
  const h = hashName(module);
  return `hsl(${h % 360} ${45 + ((h >>> 9) % 20)}% ${62 + ((h >>> 17) % 12)}%)`;
}

// The word for a value of a sample type: a heap profile's alloc_objects are objects (unit "count"),
// its alloc_space bytes; only CPU samples are "samples" worth a period of CPU time.
export function unitWordOf(type, unit) {
  if (unit === "bytes") return "bytes";
  if (unit === "nanoseconds") return "ns";
  if (unit === "count" || !unit) {
    if (/object/i.test(type || "")) return "objects";
    if (!type || /^(samples|cpu)$/i.test(type)) return "samples";
    return "count";
  }
  return unit;
}

export const isCpuType = (type, unit) => unit === "count" && (!type || /^(samples|cpu)$/i.test(type));

export function formatValue(v, type, unit) {
  if (unit === "bytes") {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, x = Math.abs(v);
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    return (i ? (Math.sign(v) * x).toFixed(x >= 100 ? 0 : x >= 10 ? 1 : 2) : String(Math.round(v))) + " " + units[i];
  }
  if (unit === "nanoseconds") return (v / 1e9).toFixed(2) + " s";
  return `${fmtInt.format(v)} ${unitWordOf(type, unit)}`;
}

export const MAX_PATTERN = 256;   // characters of a search expression
const MAX_MATCHED_NAME = 2048;    // characters of a name a search expression is run on

// A case-insensitive regular expression from the user's search text, or {error}. Bounded: the
// expression's length and the text each name offers are capped, so one search costs at most
// names x MAX_MATCHED_NAME steps of the engine per character class (no unbounded inputs).
export function compileSearch(text) {
  const t = (text || "").trim();
  if (!t) return { re: null };
  if (t.length > MAX_PATTERN) return { error: `search is longer than ${MAX_PATTERN} characters` };
  try {
    return { re: new RegExp(t, "i") };
  } catch (e) {
    return { error: `not a regular expression: ${e.message.replace(/^Invalid regular expression: /, "")}` };
  }
}

// Diff colour from a node's share of each side: red = more in the comparison, blue = less,
// grey = unchanged; the stronger, the larger the change relative to the larger share.
export function diffColor(baseShare, compShare) {
  const big = Math.max(baseShare, compShare);
  const rel = big > 0 ? (compShare - baseShare) / big : 0;  // -1 (gone) .. +1 (new)
  if (Math.abs(rel) < 0.02) return "hsl(30 8% 84%)";
  const light = 88 - 36 * Math.min(1, Math.abs(rel));
  return rel > 0 ? `hsl(2 78% ${light}%)` : `hsl(214 72% ${light}%)`;
}

// "+12.5 pp" for a change of share (fractions of the totals).
export function formatPoints(change) {
  const pp = change * 100;
  const digits = Math.abs(pp) >= 10 ? 1 : Math.abs(pp) >= 0.1 ? 2 : 3;
  return (pp > 0 ? "+" : pp < 0 ? "\u2212" : "\u00b1") + Math.abs(pp).toFixed(digits) + " pp";
}

export function formatPercent(part, whole) {
  if (!whole) return "0%";
  const p = (100 * part) / whole;
  if (p === 100) return "100%";
  return (p >= 10 || p === 0 ? p.toFixed(1) : p.toPrecision(2)) + "%";
}

function upperBound(arr, value) {  // first i with arr[i] > value
  let lo = 0, hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (arr[mid] > value) hi = mid; else lo = mid + 1;
  }
  return lo;
}

export class FlameGraph {
  constructor(canvas, tooltip, { onZoom, onPick } = {}) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.onZoom = onZoom || (() => {});
    this.onPick = onPick || (() => {});  // a click on a frame: its name (the page selects its table row)
    this.data = null;
    this.search = "";
    this.searchError = "";
    this.orientation = "icicle";  // "icicle": root at top; "flame": root at the bottom
    this.colorBy = "name";        // "name", "kind" or "module"
    this.highlight = -1;          // name index whose frames are outlined (the selected function)
    this.focus = null;            // {d, i}: the frame the arrow keys move between
    this.fadeOthers = false;
    this.modulePalette = null;    // module -> colour for the legend's modules      // dim frames of other functions while one is highlighted
    this.zoom = { depth: 0, index: 0 };
    this.lastRender = null;
    this.width = 0;
    canvas.addEventListener("mousemove", (e) => this._hover(e));
    canvas.addEventListener("mouseleave", () => this.hideTooltip());
    canvas.addEventListener("click", (e) => this._click(e));
  }

  // ---- data -------------------------------------------------------------------------------

  // `payload`: the JSON payload (flat levels), or treebin.js's decoding of the binary one (`columnar`:
  // the levels as kept here, parents included).
  setData(payload) {
    const names = payload.names || [];
    const isDiff = typeof payload.base_total === "number";
    const stride = isDiff ? 8 : 4;
    const levels = payload.columnar ? payload.columnar : [];
    for (const flat of payload.columnar ? [] : payload.levels || []) {
      const n = Math.floor(flat.length / stride);
      let sorted = true;  // the server sends each level in order of start: then no sort, no index array
      for (let i = 1; i < n && sorted; i++) sorted = flat[stride * (i - 1)] <= flat[stride * i];
      let order = null;
      if (!sorted) {
        order = Array.from({ length: n }, (_, i) => i);
        order.sort((a, b) => flat[stride * a] - flat[stride * b]);
      }
      const start = new Float64Array(n), total = new Float64Array(n), self = new Float64Array(n);
      const name = new Int32Array(n);
      const lv = { n, start, total, self, name, parent: new Int32Array(n).fill(-1) };
      if (isDiff) for (const k of ["baseTotal", "baseSelf", "compTotal", "compSelf"]) lv[k] = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        const o = stride * (order ? order[i] : i);
        start[i] = flat[o]; total[i] = flat[o + 1]; self[i] = flat[o + 2]; name[i] = flat[o + 3];
        if (isDiff) {
          lv.baseTotal[i] = flat[o + 4]; lv.baseSelf[i] = flat[o + 5];
          lv.compTotal[i] = flat[o + 6]; lv.compSelf[i] = flat[o + 7];
        }
      }
      levels.push(lv);
    }
    // Parent of each node: the node one level up whose span holds its start (two pointers).
    for (let d = 1; d < levels.length && !payload.columnar; d++) {
      const up = levels[d - 1], lv = levels[d];
      let p = 0;
      for (let i = 0; i < lv.n; i++) {
        while (p < up.n && up.start[p] + up.total[p] <= lv.start[i]) p++;
        lv.parent[i] = p < up.n && up.start[p] <= lv.start[i] ? p : -1;
      }
    }
    this.data = {
      names, levels, tables: payload.tables || null,
      total: payload.total ?? (levels[0] && levels[0].n ? levels[0].total[0] : 0),
      unit: payload.unit || "", type: payload.type || "", period: payload.period_ns || 0,
      diff: isDiff ? { baseTotal: payload.base_total, compTotal: payload.comp_total } : null,
    };
    // Per-name lists, read from the payload when first asked for (a binary answer builds them then).
    for (const key of ["locations", "kinds", "modules"]) {
      Object.defineProperty(this.data, key, { enumerable: true, get: () => payload[key] || [] });
    }
    if (isDiff && payload.base_total > 0 && payload.comp_total > 0) this._normalizeLayout();
    this._matchCache = null;
    this._nameIndex = null;
    this.highlight = -1;
    this.focus = null;
    this.zoom = { depth: 0, index: 0 };
  }

  nameIndex(name) {
    if (!this.data) return -1;
    if (!this._nameIndex) this._nameIndex = new Map(this.data.names.map((n, i) => [String(n), i]));
    return this._nameIndex.get(String(name)) ?? -1;
  }

  setHighlight(name) {  // null clears
    this.highlight = name === null || name === undefined ? -1 : this.nameIndex(name);
    this.render();
  }

  setOrientation(o) { this.orientation = o === "flame" ? "flame" : "icicle"; this.render(); }

  setColorBy(mode) { this.colorBy = ["kind", "module"].includes(mode) ? mode : "name"; this.render(); }

  // A name's kind, module or location ("" when unknown), from the binary answer's tables when it has them.
  metaOf(key, nameIdx) {
    const t = this.data.tables && this.data.tables[key];
    return (t ? t.values[t.index[nameIdx]] : this.data[key][nameIdx]) || "";
  }

  kindOf(nameIdx) { return this.metaOf("kinds", nameIdx) || "unknown"; }

  moduleOf(nameIdx) { return this.metaOf("modules", nameIdx); }

  // The API lays a diff out over baseline + comparison values, so the larger side would set the
  // shape. Re-lay it out over the sum of the two sides' *shares* (scaled so the root keeps its
  // total): two ranges with different CPU then compare by shape, as the colours do.
  _normalizeLayout() {
    const { levels, diff } = this.data;
    const scale = (diff.baseTotal + diff.compTotal) / 2;
    const kb = scale / diff.baseTotal, kc = scale / diff.compTotal;
    for (let d = 0; d < levels.length; d++) {
      const lv = levels[d], up = levels[d - 1];
      let parent = -2, cursor = 0;
      for (let i = 0; i < lv.n; i++) {
        lv.total[i] = lv.baseTotal[i] * kb + lv.compTotal[i] * kc;
        lv.self[i] = lv.baseSelf[i] * kb + lv.compSelf[i] * kc;
        if (d === 0) { lv.start[i] = 0; continue; }
        if (lv.parent[i] !== parent) { parent = lv.parent[i]; cursor = parent >= 0 ? up.start[parent] : lv.start[i]; }
        lv.start[i] = cursor;
        cursor += lv.total[i];
      }
    }
  }

  // A diff node's share of each side's total (0 when that side is empty).
  shares(d, i) {
    const lv = this.data.levels[d], { baseTotal, compTotal } = this.data.diff;
    return [baseTotal ? lv.baseTotal[i] / baseTotal : 0, compTotal ? lv.compTotal[i] / compTotal : 0];
  }

  nodeName(d, i) { return this.data.names[this.data.levels[d].name[i]] ?? "?"; }

  // Root-first names from below the root down to (d, i): how the page remembers a zoom.
  pathOf(d, i) {
    const path = [];
    for (; d > 0 && i >= 0; i = this.data.levels[d].parent[i], d--) path.push(this.nodeName(d, i));
    return path.reverse();
  }

  _childNamed(d, i, name) {
    const lv = this.data.levels[d + 1];
    if (!lv) return -1;
    const up = this.data.levels[d];
    const end = up.start[i] + up.total[i];
    for (let j = upperBound(lv.start, up.start[i] - 1); j < lv.n && lv.start[j] < end; j++) {
      if (lv.parent[j] === i && this.data.names[lv.name[j]] === name) return j;
    }
    return -1;
  }

  // Zoom to the node at the end of `path` (or as deep as it still exists in this data).
  zoomToPath(path) {
    let d = 0, i = 0;
    if (this.data && this.data.levels.length) {
      for (const name of path || []) {
        const j = this._childNamed(d, i, name);
        if (j < 0) break;
        d++; i = j;
      }
    }
    this.zoom = { depth: d, index: i };
  }

  zoomTo(d, i) {
    this.zoom = { depth: d, index: i };
    this.hideTooltip();
    this.render();
    this.onZoom(this.pathOf(d, i));
  }

  resetZoom() { this.zoomTo(0, 0); }

  isZoomed() { return this.zoom.depth > 0; }

  setSearch(term, render = true) {
    this.search = (term || "").trim();
    const { re, error } = compileSearch(this.search);
    this.searchRe = re || null;
    this.searchError = error || "";
    this._matchCache = null;
    if (render) this.render();
  }

  _matches() {  // per name index: 1 when the search expression matches the name
    if (!this.searchRe || !this.data) return null;
    if (!this._matchCache) {
      const m = new Uint8Array(this.data.names.length), re = this.searchRe;
      this.data.names.forEach((n, i) => { m[i] = re.test(String(n).slice(0, MAX_MATCHED_NAME)) ? 1 : 0; });
      this._matchCache = m;
    }
    return this._matchCache;
  }

  // Outermost matching frames (a match inside a match is the same samples), in drawing order
  // (depth, then x): what "next match" steps through.
  matchList() {
    const m = this._matches();
    if (!m) return [];
    const out = [], { levels } = this.data;
    let prevCovered = new Uint8Array(0);
    for (let d = 1; d < levels.length; d++) {
      const lv = levels[d], covered = new Uint8Array(lv.n);
      for (let i = 0; i < lv.n; i++) {
        if (lv.parent[i] >= 0 && prevCovered[lv.parent[i]]) { covered[i] = 1; continue; }
        if (m[lv.name[i]]) { covered[i] = 1; out.push({ d, i }); }
      }
      prevCovered = covered;
    }
    return out;
  }

  // Samples under frames matching the search, each counted once (a match inside a match is not
  // added again), over the whole graph and within the zoomed node.
  searchStats() {
    const m = this._matches();
    const levels = this.data && this.data.levels, zd = this.zoom.depth;
    // no tree (an empty or failed answer, e.g. a compare whose baseline range was refused): nothing to count
    if (!m || !levels || !levels[zd]) return null;
    const zs = levels[zd].start[this.zoom.index];
    const ze = zs + levels[zd].total[this.zoom.index];
    let matched = 0, inView = 0, prevCovered = new Uint8Array(0);
    for (let d = 0; d < levels.length; d++) {
      const lv = levels[d], covered = new Uint8Array(lv.n);
      for (let i = 0; i < lv.n; i++) {
        const parentCovered = lv.parent[i] >= 0 && prevCovered[lv.parent[i]];
        if (parentCovered) { covered[i] = 1; continue; }
        if (m[lv.name[i]]) {
          covered[i] = 1;
          matched += lv.total[i];
          if (d >= zd && lv.start[i] >= zs && lv.start[i] < ze) inView += lv.total[i];
        }
      }
      prevCovered = covered;
    }
    // A match above the zoomed node covers the whole view.
    for (let d = zd, i = this.zoom.index; d >= 0 && i >= 0; i = levels[d].parent[i], d--) {
      if (d < zd && m[levels[d].name[i]]) { inView = ze - zs; break; }
    }
    return { matched, total: this.data.total, inView, viewTotal: ze - zs };
  }

  // ---- drawing ----------------------------------------------------------------------------

  render(width) {
    if (width) this.width = width;
    const t0 = performance.now();
    const canvas = this.canvas, data = this.data;
    const W = Math.max(1, Math.floor(this.width || canvas.clientWidth || 800));
    if (!data || !data.levels.length || !data.total) {
      canvas.width = 0; canvas.height = 0; canvas.style.height = "0px";
      this.lastRender = { ms: 0, width: W, height: 0, zoom: [], nodes: [], runs: [], frames: 0 };
      return this.lastRender;
    }
    const { levels, names } = data;
    const zd = this.zoom.depth, zi = this.zoom.index;
    const zs = levels[zd].start[zi], zt = levels[zd].total[zi] || 1;
    const scale = W / zt;
    const match = this._matches();

    // Pass 1: what to draw. Above the zoomed node, its ancestors span the width (context rows).
    const draw = [];  // [depth, index, x, w, context]
    let drawnFrames = 0;
    for (let d = zd - 1, i = levels[zd].parent[zi]; d >= 0 && i >= 0; i = levels[d].parent[i], d--) {
      draw.push([d, i, 0, W, true]);
      drawnFrames++;
    }
    // Nodes too narrow to see on their own are drawn as one neutral block per run of neighbours,
    // so the CPU under them stays visible (zoom in to tell them apart).
    const ze = zs + zt;
    let depthShown = zd, merged = 0;
    for (let d = zd; d < levels.length; d++) {
      const lv = levels[d];
      let any = false, runX = -1, runEnd = -1, runMatch = false;
      const flush = () => {
        if (runX >= 0 && runEnd - runX >= MIN_WIDTH) { draw.push([d, -1, runX, runEnd - runX, runMatch]); any = true; }
        runX = runEnd = -1;
        runMatch = false;
      };
      for (let i = upperBound(lv.start, zs - 1); i < lv.n && lv.start[i] < ze; i++) {
        const x = (lv.start[i] - zs) * scale, w = lv.total[i] * scale;
        // A run node (name -1) of a preview answer stands for narrow nodes it left out: always part of a run.
        if (w < MIN_WIDTH || lv.name[i] < 0) {
          merged++;
          if (runX >= 0 && x - runEnd > MIN_WIDTH) flush();
          if (runX < 0) runX = x;
          runEnd = x + w;
          if (match && match[lv.name[i]]) runMatch = true;
          continue;
        }
        flush();
        draw.push([d, i, x, w, false]);
        drawnFrames++;
        any = true;
      }
      flush();
      if (!any) break;  // children are never wider than their parents
      depthShown = d;
    }

    // Pass 2: size the canvas for the device pixel ratio and paint.
    const H = (depthShown + 1) * ROW;
    const flameUp = this.orientation === "flame";
    const yOf = (d) => (flameUp ? depthShown - d : d) * ROW;
    this._depthShown = depthShown;
    const ctx = sizeCanvas(canvas, W, H);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    const charW = ctx.measureText("m").width || 7;
    const colors = this._colors || (this._colors = new Map());
    const hl = this.highlight, fade = this.fadeOthers && hl >= 0 && !data.diff && !match;
    const dark = fade && !!window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
    const outlines = [];
    for (const [d, i, x, w, context] of draw) {
      if (i < 0) {  // a run of narrow nodes; `context` holds whether one of them matches the search
        ctx.fillStyle = context ? "#c640d6" : "#cfc8bf";
        ctx.fillRect(x, yOf(d), Math.max(w, 1), ROW - 1);
        continue;
      }
      const nameIdx = levels[d].name[i];
      const name = String(names[nameIdx] ?? "?");
      let fill;
      if (match) fill = match[nameIdx] ? "#c640d6" : "#d8d8d8";
      else if (context) fill = "#e6dfd8";
      else if (data.diff) fill = diffColor(...this.shares(d, i));  // stays red/blue with a selection
      else if (this.colorBy === "kind") fill = KIND_COLORS[this.kindOf(nameIdx)] || KIND_COLORS.unknown;
      else if (this.colorBy === "module") fill = moduleColor(this.moduleOf(nameIdx), this.modulePalette);
      else {
        fill = colors.get(name);
        if (!fill) { fill = colorFor(name); colors.set(name, fill); }
      }
      ctx.fillStyle = fastColor(fill);
      const y = yOf(d);
      const faded = fade && nameIdx !== hl;
      ctx.globalAlpha = faded ? 0.35 : 1;
      ctx.fillRect(x, y, w > 2 ? w - 1 : w, ROW - 1);
      if (w >= LABEL_MIN) {
        const room = Math.floor((w - 6) / charW);
        if (room >= 2) {
          const label = name.length <= room ? name : name.slice(0, room - 1) + "\u2026";
          // A faded frame over the dark theme's background is dark: its label is light there to stay readable.
          ctx.fillStyle = match && match[nameIdx] ? "#fff" : faded && dark ? "#ece8e3" : "#1d1d1d";
          if (faded && dark) ctx.globalAlpha = 0.8;
          ctx.fillText(label, x + 3, y + ROW / 2);
        }
      }
      if (nameIdx === hl) outlines.push([x, y, w, "#111"]);
      if (this.focus && this.focus.d === d && this.focus.i === i) outlines.push([x, y, w, "#2563eb"]);
    }
    ctx.globalAlpha = 1;
    ctx.lineWidth = 2;
    for (const [x, y, w, color] of outlines) {
      ctx.strokeStyle = color;
      ctx.strokeRect(x + 1, y + 1, Math.max(w - 3, 1), ROW - 3);
    }
    const ms = performance.now() - t0;
    this._drawn = draw;
    this._W = W;
    // What was drawn, per frame (tests, the SVG export, the arrow keys' tooltip), built when first read: for
    // a node's day, an object per drawn frame (~13k) took 15-87 ms of its first draw on a loaded machine.
    let nodes = null;
    const meta = (key, nameIdx) => {
      const t = data.tables && data.tables[key];
      return (t ? t.values[t.index[nameIdx]] : data[key][nameIdx]) || "";
    };
    const frames = () => nodes || (nodes = draw.filter(([, i]) => i >= 0).map(([d, i, x, w, context]) => {
      const lv = levels[d], nameIdx = lv.name[i];
      const node = { name: String(names[nameIdx]), depth: d, x, y: yOf(d), width: w, context,
        total: lv.total[i], self: lv.self[i], highlighted: nameIdx === hl,
        kind: meta("kinds", nameIdx) || "unknown", module: meta("modules", nameIdx) };
      if (data.diff) {
        const { baseTotal, compTotal } = data.diff;
        const b = baseTotal ? lv.baseTotal[i] / baseTotal : 0, c = compTotal ? lv.compTotal[i] / compTotal : 0;
        Object.assign(node, { base: lv.baseTotal[i], comp: lv.compTotal[i], change: c - b });
      }
      return node;
    }));
    this.lastRender = {
      ms, width: W, height: H, zoom: this.pathOf(zd, zi), merged, frames: drawnFrames,
      diff: !!data.diff, orientation: this.orientation, colorBy: this.colorBy,
    };
    Object.defineProperty(this.lastRender, "nodes", { enumerable: true, get: frames });
    let runList = null;
    Object.defineProperty(this.lastRender, "runs", {
      enumerable: true,
      get: () => runList || (runList = draw.filter(([, i]) => i < 0).map(([d, , x, w]) => ({ depth: d, x, width: w }))),
    });
    return this.lastRender;
  }

  // ---- interaction ------------------------------------------------------------------------

  hitTest(px, py) {
    const data = this.data;
    if (!data || !this._drawn) return null;
    const row = Math.floor(py / ROW);
    const d = this.orientation === "flame" ? (this._depthShown ?? 0) - row : row;
    const { levels } = data;
    const zd = this.zoom.depth;
    if (d < 0 || d >= levels.length) return null;
    if (d < zd) {  // a context row: the ancestor at that depth
      for (const [dd, i, , , context] of this._drawn) if (context && dd === d && i >= 0) return { d, i };
      return null;
    }
    const zs = levels[zd].start[this.zoom.index], zt = levels[zd].total[this.zoom.index] || 1;
    const v = zs + (px / this._W) * zt;
    const lv = levels[d];
    const i = upperBound(lv.start, v) - 1;
    if (i < 0 || v >= lv.start[i] + lv.total[i] || lv.name[i] < 0) return null;
    if (lv.start[i] < zs || lv.start[i] >= zs + zt) return null;
    return { d, i };
  }

  _pos(e) {
    const r = this.canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  _click(e) {
    const hit = this.hitTest(...this._pos(e));
    if (!hit) return;
    this.focus = hit;
    this.onPick(hit.d > 0 ? this.nodeName(hit.d, hit.i) : null);
    this.zoomTo(hit.d, hit.i);
  }

  // Arrow keys: up/down to the parent or the widest child, left/right to the neighbour at the same
  // depth (within the zoomed frame); the frame gets an outline and its tooltip.
  moveFocus(key) {
    if (!this.data || !this.data.levels.length) return null;
    const { levels } = this.data;
    let f = this.focus || { d: this.zoom.depth, i: this.zoom.index };
    const towardRoot = this.orientation === "flame" ? "ArrowDown" : "ArrowUp";
    const lv = levels[f.d];
    if (key === towardRoot) {
      if (f.d > 0 && lv.parent[f.i] >= 0) f = { d: f.d - 1, i: lv.parent[f.i] };
    } else if (key === "ArrowUp" || key === "ArrowDown") {
      const next = levels[f.d + 1];
      let best = -1;
      if (next) {
        for (let j = upperBound(next.start, lv.start[f.i] - 1); j < next.n && next.start[j] < lv.start[f.i] + lv.total[f.i]; j++) {
          if (next.parent[j] === f.i && (best < 0 || next.total[j] > next.total[best])) best = j;
        }
      }
      if (best >= 0) f = { d: f.d + 1, i: best };
    } else if (key === "ArrowLeft" || key === "ArrowRight") {
      const j = f.i + (key === "ArrowLeft" ? -1 : 1);
      const zs = levels[this.zoom.depth].start[this.zoom.index];
      const ze = zs + levels[this.zoom.depth].total[this.zoom.index];
      // A preview's run node stands for frames not sent yet: not a frame to focus.
      if (j >= 0 && j < lv.n && lv.start[j] >= zs && lv.start[j] < ze && lv.name[j] >= 0) f = { d: f.d, i: j };
    }
    this.focus = f;
    this.render();
    return f;
  }

  _hover(e) {
    const hit = this.hitTest(...this._pos(e));
    if (!hit) { this.hideTooltip(); this.canvas.style.cursor = "default"; return; }
    this.canvas.style.cursor = "pointer";
    this.showTooltip(hit.d, hit.i, e.clientX, e.clientY);
  }

  describe(d, i) {
    const { levels, total, unit, period } = this.data;
    const lv = levels[d];
    const p = lv.parent[i];
    const parentTotal = d > 0 && p >= 0 ? levels[d - 1].total[p] : lv.total[i];
    const info = {
      name: String(this.nodeName(d, i)), total: lv.total[i], self: lv.self[i],
      percentTotal: formatPercent(lv.total[i], total), percentParent: formatPercent(lv.total[i], parentTotal),
      unit, cpuSeconds: null,
    };
    if (isCpuType(this.data.type, unit) && period) info.cpuSeconds = (lv.total[i] * period) / 1e9;
    return info;
  }

  _diffRows(d, i, unitWord, fmt) {
    const lv = this.data.levels[d], { baseTotal, compTotal } = this.data.diff;
    const [b, c] = this.shares(d, i);
    let change = formatPoints(c - b) + " of total";
    if (!b && c) change += " (new)";
    else if (b && !c) change += " (gone)";
    else if (b) change += ` (\u00d7${(c / b).toPrecision(3)})`;
    return [
      ["name", this.nodeName(d, i)],
      ["base", `baseline: ${fmt(lv.baseTotal[i])} (${formatPercent(lv.baseTotal[i], baseTotal)})`],
      ["comp", `comparison: ${fmt(lv.compTotal[i])} (${formatPercent(lv.compTotal[i], compTotal)})`],
      ["change", `change: ${change}`],
      ["self", `self: ${fmt(lv.baseSelf[i])} \u2192 ${fmt(lv.compSelf[i])}`],
    ];
  }

  showTooltip(d, i, clientX, clientY) {
    const info = this.describe(d, i);
    const tip = this.tooltip;
    const unitWord = unitWordOf(this.data.type, info.unit);
    const fmt = (v) => formatValue(v, this.data.type, info.unit);
    const nameIdx = this.data.levels[d].name[i];
    const where = this.metaOf("locations", nameIdx);
    const kind = this.metaOf("kinds", nameIdx), module = this.metaOf("modules", nameIdx);
    const rows = this.data.diff ? this._diffRows(d, i, unitWord, fmt) : [
      ["name", info.name],
      ...(where ? [["where", where]] : []),  // the function's hottest file:line
      ...(kind || module ? [["kind", [kind, module].filter(Boolean).join(" \u00b7 ")]] : []),
      ["total", fmt(info.total) + (info.cpuSeconds !== null ? ` \u00b7 ${info.cpuSeconds.toFixed(2)} s CPU` : "")],
      ["share", `${info.percentTotal} of total \u00b7 ${info.percentParent} of parent`],
      ["self", `self: ${fmt(info.self)} (${formatPercent(info.self, this.data.total)})`],
    ];
    tip.replaceChildren();
    for (const [key, value] of rows) {
      const row = document.createElement("div");
      row.className = "tip-" + key;
      row.textContent = value;
      tip.append(row);
    }
    const hint = document.createElement("div");
    hint.className = "tip-hint";
    hint.textContent = d === this.zoom.depth && i === this.zoom.index ? "" : "click to zoom";
    if (hint.textContent) tip.append(hint);
    tip.hidden = false;
    const pad = 14, rect = tip.getBoundingClientRect();
    let left = clientX + pad, top = clientY + pad;
    if (left + rect.width > window.innerWidth - 4) left = Math.max(4, clientX - pad - rect.width);
    if (top + rect.height > window.innerHeight - 4) top = Math.max(4, clientY - pad - rect.height);
    tip.style.left = left + "px";
    tip.style.top = top + "px";
  }

  hideTooltip() { this.tooltip.hidden = true; }
}
