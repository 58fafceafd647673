// A Go program (frame pointers, .debug_frame only, no libc) spinning under a known chain:
// runtime.goexit -> runtime.main -> main.main -> main.level1 -> main.level2 -> main.leafWork.
// Usage: fid_go SECONDS. Built by bench/unwind.py --matrix and tests/test_fidelity_native_bpf.py.
package main

import (
	"os"
	"strconv"
	"time"
)

//go:noinline
func leafWork(x uint64) uint64 {
	for i := 0; i < 4000; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	return x
}

//go:noinline
func level2(x uint64) uint64 { return leafWork(x) + 1 }

//go:noinline
func level1(x uint64) uint64 { return level2(x) + 1 }

var sink uint64

func main() {
	secs, _ := strconv.ParseFloat(os.Args[1], 64)
	until := time.Now().Add(time.Duration(secs * float64(time.Second)))
	for time.Now().Before(until) {
		sink += level1(sink)
	}
}
