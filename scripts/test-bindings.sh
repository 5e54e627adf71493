#!/usr/bin/env bash
# Tests of the C ABI and its bindings, run by scripts/test.sh:
#   - builds libcifar.so / libcifar.a and installs them with cifar.pc (scripts/install-lib.sh),
#   - checks the exported symbols against bindings/c/symbols.txt,
#   - dumps the Rust SDK's logits on the fixtures (the bit-for-bit reference),
#   - builds the C test suite against the shared and the static library through
#     pkg-config and runs both, the shared one under valgrind,
#   - builds and runs the C and C++ examples and the C++ tests,
#   - installs the Python package into a virtual environment and runs pytest, including
#     an ONNX model imported by the trainer against ONNX Runtime's logits.
# (include/cifar.h's freshness is checked by `cargo test -p cifar-ffi --test header`.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
root="$PWD"
source scripts/target-dir.sh
prefix="$target/cifar-prefix"
work="$target/bindings-test"
mkdir -p "$work"
scripts/install-lib.sh "$prefix" >/dev/null
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_BACKTRACE=0

echo "== exported symbols"
nm -D --defined-only "$prefix/lib/libcifar.so" | awk '{print $3}' | sort > "$work/symbols.txt"
if ! diff -u bindings/c/symbols.txt "$work/symbols.txt"; then
  echo "the exported symbols changed: update bindings/c/symbols.txt (and CIFAR_ABI_VERSION if one was removed or changed)" >&2
  exit 1
fi
soname=$(readelf -d "$prefix/lib/libcifar.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[ "$soname" = "libcifar.so.$(sed -n 's/^#define CIFAR_ABI_VERSION //p' include/cifar.h)" ] || { echo "bad soname $soname" >&2; exit 1; }

echo "== Rust SDK reference logits"
cargo run -q --release --locked -p cifar-ffi --example dump_logits -- fixtures "$work/rust_logits.txt"

cflags="-Wall -Wextra -Werror -O1 -g"
echo "== C tests (shared library, under valgrind)"
cc $cflags bindings/c/tests/test_cifar.c $(pkg-config --cflags --libs cifar) -lpthread -o "$work/test_c_shared"
valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
  "$work/test_c_shared" fixtures "$work/rust_logits.txt" 2> >(grep -v '^ \|^thread\|^note:\|index out of bounds' >&2)

echo "== C tests (static library)"
static_libs=$(pkg-config --static --libs cifar | sed 's/-lcifar\b/-l:libcifar.a/')
cc $cflags bindings/c/tests/test_cifar.c $(pkg-config --cflags cifar) $static_libs -lpthread -o "$work/test_c_static"
if ldd "$work/test_c_static" | grep -q libcifar; then echo "the static test links libcifar.so" >&2; exit 1; fi
"$work/test_c_static" fixtures "$work/rust_logits.txt" 2> >(grep -v '^ \|^thread\|^note:\|index out of bounds' >&2)

echo "== C and C++ examples"
cc $cflags bindings/c/examples/classify.c $(pkg-config --cflags --libs cifar) -o "$work/classify_c"
"$work/classify_c" fixtures/models/tiny-int8.cifar fixtures/images/*.png > "$work/classify_c.txt"
c++ -std=c++17 $cflags -I bindings/cpp bindings/cpp/examples/classify.cpp $(pkg-config --cflags --libs cifar) -o "$work/classify_cpp"
"$work/classify_cpp" fixtures/models/tiny-int8.cifar fixtures/images/*.png > "$work/classify_cpp.txt"
[ "$(wc -l < "$work/classify_c.txt")" = 10 ] && [ "$(wc -l < "$work/classify_cpp.txt")" = 10 ]

echo "== C++ tests"
c++ -std=c++17 $cflags -I bindings/cpp bindings/cpp/tests/test_cifar.cpp $(pkg-config --cflags --libs cifar) -lpthread \
  -o "$work/test_cpp"
"$work/test_cpp" fixtures "$work/rust_logits.txt"

# An ONNX model imported by the trainer, for the Python tests to run through the C ABI
# against ONNX Runtime's logits (skipped without the CIFAR-10 archive).
imported="$(scripts/imported-models.sh)"
[ -n "$imported" ] || echo "warning: no CIFAR-10 archive; the imported-model Python test is skipped" >&2

echo "== Python tests"
venv="$target/py-bindings"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check pytest numpy ./bindings/python
CIFAR_LIBRARY="$prefix/lib/libcifar.so" CIFAR_FIXTURES="$root/fixtures" CIFAR_RUST_LOGITS="$work/rust_logits.txt" \
  CIFAR_IMPORTED="$imported" "$venv/bin/python" -m pytest -q -p no:cacheprovider bindings/python/tests
echo "bindings: all passed"
