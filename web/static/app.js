// The podflame page: time range + selector, the pod/cgroup list, the flame graph of the selection.
//
// State lives in the URL hash (range, selector, selection, zoom, search, auto-refresh) so a link
// reproduces the view. Every value from the API is untrusted text: it is written with
// textContent or DOM attribute setters, never parsed as HTML.

import { FlameGraph, formatPercent } from "./flamegraph.js";

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
};

const fmtInt = new Intl.NumberFormat("en-US");

// Test and debugging hook: what the page last drew and whether it is settled.
const hook = (window.podflame = {
  status: "loading", lastRender: null, targets: [], renders: 0,
  rerender() { draw(); return hook.lastRender; },
});

// ---- state <-> URL hash ------------------------------------------------------------------------

const state = {
  query: config.initial.query || "", from: config.initial.from || "now-15m", to: config.initial.to || "now",
  sel: null,  // labels identifying the selected pod/cgroup, e.g. {"cgroup": "/system.slice/x.service"}
  zoom: [],   // root-first frame names of the zoomed node
  search: "", refresh: false,
};

const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

// The hash is user input too (a link can say anything): keep only well-formed values.
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  const json = (key, fallback) => {
    try { return p.has(key) ? JSON.parse(p.get(key)) : fallback; } catch { return fallback; }
  };
  state.query = p.has("q") ? p.get("q") : config.initial.query || "";
  state.from = p.get("from") || config.initial.from || "now-15m";
  state.to = p.get("to") || config.initial.to || "now";
  const sel = json("sel", null);
  state.sel = null;
  if (sel && typeof sel === "object" && !Array.isArray(sel)) {
    const clean = Object.entries(sel).filter(([k, v]) => LABEL_NAME.test(k) && typeof v === "string");
    if (clean.length) state.sel = Object.fromEntries(clean);
  }
  const zoom = json("zoom", []);
  state.zoom = Array.isArray(zoom) ? zoom.map(String) : [];
  state.search = p.get("search") || "";
  state.refresh = p.get("refresh") === "1";
}

function writeHash(push) {
  const p = new URLSearchParams();
  if (state.query) p.set("q", state.query);
  p.set("from", state.from);
  p.set("to", state.to);
  if (state.sel) p.set("sel", JSON.stringify(state.sel));
  if (state.zoom.length) p.set("zoom", JSON.stringify(state.zoom));
  if (state.search) p.set("search", state.search);
  if (state.refresh) p.set("refresh", "1");
  const url = "#" + p.toString();
  if (url === location.hash) return;
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

// ---- API ---------------------------------------------------------------------------------------

class ApiError extends Error {}

function apiUrl(path, params) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") qs.set(k, v);
  return `${API}/${path}?${qs.toString()}`;
}

async function getJSON(path, params, signal) {
  let resp;
  try {
    resp = await fetch(apiUrl(path, params), { signal, headers: { Accept: "application/json" } });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`cannot reach the server (${path}): ${e.message}`);
  }
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON: reported below */ }
  if (!resp.ok) {
    const why = body && typeof body.error === "string" ? body.error : `HTTP ${resp.status} ${resp.statusText}`;
    throw new ApiError(`${path}: ${why}`);
  }
  if (body === null) throw new ApiError(`${path}: the server did not answer JSON`);
  return body;
}

// Prometheus string literal: backslash, double quote and newline escaped.
function quote(value) {
  return '"' + String(value).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") + '"';
}

// The user's selector with the selection's equality matchers added.
function selectionQuery() {
  const extra = Object.entries(state.sel || {}).map(([k, v]) => `${k}=${quote(v)}`);
  const q = state.query.trim();
  if (!extra.length) return q;
  let inner = q;
  if (q.startsWith("{") && q.endsWith("}")) inner = q.slice(1, -1).trim();
  else if (q) return q;  // not a plain {...}: let the server say what is wrong with it
  return "{" + [inner, ...extra].filter(Boolean).join(", ") + "}";
}

// ---- messages ----------------------------------------------------------------------------------

const messages = new Map();  // source -> text

