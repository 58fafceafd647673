// A Node.js program whose hot code is JIT-compiled: top -> middle -> leaf (V8 inlines and OSRs them;
// run with --perf-basic-prof to name the JIT code). Usage: node fid_node.js SECONDS
function leaf(n) { let s = 0; for (let i = 0; i < n; i++) { s += i * i % 7; } return s; }
function middle(n) { return leaf(n) + 1; }
function top() {
  const until = Date.now() + parseFloat(process.argv[2]) * 1000;
  let t = 0;
  while (Date.now() < until) { t += middle(100000); }
  return t;
}
top();
