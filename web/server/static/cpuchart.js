// Canvas chart of /api/v1/cpu (docs/api.md): one bar per time step, as % of one core (or the raw
// value for non-CPU sample types). Dragging across it chooses a sub-range, snapped outwards to whole
// steps so the flame graph below holds exactly the samples of the bars the drag touched.
import { sizeCanvas } from "./canvas.js";
import { formatInt, lazyIntl } from "./lazyintl.js";

// CSS px; shorter on short screens, so the flame graph starts above the fold at 1280x720
// CSS px; lower on a short window (1280x720: the graph and the diff tables need the room), read per draw.
const chartHeight = () => (typeof window !== "undefined" && window.innerHeight < 820 ? 100 : 140);
const PAD = { left: 56, right: 12, top: 10, bottom: 24 };
const FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
const MIN_DRAG = 3;                          // px; less is a click, not a range
const TICK_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
  86400, 172800, 604800];                    // seconds between x-axis labels

const fmtInt = { format: formatInt };
const STACK_COLORS = ["#f08a4b", "#4b8df0", "#3fae6a", "#b36bd6", "#e0b73a", "#9a948c"];
const fmtCompact = lazyIntl(() => new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }));

// An axis label in the chart's unit, short enough for the margin ("310M", "1.5 GiB", "12.5%").
export function axisLabel(v, cpu, unit) {
  if (cpu) return `${+v.toFixed(3)}%`;
  if (unit === "bytes") {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, x = v;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    return `${+x.toFixed(1)} ${units[i]}`;
  }
  return v >= 10_000 ? fmtCompact.format(v) : fmtInt.format(v);
}

function niceStep(rough) {  // 1, 2, 2.5 or 5 times a power of ten, at least `rough`
  if (!(rough > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(rough));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= rough) return m * p;
  return 10 * p;
}

// Bytes step in round multiples of their binary unit (50 GiB, not the 46.6 GiB of a step of 5e10 bytes).
function niceBytesStep(rough) {
  let scale = 1;
  while (rough / scale >= 1024) scale *= 1024;
  return Math.min(niceStep(rough / scale), 1024) * scale;
}

const pad2 = (n) => String(n).padStart(2, "0");

// Local wall-clock label; seconds only when ticks are closer than a minute, the date when a day or more.
export function timeLabel(t, spacing) {
  const d = new Date(t * 1000);
  let s = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  if (spacing < 60) s += `:${pad2(d.getSeconds())}`;
  if (spacing >= 86400) s = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
  else if (spacing >= 3600 * 6) s = `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${s}`;
  return s;
}

