#!/usr/bin/env bash
# The ONNX fixture MobileNetV2 (fixtures/onnx: PyTorch's export, with depthwise
# convolutions, ReLU6 and residual adds) imported by `trainer import-onnx`, f32 and int8,
# for the binding and server tests to check against ONNX Runtime's logits. Made once per
# target folder and made again when the fixture or the trainer changes; prints the
# folder, which holds
#
#   mobilenetv2-f32.cifar, mobilenetv2-int8.cifar
#   validation-1000.rgb8   the first 1,000 validation images (HWC RGB8, the images of
#                          fixtures/onnx/mobilenetv2.ort-logits.f32)
#
# Needs the CIFAR-10 archive (../shared/data); prints nothing and exits 0 without it, or
# with CIFAR_IMPORTED_MODELS=skip (scripts/coverage.sh: importing with an instrumented
# trainer takes minutes, and the import's code is measured by the cargo tests). Uses the
# trainer that scripts/test.sh's `cargo test` built.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/target-dir.sh
archive="$PWD/../shared/data/cifar10-train-jpg.tar.gz"
[ -f "$archive" ] && [ "${CIFAR_IMPORTED_MODELS:-}" != skip ] || exit 0
dir="$target/imported-models"
# What the files were made from: the fixture and the trainer binary.
made_from() { sha256sum fixtures/onnx/mobilenetv2.onnx "$target/release/trainer" 2>/dev/null | cut -d' ' -f1; }
if [ "$(cat "$dir/done" 2>/dev/null)" != "$(made_from)" ]; then
  # The build of scripts/test.sh's `cargo test` (a `cargo build -p` would resolve other
  # features and build crates again).
  cargo test -q --release --locked --workspace --no-run >&2
  trainer="$target/release/trainer"
  rm -rf "$dir" && mkdir -p "$dir"
  "$trainer" data import "$archive" --out "$dir/cifar10" -q >/dev/null
  for p in f32 int8; do
    "$trainer" import-onnx fixtures/onnx/mobilenetv2.onnx --data "$dir/cifar10" --precision $p \
      -o "$dir/mobilenetv2-$p.cifar" -q >/dev/null 2>"$dir/import-$p.log"
  done
  python3 - "$dir/cifar10/train.safetensors" "$dir/validation-1000.rgb8" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
(size,) = struct.unpack("<Q", raw[:8])
header, body = json.loads(raw[8 : 8 + size]), raw[8 + size :]
def tensor(name):
    start, end = header[name]["data_offsets"]
    return body[start:end]
images, val = tensor("images"), tensor("val_indices")
idx = struct.unpack("<1000I", val[:4000])
open(sys.argv[2], "wb").write(b"".join(images[i * 3072 : (i + 1) * 3072] for i in idx))
PY
  rm -rf "$dir/cifar10"
  made_from >"$dir/done"
fi
echo "$dir"
