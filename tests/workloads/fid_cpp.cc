// C++ hot paths a service spends its time in, each under a known chain from main, for the fidelity
// matrix (tests/test_fidelity_native_bpf.py, bench/unwind.py --matrix):
//   sort:    main -> run_sort -> std::sort (libstdc++'s introsort, inlined templates) -> the lambda
//   virtual: main -> run_virtual -> Shape::area through a vtable -> Square/Circle::area -> spin_area
//   throw:   main -> run_throw -> thrower -> __cxa_throw -> libgcc's unwinder (a throw caught each
//            iteration: the samples sit in libstdc++ and libgcc_s, code the program did not build)
// Usage: fid_cpp MODE SECONDS. Built -O2 without frame pointers by the tests.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

__attribute__((noinline)) unsigned long key_of(unsigned v) {
    unsigned long x = v;
    for (int i = 0; i < 8; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x >> 7;
}

__attribute__((noinline)) unsigned long run_sort(double until) {
    std::vector<unsigned> v(20000);
    unsigned long sum = 0;
    while (now() < until) {
        for (size_t i = 0; i < v.size(); i++) v[i] = (unsigned)(i * 2654435761u);
        std::sort(v.begin(), v.end(), [](unsigned a, unsigned b) { return key_of(a) < key_of(b); });
        sum += v[0];
    }
    return sum;
}

struct Shape {
    virtual ~Shape() = default;
    virtual double area(int n) const = 0;
};

__attribute__((noinline)) double spin_area(double x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += x * i / (i + 1.0);
    return s;
}

struct Square : Shape {
    double side = 2;
    __attribute__((noinline)) double area(int n) const override { return spin_area(side * side, n); }
};

struct Circle : Shape {
    double r = 1;
    __attribute__((noinline)) double area(int n) const override { return spin_area(3.14159 * r * r, n) + 1; }
};

__attribute__((noinline)) double run_virtual(double until, int which) {
    std::vector<std::unique_ptr<Shape>> shapes;
    for (int i = 0; i < 64; i++) {
        if ((i ^ which) & 1) shapes.emplace_back(new Square);
        else shapes.emplace_back(new Circle);
    }
    double total = 0;
    while (now() < until)
        for (auto &s : shapes) total += s->area(2000);
    return total;
}

__attribute__((noinline)) void thrower(int i) {
    if (i >= 0) throw std::runtime_error("no");
}

__attribute__((noinline)) long run_throw(double until) {
    long caught = 0;
    for (int i = 0; now() < until; i++) {
        try {
            thrower(i);
        } catch (const std::exception &e) {
            caught += e.what()[0];
        }
    }
    return caught;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    double until = now() + atof(argv[2]);
    if (!strcmp(argv[1], "sort")) std::printf("%lu\n", run_sort(until));
    else if (!strcmp(argv[1], "virtual")) std::printf("%f\n", run_virtual(until, argc));
    else if (!strcmp(argv[1], "throw")) std::printf("%ld\n", run_throw(until));
    else return 2;
    return 0;
}
