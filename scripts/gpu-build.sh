#!/usr/bin/env bash
# Builds the `cuda` binaries here (no GPU needed) and stages what the GPU machine needs
# in .gpu-carry/ (git-ignored): the stripped trainer and sdk-bench binaries (xz), the
# training data, the reference PyTorch script and (with AIRBENCH94=path) airbench94. scripts/gpu-measure.sh runs there.
# About 20 minutes on 2 cores from clean (candle's CUDA kernels), a minute after that.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-env.sh
cargo build --release --locked -p cifar-trainer -p cifar-benches --features cifar-trainer/cuda,cifar-benches/cuda \
  --bin trainer --bin sdk-bench
stage=.gpu-carry
rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/data"
for b in trainer sdk-bench; do
  strip -o "$stage/bin/$b" "$CARGO_TARGET_DIR/release/$b"
done
# About 110 MB stripped (candle's PTX is text): compressed to ~14 MB, since the tree
# that travels to the GPU machine is limited to 64 MiB.
tar -C "$stage" -cJf "$stage/bin.tar.xz" bin && rm -rf "$stage/bin"
cp ../shared/data/cifar10-train-jpg.tar.gz "$stage/data/" 2>/dev/null ||
  echo "warning: ../shared/data/cifar10-train-jpg.tar.gz not found; stage the data yourself" >&2
cp benches/gpu/torch_reference.py "$stage/"
# airbench94, the reference (never committed: it is airbench's code). AIRBENCH94 names
# legacy/airbench94.py of a KellerJordan/cifar10-airbench checkout.
if [ -n "${AIRBENCH94:-}" ]; then
  python3 benches/gpu/stage_airbench.py "$AIRBENCH94" "$stage/airbench94.py"
else
  echo "note: AIRBENCH94 is not set: airbench94 is not staged and gpu-measure.sh will skip it" >&2
fi
du -sh "$stage"/* "$stage"
echo "staged $stage: run scripts/gpu-measure.sh on the GPU machine with .gpu-carry carried"
