// The podflame page: time range + selector, the pod/cgroup list, the CPU chart and the flame graph
// (or diff flame graph) of the selection.
//
// State lives in the URL hash (range, chart range, selector, selection, compare, zoom, search,
// auto-refresh) so a link reproduces the view. Every value from the API is untrusted text: it is
// written with textContent or DOM attribute setters, never parsed as HTML.

import { fetchWithLogin } from "./auth.js";
import { COMPARE_MODES, baselineRange, diffTable, fitDiffNames, ruleText } from "./compare.js";
import { CpuChart } from "./cpuchart.js";
import {
  FlameGraph, KIND_COLORS, MODULE_PALETTE, compileSearch, formatPercent, formatPoints, formatValue, isCpuType,
  unitWordOf,
} from "./flamegraph.js";
import { FunctionTable, elideMiddle, functionTotals, invertedPayload, sandwichPayloads } from "./functions.js";
import { exportPng, exportSvg } from "./export.js";
import { decodeTree } from "./treebin.js";
import { parseTime, readableTime, toSeconds, formatTime } from "./timeexpr.js";
import { formatInt, lazyIntl } from "./lazyintl.js";

// Marks "pf:*" time the first view's steps (bench/ui.py reports them): boot.js's request, this module's
// start and end, the graph's answer read, laid out, and drawn.
performance.mark("pf:app");
const config = JSON.parse(document.getElementById("podflame-config").textContent);
const API = config.api;
const PRESETS = config.presets;
// Rows are pod containers (pod_uid + container_id) or cgroups; the other labels name them.
const GROUP_BY = "pod_uid,container_id,cgroup,comm,namespace,pod,container,qos,runtime";

const $ = (id) => document.getElementById(id);
const els = {
  form: $("query-form"), selector: $("selector"), refresh: $("auto-refresh"), rangeText: $("range-text"),
  message: $("message"), targets: $("targets"), targetsEmpty: $("targets-empty"), targetsCount: $("targets-count"),
  flameTitle: $("flame-title"), flameSummary: $("flame-summary"), flameEmpty: $("flame-empty"),
  flameWrap: $("flame-wrap"), canvas: $("flame"), tooltip: $("tooltip"), search: $("search"),
  searchResult: $("search-result"), zoomOut: $("zoom-out"), dlPprof: $("dl-pprof"), dlFolded: $("dl-folded"),
  dlSpeedscope: $("dl-speedscope"), dlFoldedDiff: $("dl-folded-diff"),
  chartTitle: $("chart-title"), chartSummary: $("chart-summary"), chartWrap: $("chart-wrap"), chart: $("cpu-chart"),
  chartEmpty: $("chart-empty"), rangeReset: $("range-reset"),
  compareForm: $("compare-form"), compare: $("compare"), customBase: $("custom-base"), baseFrom: $("base-from"),
  baseTo: $("base-to"), baseQuery: $("base-query"), baseText: $("base-text"), diffNote: $("diff-note"),
  diffDetails: $("diff-details"), diffSummary: $("diff-summary"), diffPeek: $("diff-peek"), diffTables: $("diff-tables"), diffRule: $("diff-rule"),
  searchPrev: $("search-prev"), searchNext: $("search-next"), view: $("view"), colorBy: $("color-by"),
  orient: $("orient"), invert: $("invert"), exportPng: $("export-png"), exportSvg: $("export-svg"),
  legend: $("legend"), flameBody: $("flame-body"), tableWrap: $("table-wrap"), fnFilter: $("fn-filter"),
  fnCount: $("fn-count"), fnRows: $("fn-rows"), sandwich: $("sandwich"), sandwichEmpty: $("sandwich-empty"),
  callers: $("callers"), callees: $("callees"), callersTitle: $("callers-title"), calleesTitle: $("callees-title"),
  busy: $("busy"), flamePane: document.querySelector(".flame-pane"),
  type: $("type"), groupBy: $("group-by"), labelForm: $("label-form"), labelName: $("label-name"),
  labelValue: $("label-value"), labelNames: $("label-names"), labelValues: $("label-values"),
  downloads: document.querySelector(".downloads"), targetsTitle: $("targets-title"), targetsNote: $("targets-note"), shareLink: $("share-link"),
};
const TOP_GROUPS = 5;  // chart series per label value when grouping by a label; the rest is "other"
const VIEWS = ["both", "graph", "table", "sandwich"];

const fmtInt = { format: formatInt };  // lazyintl.js: no Intl before the first graph

// Test and debugging hook: what the page last drew and whether it is settled.
const hook = (window.podflame = {
  status: "loading", lastRender: null, targets: [], renders: 0, chart: null, diff: null, drawnAt: null, paintedAt: null, wholeAt: null, loading: [],
  rerender() { draw(); return hook.lastRender; },
});

// ---- state <-> URL hash ------------------------------------------------------------------------

const state = {
  query: config.initial.query || "", from: config.initial.from || "now-15m", to: config.initial.to || "now",
  vfrom: null, vto: null,  // the chart's range when a drag chose a sub-range [from, to) of it
  sel: null,  // labels identifying the selected pod/cgroup, e.g. {"cgroup": "/system.slice/x.service"}
  cmp: "",    // compare mode: "", "prev", "yday" or "custom" (bfrom, bto, bq)
  bfrom: "", bto: "", bq: "",
  zoom: [],   // root-first frame names of the zoomed node
  search: "", refresh: false,
  view: "both", orient: "icicle", invert: false, color: "name",
  fn: "",     // the selected function (table row, outlined frames, the sandwich's subject)
  type: "",   // sample type ("": the server's default, CPU samples when present)
  group: "",  // a label to group the list and chart by ("": pods and cgroups)
};

const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
// What the URL means, and how a graph request is written, are boot.js's (inlined in the page's head,
// where it already asked for the first graph): the same functions here ask for the same URL.
const boot = window.podflameBoot;

// The hash is user input too (a link can say anything): boot.js keeps only well-formed values.
function readHash() {
  Object.assign(state, boot.readHash(location.hash, config.initial));
}

function hashParams() {
  const p = new URLSearchParams();
  if (state.query) p.set("q", state.query);
  p.set("from", state.from);
  p.set("to", state.to);
  if (state.vfrom) { p.set("vfrom", state.vfrom); p.set("vto", state.vto); }
  if (state.cmp) p.set("cmp", state.cmp);
  if (state.cmp === "custom") {
    p.set("bfrom", state.bfrom);
    p.set("bto", state.bto);
    if (state.bq) p.set("bq", state.bq);
  }
  if (state.sel) p.set("sel", JSON.stringify(state.sel));
  if (state.zoom.length) p.set("zoom", JSON.stringify(state.zoom));
  if (state.search) p.set("search", state.search);
  if (state.refresh) p.set("refresh", "1");
  if (state.view !== "both") p.set("view", state.view);
  if (state.orient === "flame") p.set("orient", "flame");
  if (state.invert) p.set("invert", "1");
  if (state.color !== "name") p.set("color", state.color);
  if (state.fn) p.set("fn", state.fn);
  if (state.type) p.set("type", state.type);
  if (state.group) p.set("group", state.group);
  return p;
}

let pushes = 0;  // history entries this page added (and not gone back over): "Back" has somewhere to go

function writeHash(push) {
  const url = "#" + hashParams().toString();
  updateShareLink();
  if (url === location.hash) return;
  if (push) { history.pushState(null, "", url); pushes += 1; } else history.replaceState(null, "", url);
}

// ---- API ---------------------------------------------------------------------------------------

class ApiError extends Error {}

const apiUrl = (path, params) => boot.apiUrl(API, path, params);

