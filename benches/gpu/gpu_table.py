#!/usr/bin/env python3
"""The side-by-side table of one scripts/gpu-measure.sh run, printed as Markdown.

Reads what that script wrote into OUT: summary-*.json and metrics-*.jsonl (our
speedrun), airbench.txt (airbench94 on the same split, same GPU, same run), sdk-gpu.jsonl
and torch.jsonl (inference at batch 1024), ncu.csv (the kernel profile) and writes
ncu-kernels.txt from the last. Standard library only (it also runs here, on saved logs).

    python3 gpu_table.py OUT
"""
import csv
import glob
import json
import math
import os
import re
import statistics
import sys

# airbench94's schedule (hyp['opt'] in legacy/airbench94.py): batch 1024, 9.9 epochs,
# drop_last; its step count follows from the size of train.pt.
AIRBENCH_BATCH, AIRBENCH_EPOCHS = 1024, 9.9


def ours(out):
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "summary-*.json"))):
        s = json.load(open(path))
        metrics = path.replace("summary-", "metrics-").replace(".json", ".jsonl")
        step_ms = []
        if os.path.exists(metrics):
            for line in open(metrics):
                r = json.loads(line)
                if r.get("kind") == "step" and r.get("step", 0) > 2:
                    step_ms.append(r["step_ms"] + r.get("data_wait_ms", 0.0))
        rows.append(
            {
                "timed": s.get("timed_secs", float("nan")),
                "warmup": s.get("warmup_secs", 0.0),
                "tta": s["val_accuracy_tta"],
                "steps": s["steps"],
                "step_ms": statistics.median(step_ms) if step_ms else float("nan"),
            }
        )
    return rows


def airbench(out):
    """(runs after the warm-up run: [{timed, train, tta}], training images) from airbench.txt."""
    path = os.path.join(out, "airbench.txt")
    if not os.path.exists(path):
        return [], None
    runs, current_train = [], None
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or not re.match(r"^\d+(\.\d+)?$", cells[-1] or "x"):
            continue
        epoch, total = cells[1], float(cells[-1])
        if epoch == "eval":
            runs.append({"timed": total, "train": current_train or total, "tta": float(cells[5])})
        else:
            current_train = total
    images = None
    log = os.path.join(out, "make_pt.txt")
    if os.path.exists(log):
        m = re.search(r"train (\d+)", open(log).read())
        images = int(m.group(1)) if m else None
    return runs[1:], images  # run 0 includes cuDNN's warm-up


def inference(out):
    rows = []
    for name in ("sdk-gpu.jsonl", "torch.jsonl"):
        path = os.path.join(out, name)
        if not os.path.exists(path):
            continue
        model = None
        for line in open(path):
            if line.startswith("### "):
                model = line[4:].strip()
                continue
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            r["model"] = r.get("model", model)
            rows.append(r)
    return rows


def kernels(out):
    """Kernel time by name from ncu's CSV; writes ncu-kernels.txt; returns the lines."""
    path = os.path.join(out, "ncu.csv")
    if not os.path.exists(path):
        return []
    text = open(path, errors="replace").read()
    start = text.find('"ID"')
    if start < 0:
        return ["(ncu.csv holds no kernel rows)"]
    totals, launches = {}, {}
    for r in csv.DictReader(text[start:].splitlines()):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        scale = {"nsecond": 1, "ns": 1, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6}.get(r.get("Metric Unit", "ns"), 1)
        ns = float(r["Metric Value"].replace(",", "")) * scale
        name = r["Kernel Name"][:100]
        totals[name] = totals.get(name, 0) + ns
        launches[name] = launches.get(name, 0) + 1
    total = sum(totals.values()) or 1
    n = sum(launches.values())
    conv = sum(v for k, v in totals.items() if re.search(r"xmma|implicit_gemm|conv|cudnn.*(grad|fprop)", k, re.I) and "Nhwc" not in k and "nchwTo" not in k)
    lines = [f"{n} kernel launches, {total / 1e6:.1f} ms of kernel time; convolution kernels {100 * conv / total:.1f}%", "", "share    total ns   launches  kernel"]
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:40]:
        lines.append(f"{100 * v / total:5.1f}% {v:12.0f} {launches[k]:8d}  {k}")
    open(os.path.join(out, "ncu-kernels.txt"), "w").write("\n".join(lines) + "\n")
    return lines


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "gpu-results"
    a, b = ours(out), airbench(out)
    ab, images = b
    ab_steps = math.ceil((images // AIRBENCH_BATCH) * AIRBENCH_EPOCHS) if images else None
    print("## Training, batch 1024, same split, same GPU, same run\n")
    print("| | ours (configs/gpu-speedrun.toml) | airbench94 |")
    print("|---|---|---|")
    print("| runs | %d | %d (after its warm-up run) |" % (len(a), len(ab)))
    print("| timed seconds, each | %s | %s |" % (", ".join(f"{r['timed']:.2f}" for r in a), ", ".join(f"{r['timed']:.2f}" for r in ab)))
    print("| warm-up seconds (not timed) | %s | (its run 0) |" % ", ".join(f"{r['warmup']:.2f}" for r in a))
    print("| validation TTA accuracy, mean | %.2f%% | %.2f%% |" % (100 * mean([r["tta"] for r in a]), 100 * mean([r["tta"] for r in ab])))
    ab_ms = mean([1e3 * r["train"] / ab_steps for r in ab]) if ab_steps else float("nan")
    our_ms = mean([r["step_ms"] for r in a])
    print("| ms per training step (median; airbench: training time / %s steps) | %.1f | %.1f |" % (ab_steps, our_ms, ab_ms))
    if ab_ms == ab_ms and our_ms == our_ms:
        print(f"\nstep time ratio ours/airbench94: {our_ms / ab_ms:.2f}x (target <= 1.5x)")
    if a and ab:
        print(f"timed-window ratio ours/airbench94: {mean([r['timed'] for r in a]) / mean([r['timed'] for r in ab]):.2f}x")
    inf = inference(out)
    if inf:
        print("\n## Inference, batch 1024 (images/s)\n")
        print("| model | runtime | compute | images/s | top-1 vs CPU f32 |")
        print("|---|---|---|---|---|")
        for r in inf:
            print(
                "| %s | %s | %s%s | %.0f | %s |"
                % (
                    r.get("model") or "",
                    r.get("runtime", ""),
                    r.get("compute", r.get("precision", "")),
                    " (TF32 off)" if r.get("tf32_override") == 0 else "",
                    r.get("images_per_s", float("nan")),
                    r.get("top1_agreement_vs_cpu", ""),
                )
            )
    k = kernels(out)
    if k:
        print("\n## Kernel profile (ncu, a few training steps)\n")
        print("```")
        print("\n".join(k[:25]))
        print("```")


if __name__ == "__main__":
    main()
