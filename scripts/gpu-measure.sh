#!/usr/bin/env bash
# The GPU measurements in one call, on the lent GPU machine (no Rust, no network there).
# Build and stage first, here:   scripts/gpu-build.sh      (writes .gpu-carry/)
# Then, through the device tool: bash scripts/gpu-measure.sh   with carry [".gpu-carry"]
#
# It prints a Markdown table and writes the logs and JSON under $OUT (or ./gpu-results):
#   1. cuDNN conv forward / input grad / weight grad vs the CPU kernels (limit 1e-3, f32);
#   2. configs/gpu-speedrun.toml, $RUNS times (default 3): time-to-accuracy with TTA,
#      timed as airbench times it (summary.json timed_secs);
#   3. the SDK's GPU engine: logits vs the CPU f32 engine on fixtures/images, and
#      throughput at batch 1024, next to PyTorch on the same model, GPU and run.
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
  python3 -c "import json;d=json.load(open('$out/summary-$i.json'));print(f\"run $i: {100*d['val_accuracy_tta']:.2f}% with TTA ({100*d['val_accuracy']:.2f}% without), timed {d['timed_secs']:.2f} s, training {d['train_secs']:.2f} s, {d['epochs']} epochs, {d['steps']} steps\")"
done

echo "## SDK GPU engine vs CPU engine and PyTorch (batch 1024)"
model=runs/speedrun-1
if [ -f "$model/summary.json" ]; then
  "$bin/trainer" compile --run "$model" --precision f32 -o "$out/speedrun-f32.cifar" >"$out/compile.log" 2>&1
  "$bin/trainer" compile --run "$model" --precision int8 -o "$out/speedrun-int8.cifar" >>"$out/compile.log" 2>&1
  for m in fixtures/models/cpu-f32.cifar "$out/speedrun-f32.cifar" "$out/speedrun-int8.cifar"; do
    [ -f "$m" ] || continue
    echo "### $m"
    "$bin/sdk-bench" --model "$m" --device gpu --batch 1024 --seconds 3 --agreement fixtures/images 2>&1 | tee -a "$out/sdk-gpu.jsonl"
    NVIDIA_TF32_OVERRIDE=0 "$bin/sdk-bench" --model "$m" --device gpu --batch 1024 --seconds 1 --agreement fixtures/images 2>&1 | sed 's/^{/{"tf32_override":0,/' | tee -a "$out/sdk-gpu.jsonl"
    "$bin/sdk-bench" --model "$m" --device cpu --threads 0 --batch 1024 --seconds 3 2>&1 | tee -a "$out/sdk-cpu.jsonl"
    python3 .gpu-carry/torch_reference.py "$m" --batch 1024 --seconds 3 2>&1 | tee -a "$out/torch.jsonl"
  done
fi
exit "$check"
