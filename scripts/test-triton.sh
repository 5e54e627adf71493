#!/usr/bin/env bash
# cifar-serve against the real Triton client (tritonclient from PyPI, HTTP and gRPC), run
# by scripts/test.sh: health, metadata, configuration, statistics, binary and JSON
# inference, classification, keys, TLS and malformed gRPC messages
# (server/tests/triton/test_tritonclient.py). The logits must equal the Rust SDK's bit for
# bit. Installs its packages once into a virtual environment under the target folder.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
root="$PWD"
source scripts/target-dir.sh
work="$target/triton-test"
mkdir -p "$work"
# The same build as scripts/test.sh's `cargo test` (nothing is rebuilt after it): a
# `cargo build -p cifar-server` would resolve other features and build crates again.
cargo test -q --release --locked --workspace --no-run
cargo run -q --release --locked -p cifar-ffi --example dump_logits -- fixtures "$work/rust_logits.txt"
venv="$target/triton-venv"
req=server/tests/triton/requirements.txt
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
# An ONNX model imported by the trainer (skipped without the CIFAR-10 archive).
imported="$(scripts/imported-models.sh)"
CIFAR_SERVE="$target/release/cifar-serve" CIFAR_FIXTURES="$root/fixtures" CIFAR_RUST_LOGITS="$work/rust_logits.txt" \
  CIFAR_IMPORTED="$imported" "$venv/bin/python" -m pytest -q -p no:cacheprovider server/tests/triton
echo "tritonclient: all passed"
