#!/usr/bin/env bash
# Line coverage of the Rust code under the test suite: every `cargo test` of
# scripts/test.sh (with its real MLflow, S3 and Prometheus servers), the binaries the
# tests start included, and the C/C++/Python binding tests and the Triton client test
# against the instrumented library and server, measured
# with cargo-llvm-cov and Debian's llvm-<N> (N = rustc's LLVM major version, so the
# profile format matches). By hand, not in CI: it rebuilds the workspace instrumented
# and runs the suite, several times slower instrumented than normally.
# One test is left out: the ONNX import's real-data comparison
# (`imported_models_give_onnx_runtime_logits`, 29 minutes instrumented against half a
# minute normally: counters in the SDK's hot kernel loops over 2 x 5,000 images); the
# import, calibration and writing code it runs is also run by the other import and
# compile tests. About 25 minutes on 2 cores from an empty target folder (18 when the
# dependencies are built).
#
#   scripts/coverage.sh        -> target/coverage/summary.txt (per file, the Rust
#                                 binaries' view), libcifar.json (the C ABI's files, from
#                                 the library), a table of the totals per crate and the
#                                 least covered files
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if ! command -v "llvm-cov-$llvm" >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing llvm-$llvm (Debian) for llvm-cov and llvm-profdata" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "llvm-$llvm" >/dev/null
  else
    echo "coverage: needs llvm-cov-$llvm (Debian package llvm-$llvm; rustc uses LLVM $llvm)" >&2
    exit 1
  fi
fi
command -v cargo-llvm-cov >/dev/null 2>&1 || cargo install --locked cargo-llvm-cov
LLVM_COV=$(command -v "llvm-cov-$llvm")
LLVM_PROFDATA=$(command -v "llvm-profdata-$llvm")
export LLVM_COV LLVM_PROFDATA
export CARGO_TERM_COLOR=never

scripts/deploy-tools.sh >/dev/null
CIFAR_MLFLOW=$(scripts/mlflow-venv.sh)
CIFAR_MOTO=$(scripts/moto-venv.sh)
CIFAR_PROMETHEUS=$(command -v prometheus || true)
export CIFAR_MLFLOW CIFAR_MOTO CIFAR_PROMETHEUS
out=target/coverage
mkdir -p "$out"
started=$SECONDS
cargo llvm-cov clean --workspace
cargo llvm-cov --no-report --release --locked --workspace -- --skip imported_models_give_onnx_runtime_logits
cargo llvm-cov --no-report --release --locked -p cifar-sdk --features candle --test device_engine
# The tests outside cargo run the instrumented builds too: the C ABI's C, C++ and Python
# tests (libcifar.so and .a) and the real Triton client against cifar-serve.
# (cargo-llvm-cov builds under <cargo's target folder>/llvm-cov-target.)
source scripts/target-dir.sh
cov="$target/llvm-cov-target"
(
  cov_env=$(cargo llvm-cov show-env --sh --release)
  eval "$cov_env"
  export CARGO_TARGET_DIR="$cov"
  export LLVM_PROFILE_FILE="$cov/cifar-edge-external-%p-%16m.profraw"
  export CIFAR_IMPORTED_MODELS=skip
  scripts/test-bindings.sh
  scripts/test-triton.sh
)
# Generated code (protobuf) and the fuzz harness are not what the figure is about.
ignore='(/\.cargo/|/rustc/|/target/|fuzz/)'
cargo llvm-cov report --release --ignore-filename-regex "$ignore" --summary-only >"$out/summary.txt"
cargo llvm-cov report --release --ignore-filename-regex "$ignore" --json --summary-only --output-path "$out/summary.json"
# cargo-llvm-cov reads the Rust binaries, not libcifar.so, the only object holding the
# C ABI's exported functions: the C ABI's files are counted from the library itself.
profdata=$(ls "$cov"/*.profdata | head -1)
"llvm-cov-$llvm" export -summary-only -instr-profile="$profdata" \
  --ignore-filename-regex "$ignore" "$cov/release/libcifar.so" >"$out/libcifar.json"
echo "coverage: measured in $(( (SECONDS - started) / 60 )) min; per file: $out/summary.txt" >&2

python3 - "$out/summary.json" "$out/libcifar.json" "$PWD" <<'EOF'
import json, sys, collections
data = json.load(open(sys.argv[1]))["data"][0]
root = sys.argv[3].rstrip("/") + "/"
ffi = [f for f in json.load(open(sys.argv[2]))["data"][0]["files"] if f["filename"].startswith(root + "ffi/")]
rows = [f for f in data["files"] if not f["filename"].startswith(root + "ffi/")] + ffi
covered = sum(f["summary"]["lines"]["covered"] for f in rows)
count = sum(f["summary"]["lines"]["count"] for f in rows)
print(f"total: {covered}/{count} lines covered, {100 * covered / max(count, 1):.1f}%")
crates = collections.defaultdict(lambda: [0, 0])
files = []
for f in rows:
    name = f["filename"].replace(root, "")
    lines = f["summary"]["lines"]
    crate = name.split("/")[0]
    crates[crate][0] += lines["covered"]
    crates[crate][1] += lines["count"]
    files.append((lines["percent"], lines["count"] - lines["covered"], lines["count"], name))
print("\n| crate | lines | covered |\n|---|---:|---:|")
for c, (cov, n) in sorted(crates.items()):
    print(f"| {c} | {n} | {100 * cov / max(n, 1):.1f}% |")
print("\n| least covered files (50+ lines) | lines | covered | uncovered |\n|---|---:|---:|---:|")
for pct, missed, n, name in sorted(x for x in files if x[2] >= 50)[:15]:
    print(f"| {name} | {n} | {pct:.1f}% | {missed} |")
EOF
