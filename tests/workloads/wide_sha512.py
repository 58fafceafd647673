"""OpenSSL's SHA-512 assembly under Python's hashlib: sha512_block_data_order (every variant: plain, AVX,
AVX2) saves the entry rsp in a stack slot and says CFA = *(rsp + n) + 8 (tests/test_unwind_wide_bpf.py).
Spins in <module> -> digest_loop -> hashlib -> libcrypto's SHA512_Update -> the block function."""

import hashlib

DATA = b"x" * (1 << 20)


def digest_loop():
    while True:
        hashlib.sha512(DATA).digest()


digest_loop()