// `params.format` "binary": the answer is web/query/treebin.py's, read by treebin.js.
// `early`: boot.js's request for this very URL, already under way (its answer is used instead of asking again).
// `onHeaders`: called when the answer starts to arrive (the server has built it).
async function getJSON(path, params, signal, early = null, onHeaders = null) {
  const url = apiUrl(path, params), init = { signal, headers: { Accept: "application/json" } };
  let resp, body = null, read = null;
  try {
    if (early) {
      signal.addEventListener("abort", () => early.ctl.abort());
      const got = await early.answer;
      if (got.resp.status === 401) resp = await fetchWithLogin(url, init, API, Promise.resolve(got.resp));
      else ({ resp, body: read } = got);
    } else {
      resp = await fetchWithLogin(url, init, API);
    }
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`cannot reach the server (${e.message}). Check that it is running and reachable, then reload.`);
  }
  if (onHeaders) onHeaders();
  const binary = params.format === "binary" && resp.ok;  // errors are JSON whatever was asked for
  if (read) body = await read;
  else { try { body = await (binary ? resp.arrayBuffer() : resp.json()); } catch { /* reported below */ } }
  if (!resp.ok) {
    const why = body && typeof body.error === "string" ? body.error : `HTTP ${resp.status} ${resp.statusText}`;
    // Said once however many requests hit it (the same bad selector fails the list, chart and graph),
    // with what to do about it.
    // a baseline's parameter (base_query, base_from, base_to) is in the compare form, not the selector field
    const todo = resp.status === 400
      ? (/^bad base_/.test(why) ? " Fix it in the \u201cCompare with\u201d form and apply again."
        : " Fix it in the field above and apply again.")
      : resp.status === 413 ? " Narrow the range or the selector." : resp.status === 404 ? ""
        : resp.status === 401 ? " Reload the page to enter the read token again (a line of the server's --read-token-file)."
          : resp.status === 403 ? " The server does not serve this Host or origin (its --allowed-hosts, --allowed-origins)."
            : " The server failed: try again, and see its log if it persists.";
    throw new ApiError((/[.!?]$/.test(why) || !todo ? why : why + ".") + todo);
  }
  if (body === null) throw new ApiError(`the server did not answer JSON (${path}); is a proxy in the way?`);
  if (!binary) return body;
  try { return decodeTree(body); } catch (e) { throw new ApiError(`${e.message} (${path}); is a proxy in the way?`); }
}

const quote = boot.quote;
const selectionQuery = () => boot.selectionQuery(state.query, state.sel);

// ---- messages ----------------------------------------------------------------------------------

const messages = new Map();  // source -> text

function setMessage(source, text) {
  if (text) messages.set(source, text); else messages.delete(source);
  const unique = [...new Set(messages.values())];
  const parts = unique.map((t) => {
    const p = document.createElement("p");
    p.textContent = t;
    return p;
  });
  // A way back to the view before the one that failed (the page's own history entry), besides fixing it.
  if (parts.length && pushes > 0) {
    const back = document.createElement("button");
    back.type = "button";
    back.className = "message-back";
    back.textContent = "Back to the previous view";
    back.addEventListener("click", () => history.back());
    parts.push(back);
  }
  els.message.replaceChildren(...parts);
  els.message.hidden = unique.length === 0;
}

// ---- the pod / cgroup list ---------------------------------------------------------------------

function selKey(sel) {
  return sel ? JSON.stringify(Object.keys(sel).sort().map((k) => [k, sel[k]])) : "";
}

// One row per pod container (pod_uid + container_id) when the labels have them, else per cgroup.
function groupSeries(series) {
  const groups = new Map();
  for (const s of series) {
    const l = s.labels || {};
    let sel, kind;
    if (state.group) {
      sel = { [state.group]: l[state.group] ?? "" };
      kind = "label";
    } else if (l.pod_uid) {
      sel = { pod_uid: l.pod_uid };
      if (l.container_id) sel.container_id = l.container_id;
      kind = "pod";
    } else {
      sel = { cgroup: l.cgroup || "" };
      kind = l.cgroup ? "cgroup" : "none";
    }
    const key = selKey(sel);
    let g = groups.get(key);
    if (!g) {
      g = { key, sel, kind, labels: l, value: 0, cpuSeconds: 0, cpuShare: 0, cpu: true, comms: new Map() };
      groups.set(key, g);
    }
    g.value += s.value || 0;
    if (s.cpu_share === null || s.cpu_share === undefined) g.cpu = false;
    else { g.cpuShare += s.cpu_share; g.cpuSeconds += s.cpu_seconds || 0; }
    if (l.comm) g.comms.set(l.comm, (g.comms.get(l.comm) || 0) + (s.value || 0));
  }
  // Pods and cgroups by CPU time, as the shares read: samples weigh differently at different periods (a pushed
  // 100 Hz profile beside the agent's 19 Hz). A label's values keep the chart's order (by value).
  const list = [...groups.values()];
  const byCpu = !state.group && list.every((g) => g.cpu);
  for (const g of list) g.weight = byCpu ? g.cpuSeconds : g.value;
  return list.sort((a, b) => b.weight - a.weight || b.value - a.value || a.key.localeCompare(b.key));
}

function shortId(id) { return id.length > 12 ? id.slice(0, 12) : id; }

function lastPart(path) {
  const parts = path.split("/").filter(Boolean);
  return parts.length ? parts[parts.length - 1] : path || "/";
}

function describeGroup(g) {
  const l = g.labels;
  if (g.kind === "pod") {
    const container = l.container || (g.sel.container_id ? shortId(g.sel.container_id) : "");
    return {
      name: l.pod ? (l.namespace ? `${l.namespace}/${l.pod}` : l.pod) : `pod ${l.pod_uid}`,
      detail: [container ? `container ${container}` : "", l.qos || "", l.runtime || ""]
        .filter(Boolean).join(" \u00b7 "),
      title: [l.pod ? (l.namespace ? `${l.namespace}/${l.pod}` : l.pod) : "", `pod_uid ${l.pod_uid}`, g.sel.container_id ? `container_id ${g.sel.container_id}` : "", l.cgroup || ""]
        .filter(Boolean).join("\n"),
    };
  }
  if (g.kind === "cgroup") {
    // "cgroup-id:N": the agent's name for a cgroup removed before its path was read (no parent to show)
    if (!l.cgroup.startsWith("/")) return { name: l.cgroup, detail: "cgroup removed before its path was read", title: l.cgroup };
    if (l.cgroup === "/") return { name: "/", detail: "root cgroup: processes outside any service or pod", title: l.cgroup };
    const parent = l.cgroup.slice(0, Math.max(1, l.cgroup.length - lastPart(l.cgroup).length - 1));
    return { name: lastPart(l.cgroup), detail: parent, title: l.cgroup };
  }
  if (g.kind === "label") {
    const v = g.sel[state.group];
    return { name: v === "" ? `(no ${state.group} label)` : v, detail: "", title: `${state.group}=${v}` };
  }
  return { name: "(no pod or cgroup label)", wrap: true, detail: "pushed profiles: group by one of their labels above",
    title: "Profiles without pod_uid or cgroup labels (pushed pprof, for one): the list above can group by any label" };
}

function formatShare(g, unit) {
  if (g.cpu) {
    const pct = g.cpuShare * 100;
    return { text: (pct >= 10 ? pct.toFixed(1) : pct.toPrecision(2)) + "%", title: `${g.cpuShare.toFixed(3)} cores on average, ${g.cpuSeconds.toFixed(2)} s CPU` };
  }
  return { text: formatValue(g.value, unit.type, unit.unit), title: "" };
}

function targetRow(g, max, unit, selected) {
  const li = document.createElement("li");
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "target" + (g.key === "" ? " target-all" : "") + (g.describe.wrap ? " target-wrap" : "");
  btn.setAttribute("aria-pressed", selected ? "true" : "false");
  btn.dataset.key = g.key;
  const d = g.describe;
  if (d.title) btn.title = d.title;

  const name = document.createElement("span");
  name.className = "t-name";
  name.textContent = name.dataset.name = d.name;
  const share = formatShare(g, unit);
  const value = document.createElement("span");
  value.className = "t-share";
  value.textContent = share.text;
  if (share.title) value.title = share.title;
  const bar = document.createElement("span");
  bar.className = "t-bar";
  const fill = document.createElement("span");
  fill.className = "t-fill";
  fill.style.width = (max > 0 ? (100 * g.weight) / max : 0).toFixed(2) + "%";
  bar.append(fill);
  btn.append(name, value, bar);
  const detailText = [d.detail, g.comms && g.comms.size
    ? "comm: " + [...g.comms.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([c]) => c).join(", ")
      + (g.comms.size > 3 ? ` +${g.comms.size - 3}` : "")
    : ""].filter(Boolean);
  for (const t of detailText) {
    const s = document.createElement("span");
    s.className = "t-detail";
    s.textContent = t;
    btn.append(s);
  }
  if (g.kind === "other") {
    btn.classList.add("target-other");
    btn.addEventListener("click", () => { expandedGroup = state.group; renderTargets(lastTargets); });
  } else {
    btn.addEventListener("click", () => select(g.key === "" ? null : g.sel));
  }
  li.append(btn);
  return li;
}

let lastGroups = [];
let lastTargets = null;  // the last /series answer, to draw the list again when "other" is unfolded
let expandedGroup = "";  // the label whose folded values the user listed
const OTHER_KEY = "\u0000other";
let described = new Map();  // group key -> {name, detail} of the last list, for the flame graph title

