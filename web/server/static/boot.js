// The page's first graph request, started from the document's head (inlined by web/server/ui.py, allowed
// by its hash in the Content-Security-Policy) while the stylesheet and app.js's modules still load: the
// server builds or serves the graph during what would otherwise be a wait before it is even asked.
//
// It also holds what the URL means (the hash as view state) and how a graph request is written, so app.js
// asks for exactly the same URL and takes this answer instead of asking again (`take`). Classic script,
// no imports: it runs before any module. The hash is user input: only well-formed values are kept.
(() => {
  "use strict";
  const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
  const COMPARE_MODES = ["", "prev", "yday", "custom"];
  const VIEWS = ["both", "graph", "table", "sandwich"];

  // The view state a URL hash says, with the page's initial values where it is silent.
  function readHash(hash, initial) {
    const p = new URLSearchParams(hash.slice(1));
    const json = (key, fallback) => {
      try { return p.has(key) ? JSON.parse(p.get(key)) : fallback; } catch { return fallback; }
    };
    const s = {};
    s.query = p.has("q") ? p.get("q") : initial.query || "";
    s.from = p.get("from") || initial.from || "now-15m";
    s.to = p.get("to") || initial.to || "now";
    s.vfrom = p.get("vfrom") || null;
    s.vto = s.vfrom ? p.get("vto") || "now" : null;
    s.cmp = COMPARE_MODES.includes(p.get("cmp")) ? p.get("cmp") : "";
    s.bfrom = p.get("bfrom") || "";
    s.bto = p.get("bto") || "";
    s.bq = p.get("bq") || "";
    const sel = json("sel", null);
    s.sel = null;
    if (sel && typeof sel === "object" && !Array.isArray(sel)) {
      const clean = Object.entries(sel).filter(([k, v]) => LABEL_NAME.test(k) && typeof v === "string");
      if (clean.length) s.sel = Object.fromEntries(clean);
    }
    const zoom = json("zoom", []);
    s.zoom = Array.isArray(zoom) ? zoom.map(String) : [];
    s.search = p.get("search") || "";
    s.refresh = p.get("refresh") === "1";
    s.view = VIEWS.includes(p.get("view")) ? p.get("view") : "both";
    s.orient = p.get("orient") === "flame" ? "flame" : "icicle";
    s.invert = p.get("invert") === "1";
    s.color = ["kind", "module"].includes(p.get("color")) ? p.get("color") : "name";
    s.fn = p.get("fn") || "";
    s.type = p.get("type") || "";
    s.group = LABEL_NAME.test(p.get("group") || "") ? p.get("group") : "";
    return s;
  }

  // Prometheus string literal: backslash, double quote and newline escaped.
  function quote(value) {
    return '"' + String(value).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") + '"';
  }

  // The user's selector with the selection's equality matchers added.
  function selectionQuery(query, sel) {
    const extra = Object.entries(sel || {}).map(([k, v]) => `${k}=${quote(v)}`);
    const q = query.trim();
    if (!extra.length) return q;
    // The server also takes matchers without braces (namespace="shop"): those get the selection too,
    // instead of silently losing it while the title still names it.
    const inner = q.startsWith("{") && q.endsWith("}") ? q.slice(1, -1).trim() : q;
    return "{" + [inner, ...extra].filter(Boolean).join(", ") + "}";
  }

  // Nodes worth sending: about what the screen can show (a frame under a pixel is drawn merged anyway),
  // bounded so a whole node's day stays a quick download and a quick draw. From the screen and window
  // sizes only, so it is known before any layout (and the same here and in app.js).
  function maxNodes() {
    const w = Math.max(800, window.screen ? window.screen.width : 1920, window.innerWidth || 0);
    return Math.min(200_000, Math.max(20_000, Math.round(w * 64)));
  }

  function apiUrl(api, path, params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") qs.set(k, v);
    return `${api}/${path}?${qs.toString()}`;
  }

  // The first picture of the whole graph needs only the frames at least MIN_WIDTH px wide at the widest the
  // canvas can be: the server sends those (and one run node for each run of narrower ones it leaves out,
  // web/query/treebin.py), a few % of a big tree's bytes, and app.js asks for the whole tree right after drawing
  // it (table, search, zoom). Not for views that need the whole tree at once: zoomed, searched, inverted, a
  // selected function, the table or sandwich alone, colours whose legend reads every frame.
  function previewWidth(s) {
    if (s.zoom.length || s.search || s.invert || s.fn || s.color !== "name" || s.view === "table" ||
        s.view === "sandwich") return undefined;
    const w = Math.max(window.screen ? window.screen.width : 0, window.innerWidth || 0, window.outerWidth || 0);
    return Math.min(100_000, Math.max(100, Math.ceil(w)));
  }

  // The flame graph (not diff) request of a view state, in the binary form app.js reads in place.
  function flameParams(s, whole = false) {
    return { query: selectionQuery(s.query, s.sel), from: s.from, to: s.to, max_nodes: maxNodes(), type: s.type,
      format: "binary", preview: whole ? undefined : previewWidth(s) };
  }

  let early = null;  // {url, answer, ctl}: the request started below, until app.js takes or drops it
  window.podflameBoot = {
    readHash, quote, selectionQuery, maxNodes, apiUrl, flameParams,
    // The early request ({answer: promise of {resp, body}, ctl}) when `url` is what it asked for, else null (and the early
    // request, now of no use, is cancelled). Taken once.
    take(url) {
      const e = early;
      early = null;
      if (!e) return null;
      if (e.url === url) return e;
      e.ctl.abort();
      return null;
    },
  };

  try {
    performance.mark("pf:boot");
    const config = JSON.parse(document.getElementById("podflame-config").textContent);
    const s = readHash(location.hash, config.initial || {});
    if (s.cmp) return;  // a comparison: app.js works out the baseline and asks for the diff
    const url = apiUrl(config.api, "flamegraph", flameParams(s));
    const ctl = new AbortController();
    // The answer is read as soon as it lands, often while app.js's modules still load (a fetch's
    // body would otherwise wait in a small pipe, and the transfer stall, until app.js asks for it).
    const answer = fetch(url, { signal: ctl.signal }).then((resp) => ({
      resp, body: resp.ok ? resp.arrayBuffer().catch(() => null) : null,  // errors and a 401's login: app.js's
    }));
    answer.catch(() => {});  // app.js reports a failure when it takes the answer
    early = { url, answer, ctl };
  } catch {
    early = null;  // nothing started: app.js asks as usual
  }
})();
