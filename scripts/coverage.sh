#!/usr/bin/env bash
# Line coverage of the Rust test suite: every `cargo test` of scripts/test.sh (with its
# real MLflow, S3 and Prometheus servers), the binaries the tests start included, measured
# with cargo-llvm-cov and Debian's llvm-<N> (N = rustc's LLVM major version, so the
# profile format matches). By hand, not in CI: it rebuilds the workspace instrumented
# (28 minutes with one build job) and runs the suite, which is several times slower
# instrumented. One test is left out: the ONNX import's real-data comparison
# (`imported_models_give_onnx_runtime_logits`, 29 minutes instrumented against half a
# minute normally: counters in the SDK's hot kernel loops over 2 x 5,000 images); the
# import, calibration and writing code it runs is also run by the other import and
# compile tests. Plan on an hour on 2 cores.
#
#   scripts/coverage.sh        -> target/coverage/summary.txt (per file), a table of the
#                                 totals per crate and the least covered files
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
# Generated code (protobuf) and the fuzz harness are not what the figure is about.
ignore='(/\.cargo/|/rustc/|/target/|fuzz/)'
cargo llvm-cov report --release --ignore-filename-regex "$ignore" --summary-only >"$out/summary.txt"
cargo llvm-cov report --release --ignore-filename-regex "$ignore" --json --summary-only --output-path "$out/summary.json"
echo "coverage: measured in $(( (SECONDS - started) / 60 )) min; per file: $out/summary.txt" >&2

python3 - "$out/summary.json" "$PWD" <<'EOF'
import json, sys, collections
data = json.load(open(sys.argv[1]))["data"][0]
root = sys.argv[2].rstrip("/") + "/"
t = data["totals"]["lines"]
print(f"total: {t['covered']}/{t['count']} lines covered, {t['percent']:.1f}%")
crates = collections.defaultdict(lambda: [0, 0])
files = []
for f in data["files"]:
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