function renderTargets(resp) {
  const unit = { type: resp.type, unit: resp.unit };
  const cpu = isCpuType(resp.type, resp.unit) || resp.type === "cpu";
  els.targetsTitle.firstChild.textContent = state.group ? `By ${state.group} ` : "Pods and cgroups ";
  els.targetsNote.textContent = cpu ? "CPU as % of one core, averaged over the range"
    : `${resp.type} in ${unitWordOf(resp.type, resp.unit)}, summed over the range`;
  const groups = groupSeries(resp.series || []);
  lastGroups = groups;
  hook.targets = groups.map((g) => ({ key: g.key, sel: g.sel, value: g.value, cpuShare: g.cpu ? g.cpuShare : null }));
  const currentKey = selKey(state.sel);
  for (const g of groups) g.describe = describeGroup(g);
  described = new Map(groups.map((g) => [g.key, g.describe]));
  if (state.sel) setFlameTitle();  // the selection's name as the list describes it
  const all = {
    key: "", sel: null, kind: "all", value: groups.reduce((a, g) => a + g.value, 0),
    weight: groups.reduce((a, g) => a + g.weight, 0),
    cpu: groups.every((g) => g.cpu), cpuShare: groups.reduce((a, g) => a + g.cpuShare, 0),
    cpuSeconds: groups.reduce((a, g) => a + g.cpuSeconds, 0), comms: null,
    describe: { name: "All matching the selector", detail: "", title: "" },
  };
  const max = groups.length ? groups[0].weight : 0;
  const rows = [];
  if (groups.length) rows.push(targetRow(all, all.weight, unit, currentKey === ""));
  // Grouped by a label: the top values as the chart draws them, the rest folded into one "other" row
  // (a click lists them all; a selected value among them is listed).
  lastTargets = resp;
  const fold = state.group && groups.length > TOP_GROUPS + 1 && expandedGroup !== state.group &&
    !groups.slice(TOP_GROUPS).some((g) => g.key === currentKey);
  const shown = fold ? groups.slice(0, TOP_GROUPS) : groups;
  for (const g of shown) rows.push(targetRow(g, max, unit, g.key === currentKey));
  if (fold) {
    const rest = groups.slice(TOP_GROUPS);
    const sum = (f) => rest.reduce((a, g) => a + f(g), 0);
    const other = {
      key: OTHER_KEY, sel: null, kind: "other", value: sum((g) => g.value), weight: sum((g) => g.weight),
      cpu: rest.every((g) => g.cpu),
      cpuShare: sum((g) => g.cpuShare), cpuSeconds: sum((g) => g.cpuSeconds), comms: null,
      describe: { name: `other (${rest.length} values)`, detail: "", title: `The ${rest.length} smaller values of ${state.group}: click to list them` },
    };
    rows.push(targetRow(other, max, unit, false));
  }
  hook.targetRows = [...(groups.length ? [all] : []), ...shown].map((g) => ({ name: g.describe.name, value: g.value }));
  if (fold) hook.targetRows.push({ name: `other (${groups.length - TOP_GROUPS} values)`, value: groups.slice(TOP_GROUPS).reduce((a, g) => a + g.value, 0) });
  els.targets.replaceChildren(...rows);
  fitTargetNames();
  els.targetsCount.textContent = groups.length ? `(${groups.length})` : "";
  els.targetsEmpty.hidden = groups.length > 0;
  els.targetsEmpty.textContent = groups.length ? "" : "No samples in this range for this selector.";
  if (typeof resp.from === "number" && typeof resp.to === "number") {
    els.rangeText.textContent = rangeText(resp.from, resp.to);
    els.rangeText.title = `${rangeFormat.format(new Date(resp.from * 1000))} \u2013 ${rangeFormat.format(new Date(resp.to * 1000))}`;
  }
}

// One formatter for every answer (toLocaleString with options builds a new one per call: ~15 ms each).
const rangeFormat = lazyIntl(() => new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium", hourCycle: "h23" }));
const dayFormat = lazyIntl(() => new Intl.DateTimeFormat(undefined, { dateStyle: "short" }));
const clockFormat = lazyIntl(() => new Intl.DateTimeFormat(undefined, { timeStyle: "medium", hourCycle: "h23" }));

// "12/6/26, 15:26:03 – 15:41:03" when both ends fall on one day (the date once: the bar stays one line at
// 1280 px), else both in full.
function rangeText(from, to) {
  const a = new Date(from * 1000), b = new Date(to * 1000);
  if (dayFormat.format(a) === dayFormat.format(b)) return `${rangeFormat.format(a)} \u2013 ${clockFormat.format(b)}`;
  return `${rangeFormat.format(a)} \u2013 ${rangeFormat.format(b)}`;
}

// Names wider than the list's column cut in their middle, so replicas that differ only at the end
// ("checkout-7d9f8b5c6d-x2x4q", "-k8m2p") stay tellable apart; the full name is the row's tooltip.
const measure = document.createElement("canvas").getContext("2d");
function fitTargetNames() {
  for (const el of els.targets.querySelectorAll(".t-name")) {
    const full = el.dataset.name || "";
    el.textContent = full;
    const width = el.clientWidth;
    if (!width || el.scrollWidth <= width + 1 || el.closest(".target-wrap")) continue;
    measure.font = getComputedStyle(el).font;
    let lo = 4, hi = full.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (measure.measureText(elideMiddle(full, mid)).width <= width - 1) lo = mid; else hi = mid - 1;
    }
    el.textContent = elideMiddle(full, lo);
  }
}
let lastTargetsWidth = 0;
new ResizeObserver(() => {
  const w = els.targets.clientWidth;
  if (w && w !== lastTargetsWidth) { lastTargetsWidth = w; fitTargetNames(); }
}).observe(els.targets);

function markSelected() {
  const key = selKey(state.sel);
  for (const b of els.targets.querySelectorAll("button.target")) {
    b.setAttribute("aria-pressed", b.dataset.key === key ? "true" : "false");
  }
}

// ---- flame graph -------------------------------------------------------------------------------

const flame = (hook.flame = new FlameGraph(els.canvas, els.tooltip, {
  onZoom(path) {
    state.zoom = path;
    writeHash(false);
    afterRender();
  },
  onPick(name) { if (name !== null) selectFunction(name, false); },
}));
flame.fadeOthers = true;
// The sandwich's two halves: callers above the function (root at the bottom), callees below it.
const callersGraph = new FlameGraph(els.callers, els.tooltip, { onPick: (name) => { if (name !== null) selectFunction(name, false); } });
const calleesGraph = new FlameGraph(els.callees, els.tooltip, { onPick: (name) => { if (name !== null) selectFunction(name, false); } });
callersGraph.orientation = "flame";
let source = flame;     // the graph of the payload as the server sent it (the table's data)
let payload = null;     // the last flame-graph / diff payload
const fmtCompact = lazyIntl(() => new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 }));
const timeOrBytes = () => currentUnit === "bytes" || currentUnit === "nanoseconds";
const table = new FunctionTable(els.fnRows, {
  format: (v) => (timeOrBytes() ? fmtValue(v) : fmtInt.format(v)),
  formatCompact: (v) => (timeOrBytes() ? fmtValue(v) : fmtCompact.format(v)),
  onHover(name) { flame.setHighlight(name === null ? (state.fn || null) : name); hook.lastRender = flame.lastRender; },
  onSelect(name) { selectFunction(name, true); },
});

function selectionLabel() {
  if (!state.sel) return "all matching the selector";
  const d = state.sel.pod_uid && described.get(selKey(state.sel));
  if (d) return d.detail ? `${d.name}, ${d.detail.split(" \u00b7 ")[0]}` : d.name;
  if (state.sel.pod_uid) {
    return `pod ${state.sel.pod_uid}` + (state.sel.container_id ? ` / container ${shortId(state.sel.container_id)}` : "");
  }
  return state.sel.cgroup ? `cgroup ${state.sel.cgroup}` : "no cgroup label";
}

let currentUnit = "count", currentType = "samples";
const unitWord = (unit, type = currentType) => unitWordOf(type, unit);
const fmtValue = (v, unit = currentUnit, type = currentType) => formatValue(v, type, unit);

function meta(fg) {
  return { unit: fg.unit, type: fg.type, period_ns: fg.period_ns, locations: fg.locations, kinds: fg.kinds, modules: fg.modules };
}

// `preview`: fg is a preview answer (drawn as is; the table, its count and the pane's dimming wait for the whole
// tree, which loadFlame asks for next).
// The graph's title: what kind of graph (a diff's stays a diff when the list answers later) of what selection;
// in full on hover when the title line cuts it.
function setFlameTitle() {
  const diff = !!(payload && typeof payload.base_total === "number");
  els.flameTitle.textContent = (diff ? "Diff: " : state.invert ? "Bottom-up (inverted): " : "Flame graph: ") +
    selectionLabel();
  els.flameTitle.title = els.flameTitle.textContent;
}

