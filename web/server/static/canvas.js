// A canvas sized for the device pixel ratio: `w` x `h` CSS pixels, backed by w*dpr x h*dpr pixels (sharp on
// HiDPI screens), its context scaled so drawing code works in CSS pixels, cleared. Shared by the flame
// graph and the CPU chart.
export function sizeCanvas(canvas, w, h) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  canvas.style.height = h + "px";
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return ctx;
}
