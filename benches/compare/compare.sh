#!/usr/bin/env bash
# Side-by-side speed of cifar-sdk and ONNX Runtime: installs onnxruntime into a local
# virtual environment (benches/compare/.venv), builds sdk-bench and the trainer, exports
# each model to ONNX (`trainer export-onnx`), and prints one table with batch 1, 64 and
# 256 at 1 and 2 threads, f32 and int8 (QDQ for ONNX Runtime).
#
#   benches/compare/compare.sh                      # the configs/cpu.toml fixture models
#   benches/compare/compare.sh NAME=RUN_DIR ...     # models compiled in runs (model-f32/int8.cifar)
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=benches/compare/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check onnxruntime numpy
cargo build --release --locked -p cifar-benches --bin sdk-bench -p cifar-trainer >&2
source scripts/target-dir.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
specs=()
add() { # NAME PRECISION CIFAR
  "$target"/release/trainer export-onnx "$3" -o "$work/$1-$2.onnx" --no-check >&2
  specs+=(--model "$1=$3=$work/$1-$2.onnx")
}
if [ $# -eq 0 ]; then
  for p in f32 int8; do add cpu.toml $p "fixtures/models/cpu-$p.cifar"; done
else
  for arg in "$@"; do
    name=${arg%%=*}; dir=${arg#*=}
    for p in f32 int8; do add "$name" $p "$dir/model-$p.cifar"; done
  done
fi
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, flags: $(grep -m1 -o -w -E 'avx2|avx512f|fma|avx512_vnni|avx_vnni' /proc/cpuinfo | sort -u | xargs)"
"$venv/bin/python" benches/compare/compare.py --sdk-bench "$target"/release/sdk-bench "${specs[@]}"
