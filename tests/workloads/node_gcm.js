// AES-128-GCM sealing of 64 KiB buffers in a loop, through node's bundled OpenSSL (aesni_gcm_encrypt, whose
// CFA is rax + 8 across its calls): bench/unwind.py --wide `node-aes-128-gcm`.
const crypto = require('crypto');
const key = crypto.randomBytes(16), iv = crypto.randomBytes(12), buf = Buffer.alloc(1 << 16, 7);
function sealOne() {
  const c = crypto.createCipheriv('aes-128-gcm', key, iv);
  c.update(buf);
  c.final();
  return c.getAuthTag();
}
const until = Date.now() + 1000 * Number(process.argv[2] || 600);
while (Date.now() < until) for (let i = 0; i < 100; i++) sealOne();