function renderFlame(fg, preview = false) {
  payload = fg;
  currentUnit = fg.unit || "count";
  currentType = fg.type || "samples";
  const diff = typeof fg.base_total === "number";
  source = flame;
  if (!diff && state.invert && fg.total) {
    source = new FlameGraph(document.createElement("canvas"), els.tooltip);
    source.setData(fg);
    flame.setData(invertedPayload(source, meta(fg)));
  } else {
    flame.setData(fg);
  }
  performance.mark("pf:flame-data");
  flame.zoomToPath(state.zoom);
  flame.setSearch(state.search, false);
  flame.orientation = state.orient;
  flame.colorBy = state.color;
  flame.modulePalette = null;
  flame.highlight = state.fn ? flame.nameIndex(state.fn) : -1;
  const empty = !fg.total;
  els.flameEmpty.hidden = !empty;
  els.flameEmpty.textContent = !empty ? ""
    : diff ? "No samples in either range for this selection." : "No samples in this range for this selection.";
  els.flameBody.hidden = empty;
  els.downloads.hidden = false;
  setFlameTitle();
  const unit = unitWord(fg.unit);
  if (diff) {
    els.flameSummary.textContent =
      `baseline ${fmtValue(fg.base_total, fg.unit, fg.type)} \u00b7 comparison ${fmtValue(fg.comp_total, fg.unit, fg.type)}`;
  } else {
    let summary = fmtValue(fg.total || 0);
    if (isCpuType(fg.type, fg.unit) && fg.period_ns) {
      summary += ` \u00b7 ${((fg.total * fg.period_ns) / 1e9).toFixed(2)} s CPU`;
    }
    // The type's name unless the summary already says it ("800 samples", not "800 samples · samples").
    if (fg.type && !summary.toLowerCase().includes(fg.type.toLowerCase())) summary += ` \u00b7 ${fg.type}`;
    if (fg.folded_nodes) summary += ` \u00b7 ${fmtInt.format(fg.folded_nodes)} small frames folded into [other]`;
    els.flameSummary.textContent = summary;
  }
  els.flameSummary.title = els.flameSummary.textContent;  // in full when the title line cuts it
  if (fg !== payloadWithAllRows) diffAllRows = false;
  payloadWithAllRows = fg;
  renderDiffExtras(diff ? fg : null);
  applyView();
  downloadLinks();
  draw();
  if (preview) {
    table.setRows([], 0);
    els.fnCount.textContent = "reading all functions\u2026";
    markStale("flame", false);
    els.tableWrap.classList.add("stale");
    return Promise.resolve();
  }
  els.tableWrap.classList.remove("stale");
  if (hook.wholeAt === null) hook.wholeAt = performance.now();
  // The function table once the graph is on screen: for 100k functions its totals and rows are ~100 ms the
  // graph need not wait for. The load that asked for this graph settles after the table is filled.
  return new Promise((resolve) => setTimeout(() => {
    if (payload === fg) fillTable(empty || diff);
    resolve();
  }, 0));
}

function fillTable(none) {
  table.setRows(none ? [] : functionTotals(source), source.data ? source.data.total : 0);
  els.fnCount.textContent = none ? "" : `${table.matching} functions \u00b7 ${unitWord(currentUnit)}`;
  table.select(state.fn || null, false);
}

// Which panes the view shows; the table and sandwich have no meaning for a diff (its tables do that).
function applyView() {
  const diff = !!(payload && typeof payload.base_total === "number");
  const view = diff && state.view !== "graph" ? "graph" : state.view;
  for (const v of VIEWS) els.flameBody.classList.toggle("view-" + v, v === view);
  els.tableWrap.hidden = view === "graph" || view === "sandwich";
  els.flameWrap.hidden = view === "table" || view === "sandwich";
  els.sandwich.hidden = view !== "sandwich";
  els.invert.disabled = diff;
  els.view.disabled = diff;
  // A comparison is its graph and its tables: the picker says so instead of a view it does not show.
  els.view.value = view;
  els.view.title = diff ? "A comparison shows its graph, with its tables above it" : "View";
  renderLegend(diff);
}

function renderLegend(diff) {
  const items = [];
  const swatch = (color, text) => {
    const span = document.createElement("span");
    span.className = "legend-item";
    const box = document.createElement("span");
    box.className = "swatch";
    box.style.background = color;  // CSSOM property: allowed under style-src 'self'
    const label = document.createElement("span");
    label.textContent = text;
    span.append(box, label);
    return span;
  };
  if (diff) {
    items.push(swatch("hsl(2 78% 60%)", "larger share in the comparison"), swatch("hsl(214 72% 60%)", "smaller share"),
      swatch("hsl(30 8% 84%)", "unchanged (each side as a share of its total)"));
  } else if (state.color === "kind" && flame.data) {
    const present = new Set(flame.data.kinds.filter(Boolean));
    for (const [k, c] of Object.entries(KIND_COLORS)) if (present.has(k) || k === "unknown" && !present.size) items.push(swatch(c, k));
  } else if (state.color === "module" && flame.data) {
    const weight = new Map();
    const lv = flame.data.levels[1];
    if (lv) for (let i = 0; i < lv.n; i++) weight.set(flame.moduleOf(lv.name[i]), (weight.get(flame.moduleOf(lv.name[i])) || 0) + lv.total[i]);
    for (let d = 2; d < flame.data.levels.length; d++) {
      const l = flame.data.levels[d];
      for (let i = 0; i < l.n; i++) weight.set(flame.moduleOf(l.name[i]), (weight.get(flame.moduleOf(l.name[i])) || 0) + l.self[i]);
    }
    const top = [...weight.entries()].filter(([m]) => m).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 10);
    const palette = new Map(top.map(([m], k) => [m, MODULE_PALETTE[k]]));
    flame.modulePalette = callersGraph.modulePalette = calleesGraph.modulePalette = palette;
    for (const [m] of top) items.push(swatch(palette.get(m), m));
  }
  const hint = document.createElement("span");
  hint.className = "muted";
  hint.textContent = (state.orient === "flame" ? "root at the bottom" : "root at top") +
    " \u00b7 width = share of " + (unitWord(currentUnit) || "samples") + " \u00b7 click a frame to zoom, arrows move, Esc zooms out";
  els.legend.replaceChildren(...items, hint);
  els.legend.hidden = false;
}

function selectFunction(name, fromTable) {
  state.fn = name || "";
  writeHash(false);
  table.select(state.fn || null, !fromTable);
  flame.setHighlight(state.fn || null);
  if (state.view === "sandwich") drawSandwich();
  afterRender();
}

function drawSandwich() {
  const f = state.fn && source.data ? source.nameIndex(state.fn) : -1;
  els.sandwichEmpty.hidden = f >= 0;
  els.callersTitle.hidden = els.calleesTitle.hidden = f < 0;
  if (f < 0) {
    callersGraph.setData({ names: [], levels: [], total: 0 });
    calleesGraph.setData({ names: [], levels: [], total: 0 });
  } else {
    const { callers, callees } = sandwichPayloads(source, f, meta(payload));
    callersGraph.setData(callers);
    calleesGraph.setData(callees);
    callersGraph.highlight = calleesGraph.highlight = f;
    els.callersTitle.textContent = `Callers of ${state.fn} (who calls it, root at the bottom)`;
    els.calleesTitle.textContent = `Callees of ${state.fn} (what it calls)`;
  }
  const w = els.sandwich.clientWidth;
  for (const g of [callersGraph, calleesGraph]) { g.colorBy = state.color; g.render(w); }
  hook.sandwich = f < 0 ? null : { callers: callersGraph.lastRender, callees: calleesGraph.lastRender };
}

function searchFor(name) {  // a diff table's function: selected (outlined), the diff colours stay
  selectFunction(name, false);
}

let diffAllRows = false, payloadWithAllRows = null;  // "show all" was clicked (for this diff)

