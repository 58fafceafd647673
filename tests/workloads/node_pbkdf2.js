// node spinning in OpenSSL's SHA-512 (PBKDF2-HMAC on the main thread): tests/test_unwind_sparse_cfi_bpf.py.
// Usage: node node_pbkdf2.js SECONDS
const crypto = require('crypto');
const end = Date.now() + 1000 * parseFloat(process.argv[2] || '5');
function derive() { return crypto.pbkdf2Sync('password', 'salt', 2000, 64, 'sha512'); }
while (Date.now() < end) derive();
