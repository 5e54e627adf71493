#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (including a
# short training run on the real data when ../shared/data is present).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo test --release --locked --workspace