// The notes and tables beside a diff flame graph; null clears them.
const diffRowsFor = (h) => (h < 760 ? 3 : h < 1000 ? 4 : 8);
// Under this window height the tables start folded into their summary line (which names the top regression
// and improvement): open, even three rows each left the diff graph four rows at 1280x720.
const DIFF_OPEN_MIN_HEIGHT = 800;
let diffOpenChoice = null;  // the user's own open / fold of the tables: kept for every comparison after
const diffOpenFor = (h) => (diffOpenChoice === null ? h >= DIFF_OPEN_MIN_HEIGHT : diffOpenChoice);
els.diffDetails.querySelector("summary").addEventListener("click", () => { diffOpenChoice = !els.diffDetails.open; });
let diffExtrasShown = null;  // {fg, shown}: what the tables list now
// A window made shorter or taller lists as many rows as it would have on load (the graph stays on screen).
window.addEventListener("resize", () => {
  const d = diffExtrasShown, h = window.innerHeight;
  if (d && d.fg && ((!diffAllRows && d.shown !== diffRowsFor(h)) || els.diffDetails.open !== diffOpenFor(h))) {
    renderDiffExtras(d.fg);
  }
});

// The folded tables' summary: the largest regression and improvement, names cut in the middle.
function diffPeek(reg, imp) {
  const parts = [];
  for (const [r, cls] of [[reg[0], "more"], [imp[0], "less"]]) {
    if (!r) continue;
    const name = document.createElement("span");
    name.className = "peek-name";
    name.textContent = elideMiddle(String(r.name), 32);
    name.title = String(r.name);
    const change = document.createElement("span");
    change.className = "peek-change " + cls;
    change.textContent = formatPoints(r.change);
    parts.push(name, change);
  }
  return parts;
}

function renderDiffExtras(fg) {
  els.diffDetails.hidden = !fg;
  const notes = [];
  if (fg && !fg.base_total && fg.comp_total) notes.push("No samples in the baseline range: every frame shows as new.");
  if (fg && fg.base_total && !fg.comp_total) notes.push("No samples in the comparison range: every frame shows as gone.");
  els.diffNote.textContent = notes.join(" ");
  els.diffNote.hidden = !notes.length;
  hook.diff = fg && {
    base_total: fg.base_total, comp_total: fg.comp_total,
    regressions: (fg.regressions || []).map((r) => r.name), improvements: (fg.improvements || []).map((r) => r.name),
  };
  if (!fg) { els.diffTables.replaceChildren(); diffExtrasShown = null; return; }
  const unit = unitWord(fg.unit), reg = fg.regressions || [], imp = fg.improvements || [];
  const parts = [];
  // Side by side and a few rows each (more on a taller screen), so graph and tables are all on screen at
  // 1280x720; "show all" lists the rest.
  const shown = diffAllRows ? Infinity : diffRowsFor(window.innerHeight);
  diffExtrasShown = { fg, shown };
  const more = () => { diffAllRows = true; renderDiffExtras(fg); };
  const flat = (v) => (fg.unit === "bytes" || fg.unit === "nanoseconds" ? fmtValue(v, fg.unit, fg.type) : fmtInt.format(v));
  if (reg.length) parts.push(diffTable("Top regressions: more in the comparison", reg, unit, searchFor, shown, more, flat));
  if (imp.length) parts.push(diffTable("Top improvements: less in the comparison", imp, unit, searchFor, shown, more, flat));
  if (!parts.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = !fg.base_total || !fg.comp_total ? "Nothing to compare: one of the ranges has no samples."
      : "No significant regressions or improvements.";
    parts.push(p);
  }
  els.diffTables.replaceChildren(...parts);
  fitDiffNames(els.diffTables);
  els.diffSummary.textContent = `Top regressions (${reg.length}) and improvements (${imp.length})`;
  els.diffPeek.replaceChildren(...diffPeek(reg, imp));
  els.diffDetails.open = diffOpenFor(window.innerHeight);
  els.diffRule.textContent = ruleText(fg.rule, fg.unit, unit);
}

function draw() {
  if (!els.flameWrap.hidden) flame.render(els.flameWrap.clientWidth);
  else flame.render(els.flameBody.clientWidth || 800);
  if (state.view === "sandwich" && !els.sandwich.hidden) drawSandwich();
  afterRender();
}

let matchAt = -1;  // which match "next" / "previous" last went to

function stepMatch(delta) {
  const list = flame.matchList();
  if (!list.length) return;
  matchAt = (matchAt + delta + list.length) % list.length;
  const { d, i } = list[matchAt];
  flame.focus = { d, i };
  flame.zoomTo(d, i);
}

function afterRender() {
  hook.lastRender = flame.lastRender;
  hook.renders += 1;
  // When the first graph was on screen, in ms since navigation started (bench/ui.py reads it).
  if (hook.drawnAt === null && flame.lastRender && flame.lastRender.frames) {
    hook.drawnAt = performance.now();
    performance.mark("pf:drawn");
    // The frame that shows it produced (the canvas rastered): a task after the next animation frame's callbacks.
    requestAnimationFrame(() => setTimeout(() => { hook.paintedAt = performance.now(); performance.mark("pf:painted"); }));
  }
  els.zoomOut.disabled = !flame.isZoomed();
  els.searchResult.classList.toggle("error", !!flame.searchError);
  const stats = flame.searchError ? null : flame.searchStats();
  const list = stats ? flame.matchList() : [];
  els.searchPrev.disabled = els.searchNext.disabled = list.length === 0;
  els.searchNext.title = list.length ? `Next of ${list.length} matching frames` : "Next match";
  if (flame.searchError) els.searchResult.textContent = flame.searchError;
  else if (!stats) els.searchResult.textContent = "";
  else {
    const side = flame.data && flame.data.diff ? " (both ranges, each normalized)" : "";
    let t = `${formatPercent(stats.matched, stats.total)} of total${side}`;
    if (flame.isZoomed()) t += `, ${formatPercent(stats.inView, stats.viewTotal)} of zoomed`;
    els.searchResult.textContent = t;
  }
  // In full on hover when the toolbar cuts it (one line at 1280 px leaves it ~100 px, two lines of small text).
  els.searchResult.title = stats ? `Samples under frames matching the search: ${els.searchResult.textContent}`
    : els.searchResult.textContent;
  hook.search = { error: flame.searchError, stats, matches: list.length };
}

// ---- compare -----------------------------------------------------------------------------------

// The baseline of the current compare mode: {query, from, to}, {error} or null (not comparing).
function baseline() {
  if (!state.cmp) return null;
  const r = baselineRange(state.cmp, state.from, state.to, { from: state.bfrom, to: state.bto });
  if (r.error) return r;
  return { ...r, query: state.cmp === "custom" && state.bq.trim() ? state.bq.trim() : selectionQuery() };
}

const baseParams = (b) => ({ base_query: b.query, base_from: b.from, base_to: b.to });

function describeRange(from, to) {
  const f = parseTime(from), t = parseTime(to);
  if (!f || !t) return `${from} \u2013 ${to}`;
  const now = Date.now() / 1000;
  const fmt = (s) => new Date(s * 1000).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium", hourCycle: "h23" });
  return `${fmt(toSeconds(f, now))} \u2013 ${fmt(toSeconds(t, now))}`;
}

// The absolute range on screen: what the server resolved for the last graph (so a download or a
// shared file is what was looked at, not what "now-15m" means when it is clicked).
function shownRange() {
  if (payload && typeof payload.from === "number" && typeof payload.to === "number") {
    return { from: String(payload.from), to: String(payload.to) };
  }
  const abs = secondsOf(state.from, state.to);
  return abs ? { from: String(abs[0]), to: String(abs[1]) } : { from: state.from, to: state.to };
}

const slug = (text) => text.replace(/[^A-Za-z0-9_.=-]+/g, "_").replace(/^_+|_+$/g, "").slice(0, 60);

// "sel_namespace=shop-20261206T041500Z-20261206T043000Z": selector and range, so downloads differ.
function downloadStem() {
  const r = shownRange();
  const iso = (t) => {
    const n = Number(t);
    return Number.isFinite(n) ? new Date(n * 1000).toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z") : slug(t);
  };
  const sel = slug(Object.values(state.sel || {}).map((v) => lastPart(String(v))).join("_") || selectionQuery() || "all");
  return `${sel || "all"}-${iso(r.from)}-${iso(r.to)}`;
}

// A link to what is on screen: the state with the range (and the chart's range) as the absolute times
// the server resolved, and no auto refresh, so opened later it shows the same data however much arrived since.
function shareUrl() {
  const p = hashParams(), r = shownRange();
  p.set("from", r.from);
  p.set("to", r.to);
  if (state.vfrom && chart.data && typeof chart.data.from === "number") {
    p.set("vfrom", String(chart.data.from));
    p.set("vto", String(chart.data.to));
  }
  if (state.cmp === "custom") {
    const abs = secondsOf(state.bfrom, state.bto);
    if (abs) { p.set("bfrom", String(abs[0])); p.set("bto", String(abs[1])); }
  }
  p.delete("refresh");
  return `${location.origin}${location.pathname}${location.search}#${p.toString()}`;
}

