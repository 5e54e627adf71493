#!/usr/bin/env bash
# The airbench94 parity harness (by hand, not in CI: it installs PyTorch from PyPI, about
# 5 GB with its CUDA wheels, once, into .parity-venv).
#
#   benches/parity/run.sh [key=value ...]        # steps: 20 traced steps of configs/gpu-speedrun.toml
#                                                # (widths 64/256/256, batch 1024; ~5 min on 2 cores)
#   benches/parity/run.sh epoch [key=value ...]  # one epoch at widths 32/64/128 (WIDTHS), ours and airbench94
#
# Environment: STEPS (default 20), BACKEND (fast: our CPU kernels; candle: candle's ops,
# the math a GPU run executes), CONFIG (default configs/gpu-speedrun.toml), SEEDS (epoch
# mode, default "0 1"), OUT (default runs/parity). Overrides go to the traced config, e.g.
# `model.bn_scale=true` or `model.widths=[32,64,128]`.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.parity-venv
if ! "$venv/bin/python" -c 'import torch, safetensors, numpy' 2>/dev/null; then
  echo "parity: installing PyTorch into $venv (once)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.15.0 numpy==2.4.6 safetensors==0.8.0
fi
cargo build --release --locked -p cifar-trainer
source scripts/target-dir.sh
trainer="$target/release/trainer"
[ -f data/cifar10/train.safetensors ] || "$trainer" data import ../shared/data/cifar10-train-jpg.tar.gz --out data/cifar10
config="${CONFIG:-configs/gpu-speedrun.toml}"
out="${OUT:-runs/parity}"
harness=benches/parity/airbench_parity.py
# The traced recipe runs on the CPU in f32 with the host loader whatever the config says.
cpu=(device=cpu train.precision=f32 train.loader=host checkpoint.every_secs=0)

if [ "${1:-}" = epoch ]; then
  shift
  widths="${WIDTHS:-32,64,128}"
  # A trained batch-norm scale on our side means airbench's BatchNorm(weight=True) on theirs.
  bn_weight=""
  for o in "$@"; do [ "$o" = model.bn_scale=true ] && bn_weight=--bn-weight; done
  mkdir -p "$out"
  printf '| seed | ours: val | ours: val TTA | airbench94: val | airbench94: val TTA |\n|---:|---:|---:|---:|---:|\n'
  for seed in ${SEEDS:-0 1}; do
    run="$out/epoch-s$seed"
    rm -rf "$run"
    # The recipe scaled to one epoch: airbench warms up over 23% of the steps.
    "$trainer" -q fit --config "$config" "${cpu[@]}" "model.widths=[$widths]" train.epochs=1 \
      train.warmup_epochs=0.23 seed="$seed" \
      --run-dir "$run" "$@" > "$run.log" 2>&1
    "$venv/bin/python" "$harness" train --widths "$widths" --epochs 1 --batch 1024 --seed "$seed" $bn_weight \
      > "$out/epoch-s$seed-airbench.json" 2> "$out/epoch-s$seed-airbench.log"
    python3 - "$run/summary.json" "$out/epoch-s$seed-airbench.json" "$seed" <<'PY'
import json, sys
ours, theirs = json.load(open(sys.argv[1])), json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(f"| {sys.argv[3]} | {100*ours['val_accuracy']:.2f}% | {100*ours['val_accuracy_tta']:.2f}% "
      f"| {100*theirs['val_acc']:.2f}% | {100*theirs['val_acc_tta']:.2f}% |")
PY
  done
  exit 0
fi

trace="$out/trace-${BACKEND:-fast}"
"$trainer" trace --config "$config" "${cpu[@]}" "$@" --steps "${STEPS:-20}" --backend "${BACKEND:-fast}" --out "$trace"
"$venv/bin/python" "$harness" steps "$trace" --f64 --json "$trace/parity.json"
