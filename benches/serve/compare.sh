#!/usr/bin/env bash
# cifar-serve against the kind of server it replaces, on the same model, machine and
# load: FastAPI + ONNX Runtime (benches/serve/fastapi_ort.py, uvicorn) serving the ONNX
# export of the same .cifar file, in two set-ups (2 workers with ORT on 1 thread each;
# 1 worker with ORT on 2 threads). cifar-load sends every server the same requests:
# binary OIP infer (one UINT8 image, top-1 classification output) and /v1/classify (one
# PNG body), at concurrency 1, 16 and 64. The three servers run side by side (idle ones
# cost nothing) and every row alternates between them, ROUNDS times; the table holds
# the median of the rounds, then the per-request overhead of each server at concurrency
# 1 (request time minus model time, from each server's /metrics).
#
#   benches/serve/compare.sh [MODEL.cifar]      (default fixtures/models/cpu-int8.cifar)
#   REQUESTS=3000 ROUNDS=3 ORT_PRECISION=int8|f32 benches/serve/compare.sh
#
# By hand only (not in CI): it installs FastAPI, uvicorn and ONNX Runtime into
# benches/serve/.venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-fixtures/models/cpu-int8.cifar}
requests=${REQUESTS:-3000}
rounds=${ROUNDS:-3}
ort_precision=${ORT_PRECISION:-int8}
venv=benches/serve/.venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r benches/serve/requirements.txt
cargo build -q --release --locked -p cifar-server -p cifar-trainer >&2
source scripts/target-dir.sh
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# The ONNX the FastAPI server runs: the export of the same model (int8: a QDQ model,
# ONNX Runtime's fastest on one thread for these nets; see BENCHMARKS.md).
base=${model%-int8.cifar}; base=${base%-f32.cifar}
onnx_src=$model
[ "$ort_precision" = f32 ] && [ -f "$base-f32.cifar" ] && onnx_src="$base-f32.cifar"
"$target"/release/trainer export-onnx "$onnx_src" -o "$work/model.onnx" --no-check >&2

"$target"/release/cifar-serve --model "$model" --model-name bench --addr 127.0.0.1:0 \
  --ready-file "$work/cifar.addr" 2>"$work/cifar.log" &
pids+=($!)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start_fastapi() { # NAME WORKERS ORT_THREADS
  local port; port=$(free_port)
  (cd benches/serve && MODEL_ONNX="$work/model.onnx" MODEL_CIFAR="$OLDPWD/$model" ORT_THREADS=$3 \
    exec "$OLDPWD/$venv/bin/uvicorn" fastapi_ort:app --host 127.0.0.1 --port "$port" --workers "$2" \
    --log-level warning --no-access-log) 2>"$work/$1.log" &
  pids+=($!)
  echo "127.0.0.1:$port" > "$work/$1.addr"
}
start_fastapi fastapi-2w 2 1
start_fastapi fastapi-1w 1 2
for name in cifar fastapi-2w fastapi-1w; do
  for _ in $(seq 300); do
    [ -f "$work/$name.addr" ] && curl -s -o /dev/null "http://$(cat "$work/$name.addr")/metrics" && break
    sleep 0.1
  done
  curl -s -o /dev/null "http://$(cat "$work/$name.addr")/metrics" || { cat "$work/$name.log" >&2; exit 1; }
done

echo "model: $model (ONNX Runtime: $ort_precision export, $("$venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)'))"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $requests requests per cell after 200 warm-up, median of $rounds rounds; commit $(git rev-parse --short HEAD)"
for round in $(seq "$rounds"); do
  for endpoint in infer-binary classify; do
    for c in 1 16 64; do
      for name in cifar fastapi-2w fastapi-1w; do
        "$target"/release/cifar-load --url "http://$(cat "$work/$name.addr")" --model bench --endpoint "$endpoint" \
          --image fixtures/images/*.png --requests "$requests" --concurrency "$c" --warmup 200 --json --allow-errors |
          sed "s/^{/{\"server\":\"$name\",\"round\":$round,/" >> "$work/rows.jsonl"
      done
    done
  done
done
# The per-request overhead at concurrency 1 (binary infer): each server's counters before
# and after 2,000 requests. The single-worker FastAPI set-up, whose one process holds
# every request's counters.
for name in cifar fastapi-1w; do
  url="http://$(cat "$work/$name.addr")"
  curl -s "$url/metrics" > "$work/$name.before"
  "$target"/release/cifar-load --url "$url" --model bench --endpoint infer-binary --image fixtures/images/*.png \
    --requests 2000 --concurrency 1 --warmup 0 --json > /dev/null
  curl -s "$url/metrics" > "$work/$name.after"
done
python3 benches/serve/table.py "$work"
