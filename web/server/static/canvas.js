// A canvas sized for the device pixel ratio: `w` x `h` CSS pixels, backed by w*dpr x h*dpr pixels (sharp on
// HiDPI screens), its context scaled so drawing code works in CSS pixels, cleared. Shared by the flame
// graph and the CPU chart.
export function sizeCanvas(canvas, w, h) {
  const dpr = window.devicePixelRatio || 1;
  const pw = Math.round(w * dpr), ph = Math.round(h * dpr);
  // Setting a size reallocates the backing store even when it is unchanged: only when it changes.
  if (canvas.width !== pw) canvas.width = pw;
  if (canvas.height !== ph) canvas.height = ph;
  if (canvas.style.height !== h + "px") canvas.style.height = h + "px";
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return ctx;
}

// "#rrggbb" for an "hsl(H S% L%)" colour (other colours as given), kept per colour: a canvas parses a hex
// colour on a fast path and space-separated hsl() through the full CSS parser, which for the ~2,000 frames of
// a 100k-node graph was most of a draw.
const hexCache = new Map();
export function fastColor(color) {
  let hex = hexCache.get(color);
  if (hex !== undefined) return hex;
  const m = /^hsl\((\d+(?:\.\d+)?) (\d+(?:\.\d+)?)% (\d+(?:\.\d+)?)%\)$/.exec(color);
  if (!m) hex = color;
  else {
    const h = Number(m[1]) % 360, s = Number(m[2]) / 100, l = Number(m[3]) / 100;
    const a = s * Math.min(l, 1 - l);
    const f = (n) => {
      const k = (n + h / 30) % 12;
      return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1)))).toString(16).padStart(2, "0");
    };
    hex = "#" + f(0) + f(8) + f(4);
  }
  if (hexCache.size > 4096) hexCache.clear();  // diff shades and names are bounded, but stay bounded anyway
  hexCache.set(color, hex);
  return hex;
}
