// A Go program calling C through cgo, for the native unwinder (tests/test_unwind_go_cgo_bpf.py):
//
//	plain:    runtime.goexit -> runtime.main -> main.main -> main.plain1 -> main._Cfunc_c_leaf -> runtime.cgocall
//	          -> runtime.asmcgocall (onto the system stack) -> _cgo_..._Cfunc_c_leaf -> c_leaf
//	callback: ... main.level1 -> C c_outer -> c_mid -> goCallback (Go, exported) -> main.goMid -> C c_leaf
//
// Usage: fid_cgo SECONDS [plain|callback]. Built with `go build` in this directory.
package main

/*
#include <stdint.h>
uint64_t c_outer(uint64_t x);
uint64_t c_leaf(uint64_t x);
*/
import "C"

import (
	"os"
	"strconv"
	"time"
)

var sink C.uint64_t

//export goCallback
func goCallback(x C.uint64_t) C.uint64_t { return goMid(x) + 1 }

//go:noinline
func goMid(x C.uint64_t) C.uint64_t { return C.c_leaf(x) + 1 }

//go:noinline
func level1(x C.uint64_t) C.uint64_t { return C.c_outer(x) + 1 }

//go:noinline
func plain1(x C.uint64_t) C.uint64_t { return C.c_leaf(x) + 1 }

func main() {
	secs, _ := strconv.ParseFloat(os.Args[1], 64)
	call := plain1
	if len(os.Args) > 2 && os.Args[2] == "callback" {
		call = level1
	}
	until := time.Now().Add(time.Duration(secs * float64(time.Second)))
	for time.Now().Before(until) {
		for i := 0; i < 100; i++ {
			sink += call(sink)
		}
	}
}