let shareReady = false;  // set once the chart exists (the link reads its resolved range)
function updateShareLink() {
  if (shareReady) els.shareLink.href = hook.shareUrl = shareUrl();
}

function downloadLinks() {
  const r = shownRange();
  hook.shown = r;
  updateShareLink();
  const params = { query: selectionQuery(), from: r.from, to: r.to };
  if (state.type || (payload && payload.type)) params.type = state.type || payload.type;
  const stem = downloadStem();
  const link = (a, path, extra, name) => {
    a.href = apiUrl(path, { ...params, ...extra });
    a.setAttribute("download", `podflame-${stem}${name}`);
  };
  // pprof and speedscope answer with a Content-Disposition name, which browsers prefer to `download`: asked for
  link(els.dlPprof, "pprof", { filename: `podflame-${stem}.pb.gz` }, ".pb.gz");
  link(els.dlFolded, "folded", {}, ".folded.txt");
  link(els.dlSpeedscope, "speedscope", { filename: `podflame-${stem}.speedscope.json` }, ".speedscope.json");
  const base = baseline();
  els.dlFoldedDiff.hidden = !base || !!base.error;
  if (base && !base.error) {
    const abs = secondsOf(base.from, base.to);
    const b = abs ? { ...base, from: String(abs[0]), to: String(abs[1]) } : base;
    link(els.dlFoldedDiff, "folded", baseParams(b), ".diff.folded.txt");
  }
  els.baseText.textContent = !base ? "" : base.error ? "" : `baseline: ${describeRange(base.from, base.to)}`;
}

// ---- CPU chart ---------------------------------------------------------------------------------

const chart = new CpuChart(els.chart, els.tooltip, {
  onSelect(from, to) {  // a drag: the sub-range [from, to) of the chart's range
    const view = chartRange();
    state.vfrom = view.from;
    state.vto = view.to;
    state.from = formatTime({ abs: from });
    state.to = formatTime({ abs: to });
    state.zoom = [];
    writeHash(true);
    syncControls();
    reloadAll();
  },
});

shareReady = true;

function chartRange() {
  return state.vfrom ? { from: state.vfrom, to: state.vto } : { from: state.from, to: state.to };
}

const STEPS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400, 604800];

// About one bar per 4 px (at most 240), at a round step; not under 10 s (the agent ships a profile
// every 10 s, so finer bars alternate between full and empty) unless the range is under a minute.
function chartStep(from, to) {
  const f = parseTime(from), t = parseTime(to);
  if (!f || !t) return undefined;  // the server says what is wrong with the range
  const now = Date.now() / 1000, span = toSeconds(t, now) - toSeconds(f, now);
  if (!(span > 0)) return undefined;
  const want = span / Math.min(240, Math.max(20, (els.chartWrap.clientWidth - 70) / 4));
  const floor = span >= 60 ? 10 : 0;
  return STEPS_S.find((s) => s >= Math.max(want, floor)) || STEPS_S[STEPS_S.length - 1];
}

const secondsOf = (from, to) => {
  const f = parseTime(from), t = parseTime(to), now = Date.now() / 1000;
  return f && t ? [toSeconds(f, now), toSeconds(t, now)] : null;
};

// What the chart marks besides its bars: the chosen sub-range and compare mode's baseline.
function chartMarks() {
  chart.setSelection(state.vfrom ? secondsOf(state.from, state.to) : null);
  const base = baseline();
  chart.setBaseline(base && !base.error ? secondsOf(base.from, base.to) : null);
}

function renderChart(resp, stack = null) {
  chart.setData(resp);
  chart.setStack(stack);
  updateShareLink();
  hook.chartSeries = stack ? stack.map((p) => ({ name: p.name, total: p.values.reduce((a, v) => a + v, 0) })) : null;
  chartMarks();
  const total = chart.total();
  els.chartEmpty.hidden = total > 0;
  els.chartEmpty.textContent = total ? "" : "No samples in the chart's range for this selection.";
  const cpu = isCpuType(resp.type, resp.unit) || resp.type === "cpu";
  els.chartTitle.textContent = (cpu ? "CPU: " : `${resp.type}: `) + selectionLabel() +
    (stack ? ` \u00b7 by ${state.group}` : "");
  let summary = "";
  if (Array.isArray(resp.cores) && resp.to > resp.from) {
    const avg = resp.cores.reduce((a, c) => a + c, 0) * resp.step / (resp.to - resp.from);
    const peak = Math.max(0, ...resp.cores);
    const pct = (c) => { const p = c * 100; return (p >= 10 ? p.toFixed(1) : p.toPrecision(2)) + "%"; };
    summary = `% of one core \u00b7 average ${pct(avg)}, peak ${pct(peak)} \u00b7 ${resp.step} s per bar`;
  } else {
    summary = `${unitWordOf(resp.type, resp.unit)} per ${resp.step} s`;
  }
  els.chartSummary.textContent = summary + " \u00b7 drag to choose a range";
  els.chartTitle.title = els.chartTitle.textContent;  // in full when the line cuts them
  els.chartSummary.title = els.chartSummary.textContent;
  els.chartWrap.hidden = false;
  drawChart();
}

function drawChart() {
  hook.chart = chart.render(els.chartWrap.clientWidth);
}

// ---- loading -----------------------------------------------------------------------------------

const inflight = { series: null, flame: null, chart: null, meta: null };

async function load(what, fn, onError) {
  inflight[what]?.abort();
  const ctl = (inflight[what] = new AbortController());
  markStale(what, true);
  try {
    await fn(ctl.signal);
    if (ctl.signal.aborted) return;
    setMessage(what, "");
  } catch (e) {
    if (e.name === "AbortError" || ctl.signal.aborted) return;
    setMessage(what, e instanceof ApiError ? `Error from the API: ${e.message}` : `Error: ${e.message}`);
    onError();
  } finally {
    if (inflight[what] === ctl) {
      inflight[what] = null;
      markStale(what, false);
    }
  }
}

// The selector with one more equality matcher (the label explorer, a group's value).
function withMatcher(query, name, value) {
  const q = query.trim();
  const m = `${name}=${quote(value)}`;
  if (!q) return `{${m}}`;
  const inner = q.startsWith("{") && q.endsWith("}") ? q.slice(1, -1).trim() : q;  // braces are optional
  return `{${inner ? inner + ", " : ""}${m}}`;
}

let seriesReady = null;  // the list's request: the grouped chart waits for its top values
async function topGroupValues(signal) {
  if (seriesReady) await seriesReady.catch(() => {});
  if (signal.aborted) return [];
  return lastGroups.slice(0, TOP_GROUPS).map((g) => g.sel[state.group]);
}

// Types and label names for the pickers; failures leave the pickers as they were (the list says why).
function loadMeta() {
  const params = { query: state.query, from: state.from, to: state.to };
  return load("meta", async (signal) => {
    const [types, labels] = await Promise.all([getJSON("types", params, signal), getJSON("labels", params, signal)]);
    if (signal.aborted) return;
    const opts = (types.types || []).map((t) => {
      const o = document.createElement("option");
      o.value = t.type;
      o.textContent = `${t.type} (${typeUnitLabel(t.type, t.unit)})`;
      return o;
    });
    if (state.type && !opts.some((o) => o.value === state.type)) {
      const o = document.createElement("option");
      o.value = state.type;
      o.textContent = `${state.type} (no data in range)`;
      opts.push(o);
    }
    els.type.replaceChildren(...opts);
    els.type.disabled = opts.length <= 1;
    els.type.value = state.type || (payload && payload.type) || (opts.find((o) => o.value === "samples") || opts[0] || {}).value || "";
    hook.types = (types.types || []).map((t) => t.type);
    const names = (labels.labels || []).filter((n) => LABEL_NAME.test(n));
    els.labelNames.replaceChildren(...names.map((n) => { const o = document.createElement("option"); o.value = n; return o; }));
    const keep = els.groupBy.firstElementChild;
    els.groupBy.replaceChildren(keep, ...names.map((n) => {
      const o = document.createElement("option");
      o.value = n;
      o.textContent = `by ${n}`;
      return o;
    }));
    if (state.group && !names.includes(state.group)) {
      const o = document.createElement("option");
      o.value = state.group;
      o.textContent = `by ${state.group}`;
      els.groupBy.append(o);
    }
    els.groupBy.value = state.group;
    hook.labels = names;
  }, () => {});
}

// What a type's values are, for the picker: "CPU time", "bytes", "objects", "count".
function typeUnitLabel(type, unit) {
  if (isCpuType(type, unit) || (type === "cpu" && unit === "nanoseconds")) return "CPU time";
  return unitWordOf(type, unit);
}

