#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (including a
# short training run on the real data when ../shared/data is present).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "warning: rustfmt is not installed; skipping the format check" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --release --locked --workspace --all-targets -- -D warnings
else
  echo "warning: clippy is not installed; skipping the lints" >&2
fi
# A real MLflow server for the tracking tests, a real S3 API (moto) for the
# object-storage tests, and a real Prometheus for the drift alert test (each installed
# once; the tests start and stop them on loopback).
scripts/deploy-tools.sh >/dev/null
CIFAR_MLFLOW="$(scripts/mlflow-venv.sh)" CIFAR_MOTO="$(scripts/moto-venv.sh)" \
  CIFAR_PROMETHEUS="$(command -v prometheus || true)" \
  cargo test --release --locked --workspace
# Fuzzing: the SDK's targets (model files) built with libFuzzer (nightly) and run half a
# minute each from their saved corpus. Every target's saved inputs (seeds, corpus, past
# findings) were replayed on stable in the cargo test above; the server's and trainer's
# instrumented build takes 11 minutes, so their fuzzers run by hand (fuzz/README.md).
# Skipped, with a message, where no nightly toolchain is installed.
scripts/fuzz.sh ci
# The SDK's device engine (candle tensors), on candle's CPU device against the CPU engine.
cargo test --release --locked -p cifar-sdk --features candle --test device_engine
# The `cuda` feature, compile-only: no GPU here (scripts/cuda-check.sh).
scripts/cuda-check.sh
# The SDK once more in the dev profile: debug assertions and integer overflow checks
# on, so the malformed-file and fuzz tests also catch arithmetic slips.
cargo test --locked -p cifar-sdk
# The C ABI: libraries, symbol list, C/C++/Python tests (valgrind, static + shared).
scripts/test-bindings.sh
# deploy/: hadolint, promtool (rules and their tests), the Kubernetes schemas, and the
# server image built and run from its filesystem.
scripts/test-deploy.sh
# cifar-serve driven by the real Triton client (tritonclient from PyPI), HTTP and gRPC.
scripts/test-triton.sh
# The speed regression gate: this commit's benchmarks against the previous commit's,
# interleaved in this job; fails on a slowdown beyond threshold + measured noise.
scripts/bench-gate.sh
