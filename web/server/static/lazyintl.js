// Intl formatters built on first use, and integers grouped without one.
//
// The first Intl object a page builds loads ICU's locale data: 20-110 ms in headless Chromium on this machine
// (measured in a fresh page). Built at module start, the page's ten formatters held the first graph back by as
// much; now the first picture needs none, and each is built when a text first needs it.

export function lazyIntl(make) {
  let real = null;
  const get = () => (real ||= make());
  return {
    format: (v) => get().format(v),
    compare: (a, b) => get().compare(a, b),
  };
}

const intIntl = lazyIntl(() => new Intl.NumberFormat("en-US"));

// "1,234,567", as Intl.NumberFormat("en-US") writes it; safe integers without Intl (a count, the usual case).
export function formatInt(v) {
  return Number.isSafeInteger(v) ? String(v).replace(/\B(?=(\d{3})+$)/g, ",") : intIntl.format(v);
}