// Autocomplete asks the server for the first values starting with what was typed: a label such as `pid`
// has tens of thousands of values, too many to send and offer whole.
const LABEL_VALUES_OFFERED = 500;
let labelValuesAsked = 0, labelValueTimer = 0;

async function loadLabelValues(name, prefix = "") {
  if (!LABEL_NAME.test(name)) { els.labelValues.replaceChildren(); return; }
  const asked = ++labelValuesAsked;
  try {
    const r = await getJSON(`label/${encodeURIComponent(name)}/values`,
      { query: state.query, from: state.from, to: state.to, prefix, limit: LABEL_VALUES_OFFERED });
    if (asked !== labelValuesAsked) return;  // a later keystroke's answer replaces this one
    els.labelValues.replaceChildren(...(r.values || []).map((v) => {
      const o = document.createElement("option");
      o.value = v;
      return o;
    }));
    hook.labelValues = r.values || [];
  } catch (e) {
    setMessage("labels", `Could not list values of ${name}: ${e.message}`);
  }
}

function loadSeries() {
  return load("series", async (signal) => {
    const by = state.group ? state.group : GROUP_BY;
    const resp = await getJSON("series", { query: state.query, from: state.from, to: state.to, by, type: state.type },
      signal);
    if (!signal.aborted) renderTargets(resp);
  }, () => {
    els.targets.replaceChildren();
    hook.targets = [];
    els.targetsCount.textContent = "";
    els.targetsEmpty.textContent = FAILED("Nothing to list");
    els.targetsEmpty.hidden = false;
  });
}

// What a part shows when its request failed: why it is empty, and where the reason is.
const FAILED = (what) => `${what}: the request failed (see the message above).`;

let flameArriving = false;  // the graph's answer has started to arrive (reloadAll's head start)

function loadFlame() {
  flameArriving = false;
  downloadLinks();
  chartMarks();
  if (chart.data) drawChart();
  const base = baseline();
  return load("flame", async (signal) => {
    if (base && base.error) throw new Error(`cannot compare: ${base.error}`);
    const params = boot.flameParams(state);
    const arriving = () => { flameArriving = true; };
    const fg = base ? await getJSON("diff", { ...params, format: undefined, ...baseParams(base), limit: 20 }, signal,
      null, arriving)
      : await getJSON("flamegraph", params, signal, boot.take(apiUrl("flamegraph", params)), arriving);
    performance.mark("pf:flame-json");
    if (signal.aborted) return;
    if (!fg.preview) { await renderFlame(fg); return; }
    // A preview (boot.js's previewWidth): the same picture as the whole tree, drawn now; the whole tree next.
    await renderFlame(fg, true);
    const whole = await getJSON("flamegraph", boot.flameParams(state, true), signal);
    performance.mark("pf:flame-whole");
    if (!signal.aborted) await renderFlame(whole);
  }, () => {
    flame.setData({ names: [], levels: [], total: 0 });
    payload = null;
    table.setRows([], 0);
    els.flameBody.hidden = true;
    els.flameSummary.textContent = "";
    els.flameEmpty.textContent = FAILED("No graph");
    els.flameEmpty.hidden = false;
    els.downloads.hidden = true;
    renderDiffExtras(null);
    draw();
  });
}

function loadChart() {
  return load("chart", async (signal) => {
    const r = chartRange();
    const step = chartStep(r.from, r.to);
    const resp = await getJSON("cpu", { query: selectionQuery(), from: r.from, to: r.to, step, type: state.type }, signal);
    // Grouped by a label with nothing selected: one series per top value, the rest as "other".
    let stack = null;
    if (state.group && !state.sel) {
      const top = await topGroupValues(signal);
      const parts = await Promise.all(top.map((v) => getJSON("cpu", {
        query: withMatcher(state.query, state.group, v), from: r.from, to: r.to, step, type: state.type }, signal)));
      stack = top.map((v, k) => ({ name: v === "" ? `(no ${state.group})` : v, values: parts[k].values }));
      const other = resp.values.map((t, k) => t - stack.reduce((a, p) => a + (p.values[k] || 0), 0));
      if (other.some((x) => x > 0)) stack.push({ name: "other", values: other });
    }
    if (!signal.aborted) renderChart(resp, stack);
  }, () => {
    chart.setData({ from: 0, to: 1, step: 1, timestamps: [], values: [], cores: null });
    els.chartWrap.hidden = true;
    els.chartSummary.textContent = "";
    els.chartEmpty.textContent = FAILED("No chart");
    els.chartEmpty.hidden = false;
    hook.chart = null;
  });
}

// Work in progress: a status line says so, and each part a request will replace is dimmed until its answer
// lands (the list and chart that already answered are fresh, and look it, while a slow graph loads).
function busy(on) {
  els.busy.hidden = !on;
  els.flamePane.setAttribute("aria-busy", on ? "true" : "false");
}

const STALE_PARTS = {
  series: [".targets-pane"],
  chart: [".chart-head", "#chart-wrap"],
  flame: [".flame-head", "#diff-details", ".toolbar", "#legend", "#flame-body"],
};
function markStale(what, on) {
  for (const sel of STALE_PARTS[what] || []) document.querySelector(sel).classList.toggle("stale", on);
  hook.loading = Object.keys(inflight).filter((k) => inflight[k]);
}

function settleStatus() {
  if (!Object.values(inflight).some(Boolean)) {
    hook.status = messages.size ? "error" : "ready";
    busy(false);
  }
}

// How long the list and chart let the graph's request run alone before asking too.
const GRAPH_HEAD_START_MS = 250;

async function reloadAll() {
  hook.status = "loading";
  busy(true);
  // The graph first: the server answers one request at a time per core, and the graph is what the user
  // waits for. The list and chart ask once it is drawn, or after a head start when it is slow to build
  // (a first view of a node's day), so they never wait long; the pickers' metadata waits for the graph.
  const flameDone = loadFlame();
  // After the head start: when the graph's answer is already arriving it is a download and a draw away, so
  // the others still wait (they would share the two cores and the page's thread with it); when the server is
  // still building it, they go now.
  const headStart = new Promise((resolve) => setTimeout(resolve, GRAPH_HEAD_START_MS))
    .then(() => (flameArriving ? Promise.race([flameDone, new Promise((r) => setTimeout(r, 2000))]) : null));
  await Promise.race([flameDone, headStart]);
  seriesReady = loadSeries();
  await Promise.all([seriesReady, loadChart(), flameDone.then(loadMeta)]);
  settleStatus();
}

async function reloadSelection() {  // the list stays; the chart and flame graph follow the selection
  hook.status = "loading";
  busy(true);
  await Promise.all([loadChart(), loadFlame()]);
  settleStatus();
}

async function reloadFlame() {
  hook.status = "loading";
  busy(true);
  await loadFlame();
  settleStatus();
}

// ---- controls ----------------------------------------------------------------------------------

function syncControls() {
  if (document.activeElement !== els.selector) els.selector.value = state.query;
  if (document.activeElement !== els.search) els.search.value = state.search;
  els.refresh.checked = state.refresh;
  for (const b of document.querySelectorAll("button.preset")) {
    b.setAttribute("aria-pressed", state.to === "now" && state.from === `now-${b.dataset.range}` ? "true" : "false");
  }
  els.rangeReset.hidden = !state.vfrom;
  if (state.vfrom) {
    const preset = state.vto === "now" && /^now-(.+)$/.exec(state.vfrom);
    els.rangeReset.textContent = preset ? `Back to last ${preset[1]}` : "Back to the whole chart";
  }
  els.compare.value = state.cmp;
  els.customBase.hidden = state.cmp !== "custom";
  for (const [el, v] of [[els.baseFrom, readableTime(state.bfrom)], [els.baseTo, readableTime(state.bto)],
    [els.baseQuery, state.bq]]) {
    if (document.activeElement !== el) el.value = v;
  }
  els.view.value = state.view;
  els.colorBy.value = state.color;
  els.invert.checked = state.invert;
  els.orient.setAttribute("aria-pressed", state.orient === "flame" ? "true" : "false");
  markSelected();
  setAutoRefresh(state.refresh);
}

function select(sel) {
  state.sel = sel;
  state.zoom = [];
  writeHash(true);
  markSelected();
  reloadSelection();
}

let timer = null;
function setAutoRefresh(on) {
  if (on && !timer) timer = setInterval(() => { if (!document.hidden) reloadAll(); }, config.refresh_seconds * 1000);
  if (!on && timer) { clearInterval(timer); timer = null; }
}

