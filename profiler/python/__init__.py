"""CPython frames from outside the process: find the interpreter (detect), its struct layouts (offsets),
its code objects' names and lines (code, lines), and a reference walk of its threads (walk)."""