function setMessage(source, text) {
  if (text) messages.set(source, text); else messages.delete(source);
  const unique = [...new Set(messages.values())];
  els.message.replaceChildren(...unique.map((t) => {
    const p = document.createElement("p");
    p.textContent = t;
    return p;
  }));
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
    if (l.pod_uid) {
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
  return [...groups.values()].sort((a, b) => b.value - a.value || a.key.localeCompare(b.key));
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
      title: [`pod_uid ${l.pod_uid}`, g.sel.container_id ? `container_id ${g.sel.container_id}` : "", l.cgroup || ""]
        .filter(Boolean).join("\n"),
    };
  }
  if (g.kind === "cgroup") {
    const parent = l.cgroup.slice(0, Math.max(1, l.cgroup.length - lastPart(l.cgroup).length - 1));
    return { name: lastPart(l.cgroup), detail: parent, title: l.cgroup };
  }
  return { name: "(no cgroup label)", detail: "", title: "" };
}

function formatShare(g, unit) {
  if (g.cpu) {
    const pct = g.cpuShare * 100;
    return { text: (pct >= 10 ? pct.toFixed(1) : pct.toPrecision(2)) + "%", title: `${g.cpuShare.toFixed(3)} cores on average, ${g.cpuSeconds.toFixed(2)} s CPU` };
  }
  return { text: `${fmtInt.format(g.value)} ${unit}`, title: "" };
}

function targetRow(g, max, unit, selected) {
  const li = document.createElement("li");
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "target" + (g.key === "" ? " target-all" : "");
  btn.setAttribute("aria-pressed", selected ? "true" : "false");
  btn.dataset.key = g.key;
  const d = g.describe;
  if (d.title) btn.title = d.title;

  const name = document.createElement("span");
  name.className = "t-name";
  name.textContent = d.name;
  const share = formatShare(g, unit);
  const value = document.createElement("span");
  value.className = "t-share";
  value.textContent = share.text;
  if (share.title) value.title = share.title;
  const bar = document.createElement("span");
  bar.className = "t-bar";
  const fill = document.createElement("span");
  fill.className = "t-fill";
  fill.style.width = (max > 0 ? (100 * g.value) / max : 0).toFixed(2) + "%";
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
  btn.addEventListener("click", () => select(g.key === "" ? null : g.sel));
  li.append(btn);
  return li;
}

let described = new Map();  // group key -> {name, detail} of the last list, for the flame graph title

function renderTargets(resp) {
  const unit = resp.unit === "count" ? "samples" : resp.unit || "";
  const groups = groupSeries(resp.series || []);
  hook.targets = groups.map((g) => ({ key: g.key, sel: g.sel, value: g.value, cpuShare: g.cpu ? g.cpuShare : null }));
  const currentKey = selKey(state.sel);
  for (const g of groups) g.describe = describeGroup(g);
  described = new Map(groups.map((g) => [g.key, g.describe]));
  if (state.sel) els.flameTitle.textContent = "Flame graph: " + selectionLabel();
  const all = {
    key: "", sel: null, kind: "all", value: groups.reduce((a, g) => a + g.value, 0),
    cpu: groups.every((g) => g.cpu), cpuShare: groups.reduce((a, g) => a + g.cpuShare, 0),
    cpuSeconds: groups.reduce((a, g) => a + g.cpuSeconds, 0), comms: null,
    describe: { name: "All matching the selector", detail: "", title: "" },
  };
  const max = groups.length ? groups[0].value : 0;
  const rows = [];
  if (groups.length) rows.push(targetRow(all, all.value, unit, currentKey === ""));
  for (const g of groups) rows.push(targetRow(g, max, unit, g.key === currentKey));
  els.targets.replaceChildren(...rows);
  els.targetsCount.textContent = groups.length ? `(${groups.length})` : "";
  els.targetsEmpty.hidden = groups.length > 0;
  els.targetsEmpty.textContent = groups.length ? "" : "No samples in this range for this selector.";
  if (typeof resp.from === "number" && typeof resp.to === "number") {
    const f = (t) => new Date(t * 1000).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
    els.rangeText.textContent = `${f(resp.from)} \u2013 ${f(resp.to)}`;
  }
}

function markSelected() {
  const key = selKey(state.sel);
  for (const b of els.targets.querySelectorAll("button.target")) {
    b.setAttribute("aria-pressed", b.dataset.key === key ? "true" : "false");
  }
}

// ---- flame graph -------------------------------------------------------------------------------

