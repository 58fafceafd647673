"""Native unwinding without frame pointers: compact unwind tables built from a binary's CFI
(table.py, cfi.py, build.py, cache.py) for the in-kernel unwinder that walks them."""
