#!/usr/bin/env bash
# CI's compile-only check of the `cuda` feature: the SDK's GPU engine and the trainer's
# CUDA training path are type-checked and linted (clippy -D warnings) against candle's
# and cudarc's CUDA APIs, on a machine with no GPU and no system CUDA.
#
# candle's .cu kernels are not compiled here (scripts/nvcc-check-only says why); the full
# build with the real nvcc is scripts/gpu-build.sh (about 20 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-env.sh
# The workspace's own target folder: the dependencies that do not change with the
# feature (most of them) are reused from the main lint run. The stand-in nvcc's empty
# kernels only ever land in candle-kernels' build output here, never in target/cuda.
export CARGO_TARGET_DIR="$PWD/target"
export NVCC="$PWD/scripts/nvcc-check-only"
cargo clippy --release --locked -p cifar-sdk -p cifar-trainer --features cuda --all-targets -- -D warnings
echo "cuda feature: compile-only check passed (clippy, sdk + trainer)"
