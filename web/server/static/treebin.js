// Reads the flame graph's binary form (/api/v1/flamegraph?format=binary, web/query/treebin.py) in place:
// each level's columns become typed arrays over the answer's buffer (no parse, no copy), so a 100k-node
// graph is ready to draw in about the time its names take to split. The result is the JSON payload's
// keys, with `columnar` (the levels as FlameGraph keeps them) instead of `levels`; the per-name lists
// (kinds, modules, locations) are built only when first asked for (`tables` answers single names).

const TABLES = ["kinds", "modules", "locations"];
// Number types of the values and table indices (the server sends the narrowest that holds them all).
const ARRAYS = { u1: Uint8Array, u2: Uint16Array, u4: Uint32Array, f8: Float64Array };
const align = (n) => n + (-n & 7);
const camel = (s) => s.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

export function decodeTree(buf) {
  const u8 = new Uint8Array(buf), dv = new DataView(buf);
  if (u8.length < 12 || String.fromCharCode(u8[0], u8[1], u8[2], u8[3]) !== "PFT1") {
    throw new Error("the answer is not a podflame binary tree");
  }
  const text = new TextDecoder();
  const hlen = dv.getUint32(4, true);
  const header = JSON.parse(text.decode(u8.subarray(8, 8 + hlen)));
  let pos = align(8 + hlen);
  const nb = header.names_bytes;
  const names = nb || header.levels.length ? text.decode(u8.subarray(pos, pos + nb)).split("\0") : [];
  pos = align(pos + nb);
  const tables = {};
  const Index = ARRAYS[header.index_type || "u4"], Value = ARRAYS[header.value_type || "f8"];
  if (!Index || !Value) throw new Error("the answer's binary tree has an unknown number type");
  for (const key of TABLES) {
    tables[key] = { values: header.tables[key], index: new Index(buf, pos, names.length) };
    pos = align(pos + Index.BYTES_PER_ELEMENT * names.length);
  }
  const columnar = header.levels.map((n) => {
    const lv = { n };
    for (const c of header.columns) { lv[camel(c)] = new Value(buf, pos, n); pos += Value.BYTES_PER_ELEMENT * n; }
    pos = align(pos);
    lv.name = new Int32Array(buf, pos, n);
    lv.parent = new Int32Array(buf, pos + 4 * n, n);
    pos = align(pos + 8 * n);
    return lv;
  });
  const tlen = dv.getUint32(buf.byteLength - 4, true);
  const tail = JSON.parse(text.decode(u8.subarray(buf.byteLength - 4 - tlen, buf.byteLength - 4)));
  const out = { ...header, ...tail, names, columnar, tables };
  for (const k of ["levels", "columns", "names_bytes", "value_type", "index_type"]) delete out[k];
  for (const key of TABLES) {
    let list = null;
    Object.defineProperty(out, key, {
      enumerable: true,
      get() {
        if (!list) {
          const { values, index } = tables[key];
          list = new Array(index.length);
          for (let i = 0; i < index.length; i++) list[i] = values[index[i]];
        }
        return list;
      },
    });
  }
  return out;
}
