#!/usr/bin/env bash
# The speed regression gate (run by scripts/test.sh): builds the Criterion benchmarks of
# this checkout and of the previous commit (a git worktree), runs the gated ones in
# alternating rounds, prints old/new/ratio/noise per benchmark and fails on a slowdown
# beyond threshold + noise. Options go to bench-gate (`--help`), e.g.
#
#   scripts/bench-gate.sh                      # HEAD against HEAD~1
#   scripts/bench-gate.sh --base main~5        # against another revision
#   scripts/bench-gate.sh --self-compare --slow-new   # show that a 2x slower GEMM fails
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cifar-benches --bin bench-gate >&2
source scripts/target-dir.sh
# bench-gate builds both revisions into the same target folder.
CARGO_TARGET_DIR="$target" exec "$target/release/bench-gate" "$@"
