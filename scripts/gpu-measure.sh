#!/usr/bin/env bash
# The GPU measurements in one call, on the lent GPU machine (no Rust, no network there).
# Build and stage first, here:   scripts/gpu-build.sh      (writes .gpu-carry/)
# Then, through the device tool: bash scripts/gpu-measure.sh   with carry [".gpu-carry"]
#
# It prints a Markdown table (benches/gpu/gpu_table.py) and writes the logs, JSON and one
# archive of them (gpu-results.tar.xz) under $OUT (or ./gpu-results). About 5 minutes:
#   1. cuDNN conv forward / input grad / weight grad vs the CPU kernels (limit 1e-3, f32);
#   2. configs/gpu-speedrun.toml, $RUNS times (default 3): time-to-accuracy with TTA,
#      timed as airbench times it (summary.json timed_secs, after a warm-up step that
#      summary.json reports apart as warmup_secs);
#   3. airbench94 on the same 45,000 training images and 5,000 validation images, same
#      GPU, same run ($RUNS runs after its warm-up run), when gpu-build.sh staged it;
#   4. the SDK's GPU engine: logits vs the CPU f32 engine on fixtures/images, and
#      throughput at batch 1024, next to PyTorch on the same model, GPU and run;
#   5. a kernel profile of a few training steps (ncu, kernel durations only).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
bin=/tmp/cifar-gpu/bin
mkdir -p /tmp/cifar-gpu && tar -C /tmp/cifar-gpu -xJf .gpu-carry/bin.tar.xz || exit 1
runs="${RUNS:-3}"

# The CUDA 13 libraries that PyTorch's wheels carry, and the driver's libcuda.
libdirs=$(python3 - <<'PY'
import glob, os, site
seen = []
roots = site.getsitepackages() + [site.getusersitepackages()]
for root in roots:
    for pat in ["libcublas.so.13*", "libcublasLt.so.13*", "libcudnn.so.9*", "libnvrtc.so.13*", "libcurand.so.10*", "libcudart.so.13*"]:
        for f in glob.glob(os.path.join(root, "nvidia", "**", pat), recursive=True):
            d = os.path.dirname(f)
            if d not in seen:
                seen.append(d)
print(":".join(seen))
PY
)
export LD_LIBRARY_PATH="$libdirs:${LD_LIBRARY_PATH:-}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$bin/trainer" | grep -E "cuda|cublas|cudnn|nvrtc|curand|not found"
} 2>&1 | tee "$out/env.txt"

# Data: the bundled JPEG archive, imported as the trainer always does.
"$bin/trainer" data import .gpu-carry/data/cifar10-train-jpg.tar.gz --out data/cifar10 >"$out/import.log" 2>&1 ||
  { tail -20 "$out/import.log"; exit 1; }

echo "## conv gradients (cuDNN vs CPU)"
"$bin/trainer" gpu-check --device cuda --batch 64 2>&1 | tee "$out/gpu-check.txt"
check=${PIPESTATUS[0]}

echo "## training: configs/gpu-speedrun.toml x $runs"
for i in $(seq 1 "$runs"); do
  "$bin/trainer" fit -q -c configs/gpu-speedrun.toml --run-dir "runs/speedrun-$i" seed=$i \
    >"$out/fit-$i.log" 2>&1 || { tail -30 "$out/fit-$i.log"; break; }
  cp "runs/speedrun-$i/summary.json" "$out/summary-$i.json"
  cp "runs/speedrun-$i/metrics.jsonl" "$out/metrics-$i.jsonl"
  python3 -c "import json;d=json.load(open('$out/summary-$i.json'));print(f\"run $i: {100*d['val_accuracy_tta']:.2f}% with TTA ({100*d['val_accuracy']:.2f}% without), timed {d['timed_secs']:.2f} s, training {d['train_secs']:.2f} s, {d['epochs']} epochs, {d['steps']} steps\")"
done

if [ -f .gpu-carry/airbench94.py ]; then
  echo "## airbench94 x $runs (+1 warm-up run), same images"
  ab=/tmp/cifar-gpu/airbench && rm -rf "$ab" && mkdir -p "$ab/data"
  python3 benches/gpu/make_pt.py data/cifar10 "$ab/data" >"$out/make_pt.txt" 2>&1 || tail -5 "$out/make_pt.txt"
  (cd "$ab" && AIRBENCH_DATA="$ab/data" AIRBENCH_RUNS=$((runs + 1)) timeout 300 python3 "$OLDPWD/.gpu-carry/airbench94.py") \
    >"$out/airbench.txt" 2>&1 || tail -20 "$out/airbench.txt"
  grep -E "eval|Mean" "$out/airbench.txt"
else
  echo "## airbench94: not staged (set AIRBENCH94 for scripts/gpu-build.sh); skipped"
fi

echo "## SDK GPU engine vs CPU engine and PyTorch (batch 1024)"
model=runs/speedrun-1
if [ -f "$model/summary.json" ]; then
  "$bin/trainer" compile --run "$model" --precision f32 -o "$out/speedrun-f32.cifar" >"$out/compile.log" 2>&1
  "$bin/trainer" compile --run "$model" --precision int8 -o "$out/speedrun-int8.cifar" >>"$out/compile.log" 2>&1
  for m in fixtures/models/cpu-f32.cifar "$out/speedrun-f32.cifar" "$out/speedrun-int8.cifar"; do
    [ -f "$m" ] || continue
    echo "### $m"
    for f in sdk-gpu sdk-cpu torch; do echo "### $m" >>"$out/$f.jsonl"; done
    "$bin/sdk-bench" --model "$m" --device gpu --batch 1024 --seconds 3 --agreement fixtures/images 2>&1 | tee -a "$out/sdk-gpu.jsonl"
    NVIDIA_TF32_OVERRIDE=0 "$bin/sdk-bench" --model "$m" --device gpu --batch 1024 --seconds 1 --agreement fixtures/images 2>&1 | sed 's/^{/{"tf32_override":0,/' | tee -a "$out/sdk-gpu.jsonl"
    "$bin/sdk-bench" --model "$m" --device cpu --threads 0 --batch 1024 --seconds 3 2>&1 | tee -a "$out/sdk-cpu.jsonl"
    python3 .gpu-carry/torch_reference.py "$m" --batch 1024 --seconds 3 2>&1 | tee -a "$out/torch.jsonl"
  done
fi
echo "## kernel profile (ncu)"
ncu_bin=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$ncu_bin" ]; then
  # Past the warm-up step, whitening and the first training steps (~830 launches each).
  timeout 240 "$ncu_bin" --clock-control none --metrics gpu__time_duration.sum --launch-skip 3000 \
    --launch-count 2500 --csv --print-units base --log-file "$out/ncu.csv" \
    "$bin/trainer" fit -q -c configs/gpu-speedrun.toml --run-dir /tmp/cifar-gpu/ncu-run train.epochs=1 \
    >"$out/ncu.log" 2>&1 || tail -5 "$out/ncu.log"
else
  echo "ncu not found; no kernel profile"
fi

python3 benches/gpu/gpu_table.py "$out" | tee "$out/table.md"
tar -C "$out" -cJf /tmp/cifar-gpu/gpu-results.tar.xz --exclude gpu-results.tar.xz . && mv /tmp/cifar-gpu/gpu-results.tar.xz "$out/"
exit "$check"