function fullTime(t) {
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
    `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

export class CpuChart {
  constructor(canvas, tooltip, { onSelect } = {}) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.onSelect = onSelect || (() => {});
    this.data = null;
    this.selection = null;  // [from, to] unix seconds, drawn as the chosen sub-range
    this.baseline = null;   // [from, to] of compare mode's baseline, marked when it is in view
    this.drag = null;       // {x0, x1} CSS px while the pointer is down
    this.hover = -1;
    this.width = 0;
    this.lastRender = null;
    canvas.addEventListener("pointerdown", (e) => this._down(e));
    canvas.addEventListener("pointermove", (e) => this._move(e));
    canvas.addEventListener("pointerup", (e) => this._up(e));
    canvas.addEventListener("pointercancel", () => { this.drag = null; this.render(); });
    canvas.addEventListener("pointerleave", () => { if (!this.drag) this._leave(); });
  }

  setData(resp) {
    const cpu = Array.isArray(resp.cores);
    const values = (cpu ? resp.cores.map((c) => c * 100) : resp.values) || [];
    this.data = {
      from: resp.from, to: resp.to, step: resp.step, timestamps: resp.timestamps || [], raw: resp.values || [],
      values, cpu, unit: resp.unit === "count" ? "samples" : resp.unit || "", rawUnit: resp.unit || "",
    };
    this.hover = -1;
  }

  setSelection(range) { this.selection = range; }

  // Series stacked in each bar (one per label value, then "other"); null for one series.
  setStack(stack) {
    if (!stack || !this.data) { this.stack = null; return; }
    const scale = this.data.cpu && this.data.raw.length
      ? (k) => (this.data.raw[k] ? this.data.values[k] / this.data.raw[k] : 0) : () => 1;
    this.stack = stack.map((p, i) => ({
      name: p.name, color: STACK_COLORS[i % STACK_COLORS.length], values: p.values.map((v, k) => v * scale(k)),
    }));
  }

  setBaseline(range) { this.baseline = range; }

  total() { return this.data ? this.data.raw.reduce((a, v) => a + v, 0) : 0; }

  // ---- geometry ---------------------------------------------------------------------------

  _plot() {
    const W = this.width;
    return { left: this.padLeft || PAD.left, top: PAD.top, width: Math.max(1, W - PAD.left - PAD.right),
      height: chartHeight() - PAD.top - PAD.bottom };
  }

  _x(t) {
    const p = this._plot(), d = this.data;
    return p.left + ((t - d.from) / (d.to - d.from)) * p.width;
  }

  _t(x) {
    const p = this._plot(), d = this.data;
    const f = Math.min(1, Math.max(0, (x - p.left) / p.width));
    return d.from + f * (d.to - d.from);
  }

  _bucket(x) {  // index of the step under x, or -1
    const d = this.data;
    if (!d || !d.timestamps.length) return -1;
    const p = this._plot();
    if (x < p.left || x > p.left + p.width) return -1;
    return Math.min(d.timestamps.length - 1, Math.max(0, Math.floor((this._t(x) - d.from) / d.step)));
  }

  // The drag [x0, x1] as whole steps [from, to): every step the drag touched.
  snap(x0, x1) {
    const d = this.data;
    const a = this._t(Math.min(x0, x1)), b = this._t(Math.max(x0, x1));
    const from = d.from + Math.floor((a - d.from) / d.step) * d.step;
    const to = Math.min(d.to, d.from + Math.max(1, Math.ceil((b - d.from) / d.step)) * d.step);
    return [from, Math.max(to, Math.min(d.to, from + d.step))];
  }

  // ---- drawing ----------------------------------------------------------------------------

  render(width) {
    if (width) this.width = width;
    const canvas = this.canvas, d = this.data;
    const W = Math.max(1, Math.floor(this.width || canvas.clientWidth || 800));
    this.width = W;
    const ctx = sizeCanvas(canvas, W, chartHeight());
    if (!d) return (this.lastRender = null);
    const p = this._plot();
    const max = Math.max(0, ...d.values);
    const yStep = d.cpu ? niceStep((max || 1) / 4)
      : d.rawUnit === "bytes" ? Math.max(1, niceBytesStep(max / 4)) : Math.max(1, niceStep(max / 4));  // counts are whole
    const yMax = Math.max(yStep, Math.ceil(max / yStep) * yStep);
    ctx.font = FONT;
    // Axis and grid colours from the page's theme (light or dark, prefers-color-scheme).
    const css = getComputedStyle(canvas);
    const muted = css.getPropertyValue("--muted").trim() || "#6b655e";
    const grid = css.getPropertyValue("--line").trim() || "#ece7e0";
    // The left margin fits the widest y label (it was a fixed 56 px, which cut ",000,000" labels).
    let widest = 0;
    for (let v = 0; v <= yMax + yStep / 2; v += yStep) widest = Math.max(widest, ctx.measureText(axisLabel(v, d.cpu, d.rawUnit)).width);
    this.padLeft = Math.max(PAD.left, Math.ceil(widest) + 12);
    Object.assign(p, this._plot());
    const y = (v) => p.top + p.height - (v / yMax) * p.height;

    ctx.fillStyle = muted;
    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    // y axis: gridlines and labels
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const yLabels = [];
    for (let v = 0; v <= yMax + yStep / 2; v += yStep) {
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(p.left, yy); ctx.lineTo(p.left + p.width, yy); ctx.stroke();
      const label = axisLabel(v, d.cpu, d.rawUnit);
      ctx.fillText(label, p.left - 6, yy);
      yLabels.push(label);
    }
    // x axis: labels at round local times, ~90 px apart
    const span = d.to - d.from;
    const spacing = TICK_STEPS.find((s) => (s / span) * p.width >= 90) || TICK_STEPS[TICK_STEPS.length - 1];
    const off = -new Date(d.from * 1000).getTimezoneOffset() * 60;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil((d.from + off) / spacing) * spacing - off; t <= d.to; t += spacing) {
      const xx = Math.round(this._x(t)) + 0.5;
      if (xx > p.left + p.width - 20 || xx < p.left + 16) continue;  // a label cut by the edge helps nobody
      ctx.beginPath(); ctx.moveTo(xx, p.top + p.height); ctx.lineTo(xx, p.top + p.height + 4); ctx.stroke();
      ctx.fillText(timeLabel(t, spacing), xx, p.top + p.height + 7);
    }
    // bars: stacked per series when grouped (a legend names them), else one colour
    if (this.stack) {
      for (let k = 0; k < d.values.length; k++) {
        const x0 = this._x(d.timestamps[k]), x1 = this._x(Math.min(d.to, d.timestamps[k] + d.step));
        let acc = 0;
        for (const part of this.stack) {
          const v = part.values[k] || 0;
          if (v <= 0) continue;
          ctx.fillStyle = part.color;
          const top = y(acc + v), bottom = y(acc);
          ctx.fillRect(x0, top, Math.max(1, x1 - x0 - (x1 - x0 > 3 ? 1 : 0)), bottom - top);
          acc += v;
        }
      }
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      let lx = p.left + 8;
      for (const part of this.stack) {  // legend along the top of the plot, names as text
        const label = part.name.length > 24 ? part.name.slice(0, 23) + "\u2026" : part.name;
        const w = ctx.measureText(label).width;
        if (lx + w + 20 > p.left + p.width) break;
        ctx.fillStyle = part.color;
        ctx.fillRect(lx, p.top + 2, 9, 9);
        ctx.fillStyle = muted;
        ctx.fillText(label, lx + 12, p.top + 7);
        lx += w + 26;
      }
    }
    for (let k = 0; k < d.values.length && !this.stack; k++) {
      const x0 = this._x(d.timestamps[k]), x1 = this._x(Math.min(d.to, d.timestamps[k] + d.step));
      const v = d.values[k];
      if (!v && k !== this.hover) continue;
      ctx.fillStyle = k === this.hover ? "#c2410c" : "#f08a4b";
      const top = y(v);
      ctx.fillRect(x0, top, Math.max(1, x1 - x0 - (x1 - x0 > 3 ? 1 : 0)), p.top + p.height - top);
    }
    // the chosen sub-range (dimmed outside), or the range being dragged
    const range = this.drag && Math.abs(this.drag.x1 - this.drag.x0) >= MIN_DRAG
      ? this.snap(this.drag.x0, this.drag.x1) : this.selection;
    if (range && (range[0] > d.from || range[1] < d.to)) {
      const a = Math.max(p.left, this._x(range[0])), b = Math.min(p.left + p.width, this._x(range[1]));
      ctx.fillStyle = css.getPropertyValue("--veil").trim() || "rgba(251, 250, 248, 0.7)";
      ctx.fillRect(p.left, p.top, Math.max(0, a - p.left), p.height);
      ctx.fillRect(b, p.top, Math.max(0, p.left + p.width - b), p.height);
      ctx.strokeStyle = "#c2410c";
      ctx.strokeRect(a + 0.5, p.top + 0.5, Math.max(0, b - a - 1), p.height - 1);
    }
    // compare mode's baseline (over the dimming): a blue band along the top, when it lies in view
    const base = this.baseline;
    if (base && base[1] > d.from && base[0] < d.to) {
      const a = Math.max(p.left, this._x(base[0])), b = Math.min(p.left + p.width, this._x(base[1]));
      ctx.fillStyle = "rgba(29, 78, 216, 0.08)";
      ctx.fillRect(a, p.top, b - a, p.height);
      ctx.fillStyle = "#1d4ed8";
      ctx.fillRect(a, p.top, b - a, 3);
      if (b - a > 60) {
        ctx.textAlign = "left";
        ctx.textBaseline = "top";
        ctx.fillText("baseline", a + 3, p.top + 5);
      }
    }
    ctx.strokeStyle = muted;
    ctx.beginPath();
    ctx.moveTo(p.left + 0.5, p.top); ctx.lineTo(p.left + 0.5, p.top + p.height + 0.5);
    ctx.lineTo(p.left + p.width, p.top + p.height + 0.5);
    ctx.stroke();
    this.lastRender = {
      from: d.from, to: d.to, step: d.step, bars: d.values.length, max, yMax, cpu: d.cpu,
      plot: p, selection: this.selection, baseline: this.baseline, total: this.total(),
      stack: this.stack ? this.stack.map((s) => s.name) : null, yLabels,
    };
    return this.lastRender;
  }

  // ---- interaction ------------------------------------------------------------------------

  _pos(e) { return e.clientX - this.canvas.getBoundingClientRect().left; }

  _down(e) {
    if (!this.data || e.button !== 0) return;
    const x = this._pos(e), p = this._plot();
    if (x < p.left || x > p.left + p.width) return;
    this.canvas.setPointerCapture(e.pointerId);
    this.drag = { x0: x, x1: x };
    this.hideTooltip();
  }

  _move(e) {
    if (!this.data) return;
    const x = this._pos(e);
    if (this.drag) {
      this.drag.x1 = x;
      this.render();
      return;
    }
    const k = this._bucket(x);
    if (k !== this.hover) { this.hover = k; this.render(); }
    if (k < 0) this.hideTooltip(); else this._showTooltip(k, e.clientX, e.clientY);
  }

  _up(e) {
    if (!this.drag) return;
    const { x0 } = this.drag, x1 = this._pos(e);
    this.drag = null;
    if (Math.abs(x1 - x0) < MIN_DRAG) { this.render(); return; }
    const [from, to] = this.snap(x0, x1);
    this.selection = [from, to];
    this.render();
    this.onSelect(from, to);
  }

  _leave() {
    this.hideTooltip();
    if (this.hover >= 0) { this.hover = -1; this.render(); }
  }

  _showTooltip(k, clientX, clientY) {
    const d = this.data;
    const t0 = d.timestamps[k], t1 = Math.min(d.to, t0 + d.step);
    const v = d.values[k];
    const rows = [
      ["name", `${fullTime(t0)} \u2013 ${fullTime(t1).slice(11)}`],
      ["total", d.cpu ? `${v >= 10 ? v.toFixed(1) : v.toPrecision(2)}% of a core \u00b7 ${fmtInt.format(d.raw[k])} ${d.unit}`
        : `${fmtInt.format(d.raw[k])} ${d.unit}`],
      ["hint", "drag to choose a range"],
    ];
    const tip = this.tooltip;
    tip.replaceChildren(...rows.map(([key, text]) => {
      const div = document.createElement("div");
      div.className = "tip-" + key;
      div.textContent = text;
      return div;
    }));
    tip.hidden = false;
    const pad = 14, rect = tip.getBoundingClientRect();
    let left = clientX + pad;
    if (left + rect.width > window.innerWidth - 4) left = Math.max(4, clientX - pad - rect.width);
    tip.style.left = left + "px";
    tip.style.top = clientY + pad + "px";
  }

  hideTooltip() { this.tooltip.hidden = true; }
}
