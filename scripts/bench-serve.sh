#!/usr/bin/env bash
# Measures cifar-serve on loopback with cifar-load: requests/s and latency percentiles
# at concurrency 1, 16 and 64, for binary /v2/.../infer (one UINT8 image per request,
# top-1 classification output) and /v1/classify (one PNG per request, decoded and
# resized by the server). The server uses its defaults (one worker per core, batches
# of up to 64, no queue delay); client and server share the machine's cores.
#
#   scripts/bench-serve.sh [MODEL.cifar] [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-fixtures/models/tiny-int8.cifar}
requests=${2:-5000}
cargo build --release --locked -p cifar-server >&2
source scripts/target-dir.sh
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
"$target"/release/cifar-serve --model "$model" --model-name bench --addr 127.0.0.1:0 \
  --ready-file "$work/addr" 2>"$work/server.log" &
pid=$!
for _ in $(seq 200); do [ -f "$work/addr" ] && break; sleep 0.05; done
[ -f "$work/addr" ] || { cat "$work/server.log" >&2; exit 1; }
url="http://$(cat "$work/addr")"
echo "model: $model ($("$target"/release/cifar-load --version | cut -d' ' -f2))"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $requests requests per row after 200 warm-up"
first=1
for endpoint in infer-binary classify; do
  for c in 1 16 64; do
    flags=()
    [ $first = 1 ] || flags+=(--no-header)
    first=0
    "$target"/release/cifar-load --url "$url" --model bench --endpoint "$endpoint" --image fixtures/images/*.png \
      --requests "$requests" --concurrency "$c" --warmup 200 "${flags[@]}"
  done
done
