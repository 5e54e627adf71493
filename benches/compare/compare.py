"""Side-by-side inference speed: cifar-sdk against ONNX Runtime on the same models,
inputs and thread counts, measured in one run with the runtimes interleaved (ratios are
only comparable within a run on a shared machine). Called by compare.sh, which sets up
the virtual environment, builds `sdk-bench` and exports the ONNX files.

For every model family, thread count and batch it measures four things in alternating
rounds (SDK f32, SDK int8, ORT f32, ORT int8 as QDQ) and prints the medians, then the
targets of the engine issue, each against ONNX Runtime's best of its f32 and int8 runs.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort


def normalized_input(batch):
    """The same deterministic images as cifar-benches' `nchw_input`."""
    i = np.arange(batch * 32 * 32 * 3, dtype=np.int64)
    rgb = ((i * 7919 + (i // 96) * 31) % 251).astype(np.float32).reshape(batch, 32, 32, 3)
    mean = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
    std = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
    x = (rgb / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class Ort:
    def __init__(self, onnx_path, threads):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])

    def median(self, batch, seconds, warmup):
        feed = {"input": normalized_input(batch)}
        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            self.session.run(None, feed)
        times = []
        start = time.perf_counter()
        while len(times) < 5 or time.perf_counter() - start < seconds:
            t = time.perf_counter()
            self.session.run(None, feed)
            times.append(time.perf_counter() - t)
        return statistics.median(times)


def sdk_median(sdk_bench, model, batch, threads, seconds, warmup):
    out = subprocess.run(
        [sdk_bench, "--model", model, "--batch", str(batch), "--threads", str(threads),
         "--seconds", str(seconds), "--warmup", str(warmup)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sdk-bench", required=True)
    p.add_argument("--model", action="append", required=True,
                   help="NAME=F32.cifar=INT8.cifar=F32.onnx=INT8.onnx")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per measurement")
    p.add_argument("--seconds", type=float, default=0.7, help="timed seconds per run and round")
    args = p.parse_args()
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    header = (f"{'model':<11} {'thr':>3} {'batch':>5} | {'SDK f32':>9} {'SDK int8':>9} | {'ORT f32':>9} "
              f"{'ORT int8':>9} | ms per batch, medians of {args.rounds} interleaved rounds")
    print(header)
    print("-" * len(header))
    results = {}
    kernels = "?"
    for spec in args.model:
        name, f32_cifar, int8_cifar, f32_onnx, int8_onnx = spec.split("=")
        for threads in args.threads:
            orts = {"f32": Ort(f32_onnx, threads), "int8": Ort(int8_onnx, threads)}
            for batch in args.batches:
                t = {k: [] for k in ("sdk_f32", "sdk_int8", "ort_f32", "ort_int8")}
                for r in range(args.rounds):
                    warm = 0.5 if r == 0 else 0.2
                    for what in (["sdk", "ort"] if r % 2 == 0 else ["ort", "sdk"]):
                        for prec, cifar in (("f32", f32_cifar), ("int8", int8_cifar)):
                            if what == "sdk":
                                j = sdk_median(args.sdk_bench, cifar, batch, threads, args.seconds, warm)
                                kernels = j.get("kernels", "?")
                                t[f"sdk_{prec}"].append(j["median_ms"] / 1e3)
                            else:
                                t[f"ort_{prec}"].append(orts[prec].median(batch, args.seconds, warm))
                m = {k: statistics.median(v) for k, v in t.items()}
                results[(name, threads, batch)] = m
                print(f"{name:<11} {threads:>3} {batch:>5} | {m['sdk_f32'] * 1e3:>9.3f} {m['sdk_int8'] * 1e3:>9.3f} | "
                      f"{m['ort_f32'] * 1e3:>9.3f} {m['ort_int8'] * 1e3:>9.3f}", flush=True)
    print(f"\nSDK kernels: {kernels}. Targets (time ratios; ORT best = the faster of its f32 and int8):")
    rows = []

    def target(label, value, limit, higher_is_better=False):
        ok = value >= limit if higher_is_better else value <= limit
        rows.append(ok)
        sign = ">=" if higher_is_better else "<="
        print(f"  {label:<58} {value:>6.2f}  (target {sign} {limit:.2f})  {'met' if ok else 'NOT MET'}")

    for name in dict.fromkeys(k[0] for k in results):
        def r(threads, batch):
            return results.get((name, threads, batch))
        best = lambda m: min(m["ort_f32"], m["ort_int8"])
        print(f" {name}:")
        if r(2, 1):
            target("b1, 2 threads: SDK int8 latency / ORT best", r(2, 1)["sdk_int8"] / best(r(2, 1)), 0.7)
        if r(2, 256):
            target("b256, 2 threads: SDK int8 throughput / ORT best", best(r(2, 256)) / r(2, 256)["sdk_int8"], 1.5, True)
        for b in (1, 64):
            if r(1, b):
                target(f"b{b}, 1 thread: SDK int8 time / ORT best", r(1, b)["sdk_int8"] / best(r(1, b)), 0.8)
        for b in (1, 64, 256):
            if r(2, b):
                target(f"b{b}, 2 threads: SDK f32 time / ORT f32", r(2, b)["sdk_f32"] / r(2, b)["ort_f32"], 1.0)
        for th in (1, 2):
            if r(th, 64):
                target(f"b64, {th} thread(s): SDK int8 throughput / SDK f32", r(th, 64)["sdk_f32"] / r(th, 64)["sdk_int8"], 1.7, True)
        for prec in ("f32", "int8"):
            if r(1, 64) and r(2, 64):
                target(f"b64, {prec}: SDK 2 threads / 1 thread (speedup)", r(1, 64)[f"sdk_{prec}"] / r(2, 64)[f"sdk_{prec}"], 1.8, True)
            if r(1, 1) and r(2, 1):
                target(f"b1, {prec}: SDK 2 threads / 1 thread (speedup)", r(1, 1)[f"sdk_{prec}"] / r(2, 1)[f"sdk_{prec}"], 1.3, True)
    print(f"\n{sum(rows)} of {len(rows)} targets met")


if __name__ == "__main__":
    main()