const flame = new FlameGraph(els.canvas, els.tooltip, {
  onZoom(path) {
    state.zoom = path;
    writeHash(false);
    afterRender();
  },
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

function renderFlame(fg) {
  flame.setData(fg);
  flame.zoomToPath(state.zoom);
  flame.search = state.search.trim().toLowerCase();
  const empty = !fg.total;
  els.flameEmpty.hidden = !empty;
  els.flameEmpty.textContent = empty ? "No samples in this range for this selection." : "";
  els.flameWrap.hidden = empty;
  els.flameTitle.textContent = "Flame graph: " + selectionLabel();
  const unit = fg.unit === "count" ? "samples" : fg.unit || "";
  let summary = `${fmtInt.format(fg.total || 0)} ${unit}`;
  if (fg.unit === "count" && fg.period_ns) summary += ` \u00b7 ${((fg.total * fg.period_ns) / 1e9).toFixed(2)} s CPU`;
  els.flameSummary.textContent = summary;
  draw();
}

function draw() {
  flame.render(els.flameWrap.clientWidth);
  afterRender();
}

function afterRender() {
  hook.lastRender = flame.lastRender;
  hook.renders += 1;
  els.zoomOut.disabled = !flame.isZoomed();
  const stats = flame.searchStats();
  if (!stats) els.searchResult.textContent = "";
  else {
    let t = `matched ${formatPercent(stats.matched, stats.total)} of total`;
    if (flame.isZoomed()) t += `, ${formatPercent(stats.inView, stats.viewTotal)} of zoomed`;
    els.searchResult.textContent = t;
  }
}

function downloadLinks() {
  const params = { query: selectionQuery(), from: state.from, to: state.to };
  els.dlPprof.href = apiUrl("pprof", params);
  els.dlFolded.href = apiUrl("folded", params);
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  els.dlPprof.setAttribute("download", `podflame-${stamp}.pb.gz`);
  els.dlFolded.setAttribute("download", `podflame-${stamp}.folded.txt`);
}

// ---- loading -----------------------------------------------------------------------------------

const inflight = { series: null, flame: null };

async function load(what, fn) {
  inflight[what]?.abort();
  const ctl = (inflight[what] = new AbortController());
  try {
    await fn(ctl.signal);
    if (ctl.signal.aborted) return;
    setMessage(what, "");
  } catch (e) {
    if (e.name === "AbortError" || ctl.signal.aborted) return;
    setMessage(what, e instanceof ApiError ? `Error from the API: ${e.message}` : `Error: ${e.message}`);
    if (what === "series") {
      els.targets.replaceChildren();
      hook.targets = [];
    } else {
      flame.setData({ names: [], levels: [], total: 0 });
      els.flameWrap.hidden = true;
      els.flameSummary.textContent = "";
      draw();
    }
  } finally {
    if (inflight[what] === ctl) inflight[what] = null;
  }
}

function loadSeries() {
  return load("series", async (signal) => {
    const resp = await getJSON("series", { query: state.query, from: state.from, to: state.to, by: GROUP_BY }, signal);
    if (!signal.aborted) renderTargets(resp);
  });
}

function loadFlame() {
  downloadLinks();
  return load("flame", async (signal) => {
    const fg = await getJSON("flamegraph", { query: selectionQuery(), from: state.from, to: state.to }, signal);
    if (!signal.aborted) renderFlame(fg);
  });
}

async function reloadAll() {
  hook.status = "loading";
  await Promise.all([loadSeries(), loadFlame()]);
  if (!inflight.series && !inflight.flame) hook.status = messages.size ? "error" : "ready";
}

async function reloadFlame() {
  hook.status = "loading";
  await loadFlame();
  if (!inflight.series && !inflight.flame) hook.status = messages.size ? "error" : "ready";
}

// ---- controls ----------------------------------------------------------------------------------

function syncControls() {
  if (document.activeElement !== els.selector) els.selector.value = state.query;
  if (document.activeElement !== els.search) els.search.value = state.search;
  els.refresh.checked = state.refresh;
  for (const b of document.querySelectorAll("button.preset")) {
    b.setAttribute("aria-pressed", state.to === "now" && state.from === `now-${b.dataset.range}` ? "true" : "false");
  }
  markSelected();
  setAutoRefresh(state.refresh);
}

function select(sel) {
  state.sel = sel;
  state.zoom = [];
  writeHash(true);
  markSelected();
  reloadFlame();
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
    writeHash(true);
    syncControls();
    reloadAll();
  });
}

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

document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  flame.hideTooltip();
  if (e.target === els.selector) return;
  if (flame.isZoomed()) flame.resetZoom();
});

window.addEventListener("popstate", () => {
  readHash();
  syncControls();
  reloadAll();
});

let lastWidth = 0;
new ResizeObserver(() => {
  const w = els.flameWrap.clientWidth;
  if (w && w !== lastWidth) {
    lastWidth = w;
    if (flame.data) draw();
  }
}).observe(els.flameWrap);

readHash();
syncControls();
reloadAll();
