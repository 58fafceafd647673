// Time expressions as the API reads them (docs/api.md "Time and selectors"), for the range
// arithmetic the page does itself: "previous period", "same range yesterday", the chart's
// selection. A range stays relative ("now-30m") when it was relative, so a shared link keeps
// meaning "the last 15 minutes", and becomes plain unix seconds otherwise.

const UNIT_S = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800 };
const DURATION = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/y;

export function parseDuration(text) {  // "1h30m" -> 5400 (seconds), null when malformed
  const s = text.trim();
  if (!s) return null;
  let total = 0;
  DURATION.lastIndex = 0;
  while (DURATION.lastIndex < s.length) {
    const at = DURATION.lastIndex;
    const m = DURATION.exec(s);
    if (!m || m.index !== at) return null;
    total += parseFloat(m[1]) * UNIT_S[m[2]];
  }
  return total;
}

// -> {rel: seconds from now} or {abs: unix seconds}; null when the server would refuse it.
export function parseTime(text) {
  const s = String(text || "").trim();
  if (/^(\d+(\.\d*)?|\.\d+)$/.test(s)) return { abs: parseFloat(s) };
  const m = /^(?:now)?\s*([+-])\s*(.+)$/i.exec(s);
  if (/^now$/i.test(s)) return { rel: 0 };
  if (m) {
    const d = parseDuration(m[2]);
    return d === null ? null : { rel: m[1] === "-" ? -d : d };
  }
  if (/^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}/.test(s)) {
    const ms = Date.parse(s.replace(" ", "T"));
    return Number.isNaN(ms) ? null : { abs: ms / 1000 };
  }
  return null;
}

export function toSeconds(t, nowS = Date.now() / 1000) {
  return "abs" in t ? t.abs : nowS + t.rel;
}

export function formatTime(t) {
  if ("abs" in t) return String(Math.round(t.abs * 1e6) / 1e6);  // µs: finer than any profile's time
  if (t.rel === 0) return "now";
  const ms = Math.round(Math.abs(t.rel) * 1000);
  const d = ms % 1000 ? `${ms}ms` : `${ms / 1000}s`;
  return (t.rel < 0 ? "now-" : "now+") + d;
}

// The range [from, to) moved by `seconds` (negative: earlier), as expressions; null when unparsable.
// Both ends relative stay relative; otherwise both become absolute.
export function shiftRange(from, to, seconds) {
  const f = parseTime(from), t = parseTime(to);
  if (!f || !t) return null;
  if ("rel" in f && "rel" in t) {
    return { from: formatTime({ rel: f.rel + seconds }), to: formatTime({ rel: t.rel + seconds }) };
  }
  const now = Date.now() / 1000;
  return { from: formatTime({ abs: toSeconds(f, now) + seconds }), to: formatTime({ abs: toSeconds(t, now) + seconds }) };
}

export function rangeSeconds(from, to) {
  const f = parseTime(from), t = parseTime(to);
  if (!f || !t) return null;
  const now = Date.now() / 1000;
  return toSeconds(t, now) - toSeconds(f, now);
}

const pad2 = (n) => String(n).padStart(2, "0");

// An expression as a person reads it in a field, meaning the same instant to the server: unix seconds as
// local RFC 3339 ("2026-12-05T14:03:00+01:00"), "now-87300s" as "now-24h15m"; anything else as it is.
export function readableTime(expr) {
  const t = parseTime(expr);
  if (!t) return String(expr ?? "");
  if ("abs" in t) {
    const d = new Date(Math.round(t.abs * 1000));
    if (d.getMilliseconds()) return String(expr);  // a sub-second instant keeps its exact digits
    const off = -d.getTimezoneOffset(), sign = off < 0 ? "-" : "+", a = Math.abs(off);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}T${pad2(d.getHours())}:` +
      `${pad2(d.getMinutes())}:${pad2(d.getSeconds())}${sign}${pad2(Math.floor(a / 60))}:${pad2(a % 60)}`;
  }
  if (t.rel === 0) return "now";
  let s = Math.abs(t.rel);
  if (!Number.isInteger(s)) return String(expr);
  let out = "";
  for (const [u, n] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
    if (s >= n) { out += `${Math.floor(s / n)}${u}`; s %= n; }
  }
  return (t.rel < 0 ? "now-" : "now+") + out;
}
