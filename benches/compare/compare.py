"""Side-by-side inference speed: cifar-sdk against ONNX Runtime on the same models, inputs
and thread counts, measured in one run (ratios are only comparable within a run on a
shared machine). Called by compare.sh, which sets up the virtual environment, builds
`sdk-bench` and exports the ONNX files.

Prints one table: model, runtime, precision, threads, batch, median ms, images/s, and the
SDK's speedup (the runtime's median / the SDK's median: above 1, the SDK is faster).
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


def ort_median(onnx_path, batch, threads, seconds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    x = normalized_input(batch)
    feed = {"input": x}
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        session.run(None, feed)
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times), session.run(None, feed)[0]


def sdk_median(sdk_bench, model, batch, threads, seconds):
    out = subprocess.run(
        [sdk_bench, "--model", model, "--batch", str(batch), "--threads", str(threads), "--seconds", str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)["median_ms"] / 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sdk-bench", required=True)
    p.add_argument("--model", action="append", required=True, help="NAME=MODEL.cifar=MODEL.onnx")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args()
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    header = f"{'model':<12} {'runtime':<12} {'precision':<9} {'threads':>7} {'batch':>5} {'median ms':>10} {'images/s':>9} {'SDK speedup':>11}"
    print(header)
    print("-" * len(header))
    for spec in args.model:
        name, cifar, onnx_path = spec.split("=")
        precision = "int8" if "int8" in cifar else "f32"
        for threads in args.threads:
            for batch in args.batches:
                sdk = sdk_median(args.sdk_bench, cifar, batch, threads, args.seconds)
                ort_t, _ = ort_median(onnx_path, batch, threads, args.seconds)
                for runtime, t in (("cifar-sdk", sdk), ("onnxruntime", ort_t)):
                    print(
                        f"{name:<12} {runtime:<12} {precision:<9} {threads:>7} {batch:>5} {t * 1e3:>10.3f} "
                        f"{batch / t:>9.0f} {t / sdk:>11.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
