// Compare mode: which baseline a choice means, and the regression / improvement tables of
// /api/v1/diff (docs/api.md). Function names are untrusted: written with textContent only.

import { formatPoints } from "./flamegraph.js";
import { fitNamesTo } from "./functions.js";
import { rangeSeconds, shiftRange } from "./timeexpr.js";
import { formatInt } from "./lazyintl.js";

export const COMPARE_MODES = ["", "prev", "yday", "custom"];

const fmtInt = { format: formatInt };

// The baseline {from, to} for a mode, or an {error}: "previous period" is the range of the same
// length just before, "same range yesterday" the range moved back 24 hours.
export function baselineRange(mode, from, to, custom) {
  if (mode === "prev") {
    const len = rangeSeconds(from, to);
    return len > 0 ? shiftRange(from, to, -len) : { error: "the range is not valid" };
  }
  if (mode === "yday") return shiftRange(from, to, -86400) || { error: "the range is not valid" };
  if (mode === "custom") {
    if (!custom.from || !custom.to) return { error: "give the baseline's from and to" };
    return { from: custom.from, to: custom.to };
  }
  return null;
}

function share(v) {
  const p = v * 100;
  return (p >= 10 || p === 0 ? p.toFixed(1) : p.toPrecision(2)) + "%";
}

function cell(tag, text, className) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (className) el.className = className;
  return el;
}

// One table of diff rows; clicking a function name calls onPick(name) (the page selects it). Only the first
// `shown` rows are listed, then a button listing all (onMore), so the tables fit beside the graph.
// `format` writes a flat value (bytes as "1.46 GiB", counts as "1,234").
export function diffTable(caption, rows, unitWord, onPick, shown = rows.length, onMore = null,
  format = (v) => fmtInt.format(v)) {
  const table = document.createElement("table");
  table.className = "diff-table";
  table.append(cell("caption", caption));
  const head = document.createElement("tr");
  // No p column when nothing was tested (bytes are not counts): its width goes to the values.
  const tested = rows.some((r) => r.p_value !== null && r.p_value !== undefined);
  if (!tested) table.classList.add("untested");
  const heads = [["function", ""], ["baseline", `share of the baseline \u00b7 ${unitWord}`],
    ["comparison", `share of the comparison \u00b7 ${unitWord}`], ["change", "change of share, percentage points"],
    ...(tested ? [["p", "p-value of the test"]] : [])];
  for (const [h, title] of heads) {
    const th = cell("th", h);
    if (title) th.title = title;
    head.append(th);
  }
  const thead = document.createElement("thead");
  thead.append(head);
  const tbody = document.createElement("tbody");
  for (const r of rows.slice(0, shown)) {
    const tr = document.createElement("tr");
    tr.className = r.change > 0 ? "more" : "less";
    const name = document.createElement("td");
    name.className = "fn";
    const btn = cell("button", String(r.name));
    btn.dataset.name = String(r.name);  // fitDiffNames cuts long ones in the middle
    btn.type = "button";
    btn.title = `${r.name}: select it in the flame graph`;
    btn.addEventListener("click", () => onPick(String(r.name)));
    name.append(btn);
    tr.append(
      name,
      cell("td", `${share(r.base_share)} \u00b7 ${format(r.base_flat)}`, "num"),
      cell("td", `${share(r.comp_share)} \u00b7 ${format(r.comp_flat)}`, "num"),
      cell("td", formatPoints(r.change), "num change"),
    );
    if (tested) tr.append(cell("td", r.p_value === null || r.p_value === undefined ? "\u2013" : r.p_value.toPrecision(2), "num"));
    tbody.append(tr);
  }
  if (rows.length > shown && onMore) {
    const tr = document.createElement("tr");
    tr.className = "more-rows";
    const td = document.createElement("td");
    td.colSpan = heads.length;
    const btn = cell("button", `show all ${rows.length}`);
    btn.type = "button";
    btn.addEventListener("click", onMore);
    td.append(btn);
    tr.append(td);
    tbody.append(tr);
  }
  table.append(thead, tbody);
  return table;
}

// Each diff table's names cut in the middle to its function column (both ends of a qualified name show:
// "compress/flate.(*compressor).deflate" and ".init" differ at their ends). Again whenever the tables resize.
export function fitDiffNames(container) {
  for (const table of container.querySelectorAll("table.diff-table")) {
    const th = table.querySelector("th");
    if (th) fitNamesTo(table.querySelectorAll("td.fn button"), th.clientWidth - 18);
  }
}

// What the rule behind the tables was, in a sentence, in the profile's unit: counts (samples, objects) and
// CPU time (as samples of the period) are tested; bytes are not counts, so only the share rule applies.
export function ruleText(rule, unit = "count", unitWord = "samples") {
  if (!rule) return "";
  const moved = `its share of the total moved by ${formatPoints(rule.min_share_change).replace("+", "")} or more`;
  const tail = " Flat (self) values; share = of that range's total.";
  if (unit !== "count" && unit !== "nanoseconds") {
    return `Listed when a function's ${moved.slice(4)} (${unitWord || unit} are not counts: no significance test).` + tail;
  }
  const what = unit === "count" && unitWord ? unitWord : "samples";
  return `Listed when a function has at least ${rule.min_samples} ${what} in both ranges together, ${moved}, ` +
    `and a ${rule.test} says so (alpha ${rule.alpha}, ${rule.tested} functions tested).` + tail;
}
