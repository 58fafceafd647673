// The graph as a file: PNG from the canvas as drawn, SVG rebuilt from what was drawn (the
// FlameGraph's lastRender), with names as escaped text nodes (XMLSerializer escapes them).

function save(blob, filename) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

export function exportPng(canvas, filename) {
  canvas.toBlob((blob) => { if (blob) save(blob, filename); }, "image/png");
}

const SVG_NS = "http://www.w3.org/2000/svg";
const ROW = 18;

// Rebuilt from the last render, colours taken from the canvas pixels under each frame so the SVG
// shows what the screen shows (search, diff, kind or module colours alike).
export function svgText(graph, title) {
  const r = graph.lastRender;
  const doc = document.implementation.createDocument(SVG_NS, "svg", null);
  const svg = doc.documentElement;
  const W = Math.max(1, Math.round(r.width)), H = Math.max(ROW, Math.round(r.height)) + 24;
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("font-family", "monospace");
  svg.setAttribute("font-size", "12");
  const heading = doc.createElementNS(SVG_NS, "text");
  heading.setAttribute("x", "2");
  heading.setAttribute("y", "16");
  heading.textContent = title;
  svg.append(heading);
  const ctx = graph.canvas.getContext("2d");
  const dpr = graph.canvas.width / Math.max(1, r.width);
  for (const n of r.nodes) {
    const g = doc.createElementNS(SVG_NS, "g");
    const t = doc.createElementNS(SVG_NS, "title");
    t.textContent = `${n.name} (${n.total})`;
    const rect = doc.createElementNS(SVG_NS, "rect");
    const px = ctx.getImageData(Math.floor((n.x + 1) * dpr), Math.floor((n.y + 2) * dpr), 1, 1).data;
    rect.setAttribute("x", n.x.toFixed(2));
    rect.setAttribute("y", String(n.y + 24));
    rect.setAttribute("width", Math.max(n.width - 1, 0.5).toFixed(2));
    rect.setAttribute("height", String(ROW - 1));
    rect.setAttribute("fill", `rgb(${px[0]},${px[1]},${px[2]})`);
    g.append(t, rect);
    if (n.width > 22) {
      const label = doc.createElementNS(SVG_NS, "text");
      label.setAttribute("x", (n.x + 3).toFixed(2));
      label.setAttribute("y", String(n.y + 24 + 13));
      const room = Math.floor((n.width - 6) / 7.2);
      label.textContent = n.name.length <= room ? n.name : n.name.slice(0, Math.max(room - 1, 0)) + "\u2026";
      g.append(label);
    }
    svg.append(g);
  }
  return new XMLSerializer().serializeToString(doc);
}

export function exportSvg(graph, filename, title) {
  if (!graph.lastRender || !graph.lastRender.nodes.length) return;
  save(new Blob([svgText(graph, title)], { type: "image/svg+xml" }), filename);
}
