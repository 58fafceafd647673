// C++ hot paths with a known chain from main, for tests/test_unwind_wide_bpf.py and bench/unwind.py
// --wide, built by them with g++ -O2/-O3/-Os (no frame pointers) and other flags:
//   function: main -> run_function -> std::function's invoker -> the lambda (operator()) -> wide_leaf
//   template: main -> run_template -> Stage<3>::step -> Stage<2>::step -> Stage<1>::step -> wide_leaf
//   catch:    main -> run_catch -> in_catch -> wide_leaf, inside a catch block (gcc puts it in
//             run_catch's .cold part: its own FDE) of an exception thrown through a frame with a
//             destructor (a landing pad that cleans up and resumes) every iteration
//   thread:   two std::thread workers: clone3 -> start_thread -> libstdc++'s thread routine ->
//             std::thread::_State_impl<...>::_M_run -> ... -> worker -> run_function -> ... -> wide_leaf;
//             main waits in join
// Usage: wide_cpp MODE SECONDS
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <thread>
#include <vector>

#define KEEP __attribute__((noinline))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory")

static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

volatile unsigned long sink;

extern "C" KEEP unsigned long wide_leaf(unsigned long x) {
    for (int i = 0; i < 3000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

KEEP unsigned long run_function(double until, unsigned salt) {
    std::vector<std::function<unsigned long(unsigned long)>> fs;
    for (unsigned i = 0; i < 4; i++)
        fs.emplace_back([i, salt](unsigned long x) KEEP {
            unsigned long r = wide_leaf(x ^ (i + salt));
            NO_SIBLING_CALL;
            return r + 1;
        });
    unsigned long s = 0;
    while (now() < until)
        for (auto &f : fs) s += f(s);
    return s;
}

template <int N> struct Stage {
    KEEP static unsigned long step(unsigned long x) {
        unsigned long r = Stage<N - 1>::step(x + N);
        NO_SIBLING_CALL;
        return r ^ N;
    }
};

template <> struct Stage<0> {
    static unsigned long step(unsigned long x) { return wide_leaf(x); }
};

KEEP unsigned long run_template(double until) {
    unsigned long s = 0;
    while (now() < until) s += Stage<3>::step(s);
    return s;
}

struct Guard {  // a destructor: the throwing path runs a cleanup landing pad, then resumes unwinding
    unsigned long *where;
    ~Guard() { *where += 1; }
};

KEEP void throw_through(unsigned long *count, int i) {
    Guard g{count};
    if (i >= 0) throw std::runtime_error("hot");
    NO_SIBLING_CALL;
}

KEEP unsigned long in_catch(unsigned long x) {
    unsigned long r = 0;
    for (int k = 0; k < 20; k++) r += wide_leaf(x + k);
    NO_SIBLING_CALL;
    return r;
}

KEEP unsigned long run_catch(double until) {
    unsigned long s = 0, count = 0;
    for (int i = 0; now() < until; i++) {
        try {
            throw_through(&count, i);
        } catch (const std::exception &e) {
            s += in_catch(s + (unsigned char)e.what()[0]);
        }
    }
    return s + count;
}

KEEP void worker(double until, unsigned salt) {
    sink += run_function(until, salt);
    NO_SIBLING_CALL;
}

KEEP void run_threads(double until) {
    std::thread a(worker, until, 1u), b(worker, until, 2u);
    a.join();
    b.join();
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    double until = now() + atof(argv[2]);
    if (!strcmp(argv[1], "function")) sink = run_function(until, 0);
    else if (!strcmp(argv[1], "template")) sink = run_template(until);
    else if (!strcmp(argv[1], "catch")) sink = run_catch(until);
    else if (!strcmp(argv[1], "thread")) run_threads(until);
    else return 2;
    std::printf("%lu\n", (unsigned long)sink);
    return 0;
}
