// A C++ program whose FDEs carry a personality routine and an LSDA ('zPLR' CIEs, indirect
// pcrel personality pointers): the augmentation paths the unwind-table tests check against readelf.
#include <cstdio>
#include <stdexcept>
#include <string>

__attribute__((noinline)) int may_throw(int n) {
    if (n > 3) throw std::runtime_error("too big: " + std::to_string(n));
    return n * 2;
}

int main(int argc, char **) {
    try {
        std::string s(static_cast<size_t>(argc) * 10, 'x');
        std::printf("%d %zu\n", may_throw(argc + 3), s.size());
    } catch (const std::exception &e) {
        std::puts(e.what());
    }
    return 0;
}
