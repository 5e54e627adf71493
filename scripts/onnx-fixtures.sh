#!/usr/bin/env bash
# Remakes the ONNX import fixtures (fixtures/onnx/): trains small PyTorch CNNs briefly on
# the project's CIFAR-10 data, exports them to ONNX and records ONNX Runtime's logits
# (scripts/onnx_fixtures.py says which models and why). By hand, not in CI: it installs
# PyTorch from PyPI (several GB, once) into .parity-venv, the venv the airbench parity
# harness uses; training takes about 5 minutes per epoch of MobileNetV2 and 3 per epoch
# of ResNet-20 on 2 cores.
#
#   scripts/onnx-fixtures.sh                       # both, as committed (ResNet-20 3 epochs, MobileNetV2 10)
#   scripts/onnx-fixtures.sh --models resnet20     # one model; the other keeps its files
#   scripts/onnx-fixtures.sh --epochs 1            # every model 1 epoch (a quick check)
#
# Environment: VENV (another virtual environment to install into).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.parity-venv}"
if ! "$venv/bin/python" -c 'import torch, onnx, onnxruntime, onnxscript, numpy' 2>/dev/null; then
  echo "onnx-fixtures: installing PyTorch, ONNX and ONNX Runtime into $venv (once)" >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.15.0 numpy==2.4.6 \
    onnx==1.23.2 onnxruntime==1.32.0 onnxscript
fi
if [ ! -f data/cifar10/train.safetensors ]; then
  cargo build --release --locked -p cifar-trainer
  source scripts/target-dir.sh
  "$target/release/trainer" data import ../shared/data/cifar10-train-jpg.tar.gz --out data/cifar10
fi
exec "$venv/bin/python" scripts/onnx_fixtures.py "$@"