els.form.addEventListener("submit", (e) => {
  e.preventDefault();
  state.query = els.selector.value.trim();
  state.zoom = [];
  writeHash(true);
  reloadAll();
});

for (const b of document.querySelectorAll("button.preset")) {
  if (!PRESETS.includes(b.dataset.range)) continue;
  b.addEventListener("click", () => {
    state.from = `now-${b.dataset.range}`;
    state.to = "now";
    state.vfrom = state.vto = null;
    writeHash(true);
    syncControls();
    reloadAll();
  });
}

els.rangeReset.addEventListener("click", () => {
  state.from = state.vfrom;
  state.to = state.vto;
  state.vfrom = state.vto = null;
  state.zoom = [];
  writeHash(true);
  syncControls();
  reloadAll();
});

els.compare.addEventListener("change", () => {
  state.cmp = COMPARE_MODES.includes(els.compare.value) ? els.compare.value : "";
  state.zoom = [];
  if (state.cmp === "custom") {
    // Start from "yesterday" so the fields show the syntax, and wait for the user's Compare: running a
    // comparison nobody asked for yet only costs a query and shows a diff of the wrong range.
    if (!state.bfrom) {
      const y = baselineRange("yday", state.from, state.to, {});
      if (y && !y.error) { state.bfrom = y.from; state.bto = y.to; }
    }
    writeHash(true);
    syncControls();
    els.baseFrom.focus();
    return;
  }
  writeHash(true);
  syncControls();
  reloadFlame();
});

els.compareForm.addEventListener("submit", (e) => {
  e.preventDefault();
  state.cmp = "custom";
  state.bfrom = els.baseFrom.value.trim();
  state.bto = els.baseTo.value.trim();
  state.bq = els.baseQuery.value.trim();
  state.zoom = [];
  writeHash(true);
  syncControls();
  reloadFlame();
});

els.refresh.addEventListener("change", () => {
  state.refresh = els.refresh.checked;
  writeHash(false);
  setAutoRefresh(state.refresh);
});

els.search.addEventListener("input", () => {
  state.search = els.search.value;
  writeHash(false);
  flame.setSearch(state.search);
  afterRender();
});

els.zoomOut.addEventListener("click", () => flame.resetZoom());
els.searchNext.addEventListener("click", () => stepMatch(1));
els.searchPrev.addEventListener("click", () => stepMatch(-1));
els.search.addEventListener("keydown", (e) => {
  if (e.key === "Enter") { e.preventDefault(); stepMatch(e.shiftKey ? -1 : 1); }
});

els.type.addEventListener("change", () => {
  state.type = els.type.value;
  state.zoom = [];
  state.fn = "";
  writeHash(true);
  reloadAll();
});
els.groupBy.addEventListener("change", () => {
  state.group = LABEL_NAME.test(els.groupBy.value) ? els.groupBy.value : "";
  state.sel = null;
  writeHash(true);
  reloadAll();
});
els.labelName.addEventListener("change", () => loadLabelValues(els.labelName.value.trim()));
els.labelValue.addEventListener("input", () => {
  clearTimeout(labelValueTimer);
  labelValueTimer = setTimeout(() => loadLabelValues(els.labelName.value.trim(), els.labelValue.value), 150);
});
els.labelForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const name = els.labelName.value.trim(), value = els.labelValue.value;
  if (!LABEL_NAME.test(name)) {
    setMessage("labels", `"${name}" is not a label name: use letters, digits and _ (not first a digit).`);
    return;
  }
  setMessage("labels", "");
  state.query = withMatcher(state.query, name, value);
  state.zoom = [];
  writeHash(true);
  syncControls();
  reloadAll();
});

els.view.addEventListener("change", () => {
  state.view = VIEWS.includes(els.view.value) ? els.view.value : "both";
  writeHash(false);
  applyView();
  downloadLinks();
  draw();
});
els.colorBy.addEventListener("change", () => {
  state.color = els.colorBy.value;
  writeHash(false);
  flame.colorBy = state.color;
  renderLegend(!!flame.data && !!flame.data.diff);
  flame.render();
  if (state.view === "sandwich") drawSandwich();
  afterRender();
});
els.orient.addEventListener("click", () => {
  state.orient = state.orient === "flame" ? "icicle" : "flame";
  writeHash(false);
  syncControls();
  flame.setOrientation(state.orient);
  renderLegend(!!flame.data && !!flame.data.diff);
  afterRender();
});
els.invert.addEventListener("change", () => {
  state.invert = els.invert.checked;
  state.zoom = [];
  writeHash(false);
  if (payload) renderFlame(payload);
});
els.fnFilter.addEventListener("input", () => {
  const { re, error } = compileSearch(els.fnFilter.value);
  els.fnFilter.setCustomValidity(error || "");
  els.fnFilter.title = error || "";
  if (!error) table.setFilter(re);
  els.fnCount.textContent = error ? error : `${table.matching} functions`;
});
// Shares or values in the table's number columns; the choice is kept for the next visit.
function showNumbers(mode) {
  table.setShow(mode);
  document.getElementById("fn-show-pct").setAttribute("aria-pressed", String(table.show === "pct"));
  document.getElementById("fn-show-value").setAttribute("aria-pressed", String(table.show === "value"));
  try { localStorage.setItem("podflame.tableNumbers", table.show); } catch { /* storage off: this visit only */ }
}
document.getElementById("fn-show-pct").addEventListener("click", () => showNumbers("pct"));
document.getElementById("fn-show-value").addEventListener("click", () => showNumbers("value"));
try { if (localStorage.getItem("podflame.tableNumbers") === "value") showNumbers("value"); } catch { /* as above */ }
for (const b of document.querySelectorAll("#fn-table button.sort")) {
  b.addEventListener("click", () => {
    table.setSort(b.dataset.sort);
    for (const o of document.querySelectorAll("#fn-table th")) o.removeAttribute("aria-sort");
    b.parentElement.setAttribute("aria-sort", b.dataset.sort === "name" ? "ascending" : "descending");
  });
}
const exportName = (ext) => `podflame-${downloadStem()}.${ext}`;
els.exportPng.addEventListener("click", () => exportPng(els.canvas, exportName("png")));
els.exportSvg.addEventListener("click", () => exportSvg(flame, exportName("svg"), els.flameTitle.textContent));

const typing = (t) => t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement;
document.addEventListener("keydown", (e) => {
  if (e.key === "/" && !typing(e.target)) {  // as in many viewers: "/" to search
    e.preventDefault();
    els.search.focus();
    els.search.select();
    return;
  }
  if (e.key.startsWith("Arrow") && !typing(e.target) && flame.data && !els.flameWrap.hidden) {
    const f = flame.moveFocus(e.key);
    if (f) {
      e.preventDefault();
      const n = flame.lastRender.nodes.find((x) => x.depth === f.d && x.name === flame.nodeName(f.d, f.i));
      if (n) {
        const r = els.canvas.getBoundingClientRect();
        flame.showTooltip(f.d, f.i, r.left + n.x + Math.min(n.width / 2, 40), r.top + n.y + 18);
      }
      hook.focus = { depth: f.d, name: flame.nodeName(f.d, f.i) };
    }
    return;
  }
  if (e.key === "Enter" && flame.focus && !typing(e.target) && document.activeElement === els.canvas) {
    flame.zoomTo(flame.focus.d, flame.focus.i);
    return;
  }
  if (e.key !== "Escape") return;
  flame.hideTooltip();
  if (e.target === els.selector) return;
  if (flame.isZoomed()) flame.resetZoom();
});

window.addEventListener("popstate", () => {
  pushes = Math.max(0, pushes - 1);
  readHash();
  syncControls();
  reloadAll();
});

let lastWidth = 0, lastChartWidth = 0;
const resized = new ResizeObserver(() => {
  const w = els.flameBody.clientWidth;
  if (w && w !== lastWidth) {
    lastWidth = w;
    if (flame.data) draw();
  }
  const cw = els.chartWrap.clientWidth;
  if (cw && cw !== lastChartWidth) {
    lastChartWidth = cw;
    if (chart.data) drawChart();
  }
});
resized.observe(els.flameBody);
let lastTablesWidth = 0;
new ResizeObserver(() => {
  const w = els.diffTables.clientWidth;
  if (w && w !== lastTablesWidth) { lastTablesWidth = w; fitDiffNames(els.diffTables); }
}).observe(els.diffTables);
resized.observe(els.chartWrap);
// The chart reads its colours from the stylesheet when it draws: draw again when the system's theme changes.
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => { if (chart.data) drawChart(); });

readHash();
syncControls();
reloadAll();
performance.mark("pf:app-ready");
