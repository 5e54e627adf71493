#!/usr/bin/env bash
# The pruning curve in BENCHMARKS.md ("Pruning"): prunes a finished configs/cpu.toml run
# to keep 0.7, 0.5 and 0.35 of its channels and the committed ResNet run
# (fixtures/runs/resnet) to 0.7, fine-tunes each within the parent's training time,
# compiles every run to f32 and int8, and times the int8 files side by side with
# `trainer prune-curve` (a Markdown table on stdout, PNG plots in benches/prune/).
#
#   benches/prune/curve.sh runs/<id>     # a finished `trainer fit --config configs/cpu.toml`
#   OUT=runs/curve benches/prune/curve.sh runs/<id>
#
# About 45 minutes on 2 cores. Runs that already finished are kept; interrupted ones
# resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
parent=${1:?usage: benches/prune/curve.sh RUN_DIR (a finished configs/cpu.toml run)}
out=${OUT:-runs/prune-curve}
cargo build --release --locked -p cifar-trainer >&2
source scripts/target-dir.sh
trainer="$target/release/trainer"
mkdir -p "$out"

prune() { # DIR ARGS...: prune into DIR unless it is done; resume it if it was interrupted
  local dir=$1
  shift
  if [ -f "$dir/summary.json" ]; then return; fi
  if [ -f "$dir/prune.json" ]; then
    "$trainer" prune --resume "$dir"
  else
    "$trainer" prune --run-dir "$dir" "$@"
  fi
}
compile() { # RUN: f32 and int8 files and reports, unless present
  for p in f32 int8; do
    [ -f "$1/compile-$p.json" ] || "$trainer" compile --run "$1" --precision $p >&2
  done
}

for keep in 0.7 0.5 0.35; do
  prune "$out/cpu-$keep" --run "$parent" --keep $keep --finetune-epochs 11 train.lr=0.4
done
prune "$out/resnet-0.7" --run fixtures/runs/resnet --keep 0.7 --multiple 8 --finetune-epochs 20
for run in "$parent" "$out"/cpu-0.7 "$out"/cpu-0.5 "$out"/cpu-0.35 "$out"/resnet-0.7; do
  compile "$run"
done
"$trainer" prune-curve "1.0=$parent" "0.7=$out/cpu-0.7" "0.5=$out/cpu-0.5" "0.35=$out/cpu-0.35" \
  --png benches/prune/cpu-curve.png --json "$out/cpu-curve.json" ${CURVE_ARGS:---rounds 9 --seconds 0.5}
# The committed ResNet run's reports and files (fixtures/models) are its compiled form.
"$trainer" prune-curve "1.0=fixtures/runs/resnet" "0.7=$out/resnet-0.7" \
  --png benches/prune/resnet-curve.png --json "$out/resnet-curve.json" ${CURVE_ARGS:---rounds 7}
