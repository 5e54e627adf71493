#!/usr/bin/env bash
# Side-by-side speed of cifar-sdk and ONNX Runtime: installs onnxruntime into a local
# virtual environment (benches/compare/.venv), builds sdk-bench and the trainer, exports
# each model to ONNX (`trainer export-onnx`), and prints one table with batch 1, 64 and
# 256 at 1 and 2 threads, f32 and int8 (QDQ for ONNX Runtime), measured in interleaved
# rounds, then the engine's targets against ONNX Runtime's best (compare.py).
#
#   benches/compare/compare.sh                      # the benchmark models: fixtures/models/{cpu,resnet}-*.cifar
#   benches/compare/compare.sh NAME=RUN_DIR ...     # models compiled in runs (model-f32/int8.cifar)
#   benches/compare/compare.sh imported             # the ONNX fixtures (fixtures/onnx/*.onnx), imported
#   benches/compare/compare.sh NAME=MODEL.onnx ...  # any ONNX file `trainer import-onnx` takes
#
# An ONNX model is imported (`trainer import-onnx`, f32 and int8, calibrated on DATA,
# default data/cifar10); ONNX Runtime runs the original file for f32 and, for int8, the
# QDQ export of the imported int8 file (ONNX Runtime's int8 kernels on the same scales).
#   COMPARE_ARGS="--rounds 5 --threads 2" benches/compare/compare.sh   # options of compare.py
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=benches/compare/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check onnxruntime==1.32.0 numpy
cargo build --release --locked -p cifar-benches --bin sdk-bench -p cifar-trainer >&2
source scripts/target-dir.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
specs=()
add() { # NAME F32.cifar INT8.cifar
  for p in f32 int8; do
    local cifar=$2
    [ $p = int8 ] && cifar=$3
    "$target"/release/trainer export-onnx "$cifar" -o "$work/$1-$p.onnx" --no-check >&2
  done
  specs+=(--model "$1=$2=$3=$work/$1-f32.onnx=$work/$1-int8.onnx")
}
add_onnx() { # NAME MODEL.onnx
  local data="${DATA:-data/cifar10}"
  for p in f32 int8; do
    "$target"/release/trainer import-onnx "$2" --data "$data" --precision $p -o "$work/$1-$p.cifar" >&2
  done
  "$target"/release/trainer export-onnx "$work/$1-int8.cifar" -o "$work/$1-int8.onnx" --no-check >&2
  specs+=(--model "$1=$work/$1-f32.cifar=$work/$1-int8.cifar=$2=$work/$1-int8.onnx")
}
if [ $# -eq 0 ]; then
  for family in cpu resnet; do add $family "fixtures/models/$family-f32.cifar" "fixtures/models/$family-int8.cifar"; done
else
  for arg in "$@"; do
    name=${arg%%=*}; dir=${arg#*=}
    if [ "$arg" = imported ]; then
      for f in fixtures/onnx/*.onnx; do add_onnx "$(basename "$f" .onnx)" "$f"; done
    elif [[ "$dir" == *.onnx ]]; then
      add_onnx "$name" "$dir"
    else
      add "$name" "$dir/model-f32.cifar" "$dir/model-int8.cifar"
    fi
  done
fi
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, flags: $(grep -m1 -o -w -E 'avx2|avx512f|fma|avx512_vnni|avx_vnni' /proc/cpuinfo | sort -u | xargs)"
"$venv/bin/python" benches/compare/compare.py --sdk-bench "$target"/release/sdk-bench "${specs[@]}" ${COMPARE_ARGS:-}
