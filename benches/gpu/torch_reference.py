#!/usr/bin/env python3
"""PyTorch's throughput for the same compiled model, on the same GPU, in the same run.

Reads a `.cifar` file (safetensors: the graph is JSON under `__metadata__`), builds the
graph as PyTorch ops (f32 weights, or int8 files dequantized, as the SDK's GPU engine
does; weights unpacked from the file's packed layout), checks its logits against the SDK's on the same inputs when given them, and times
batches the way `sdk-bench` does (median of timed runs after a warm-up, host input to
host logits). Prints one JSON line per configuration.

    python3 torch_reference.py MODEL.cifar --batch 1024 [--seconds 3]
"""
import argparse
import json
import math
import struct
import time

import torch
import torch.nn.functional as F


def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    data = raw[8 + n :]
    dtypes = {"F32": torch.float32, "I8": torch.int8, "I32": torch.int32, "U8": torch.uint8}
    tensors = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        buf = bytearray(data[a:b])
        tensors[name] = torch.frombuffer(buf, dtype=dtypes[t["dtype"]]).reshape(t["shape"]) if b > a else torch.empty(0)
    return json.loads(meta["graph"]), json.loads(meta["preprocessing"]), tensors


def act(x, a):
    if a == "relu":
        return F.relu(x)
    if a == "gelu":
        return F.gelu(x, approximate="tanh")
    return x


def unpack(packed, out, cin_g, kernel, groups, scale=None):
    """A packed weight of format 2 (sdk/src/artifact/layers.rs) as `[out, cin_g, kh, kw]`:
    f32 `[groups][panels][kh*kw*cin_g][16]`, int8 `[groups][panels][kh*kw][quads][16][4]`
    times the per-channel `scale`."""
    kh, kw = kernel
    g, panels = packed.shape[0], packed.shape[1]
    if scale is None:
        w = packed.float().reshape(g, panels, kh * kw, cin_g, 16).permute(0, 1, 4, 3, 2)
    else:
        quads = packed.shape[3]
        w = packed.float().permute(0, 1, 4, 3, 5, 2).reshape(g, panels, 16, quads * 4, kh * kw)[:, :, :, :cin_g]
    w = w.reshape(g, panels * 16, cin_g, kh * kw)[:, : out // groups].reshape(out, cin_g, kh, kw)
    return w if scale is None else w * scale.float().reshape(-1, 1, 1, 1)


class Net(torch.nn.Module):
    def __init__(self, graph, tensors, device):
        super().__init__()
        self.graph = graph
        self.int8 = graph["precision"] == "int8"
        self.tensors = tensors
        self.device = device
        self.w = {}

    def weight(self, node, cin):
        """The node's f32 weight `[out, cin_g, kh, kw]` and bias, unpacked on first use."""
        name, op = node["name"], node["op"]
        if name not in self.w:
            groups = op.get("groups", 1)
            out = op.get("out_channels", op.get("out_features"))
            kernel = op.get("kernel", [1, 1])
            scale = self.tensors[f"{name}.weight_scale"] if self.int8 else None
            w = unpack(self.tensors[f"{name}.weight"], out, cin // groups, kernel, groups, scale)
            self.w[name] = (w.to(self.device), self.tensors[f"{name}.bias"].float().to(self.device))
        return self.w[name]

    def forward(self, x):
        values = {"input": x}
        for node in self.graph["nodes"]:
            name, op, ins = node["name"], node["op"], [values[i] for i in node["inputs"]]
            x, t = ins[0], op["type"]
            a = op.get("act", "none")
            if t == "conv2d":
                w, b = self.weight(node, x.shape[1])
                y = act(F.conv2d(x, w, b, stride=op["stride"], padding=op["padding"], groups=op["groups"]), a)
            elif t == "linear":
                w, b = self.weight(node, x.shape[1] * x.shape[2] * x.shape[3])
                y = act(F.linear(x.flatten(1), w.flatten(1), b), a)[:, :, None, None]
            elif t == "max_pool":
                p = op["padding"]
                xp = F.pad(x, (p[1], p[1], p[0], p[0]), value=-math.inf) if any(p) else x
                y = act(F.max_pool2d(xp, op["kernel"], op["stride"]), a)
            elif t == "avg_pool":
                p = op["padding"]
                y = act(F.avg_pool2d(x, op["kernel"], op["stride"], p, count_include_pad=True), a)
            elif t == "global_max_pool":
                y = act(x.amax(dim=(2, 3), keepdim=True), a)
            elif t == "global_avg_pool":
                y = act(x.mean(dim=(2, 3), keepdim=True), a)
            elif t == "add":
                y = act(ins[0] + ins[1], a)
            elif t == "flatten":
                y = x.flatten(1)[:, :, None, None]
            elif t == "scale":
                y = act(x * op["factor"], a)
            else:
                raise SystemExit(f"unknown op {t}")
            values[name] = y
        return values[self.graph["output"]].flatten(1)


def bench(fn, seconds):
    warm = time.perf_counter()
    while time.perf_counter() - warm < 1.0:
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], len(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    dev = torch.device("cuda")
    # Exact f32, as the SDK's GPU engine computes (no TF32 anywhere).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    graph, prep, tensors = load(args.model)
    net = Net(graph, tensors, dev).eval()
    c, h, w = graph["input"]
    n = args.batch
    # The same deterministic pixels as cifar_benches::rgb8_input / nchw_input.
    i = torch.arange(n * h * w * 3, dtype=torch.int64)
    px = ((i * 7919 + (i // 96) * 31) % 251).to(torch.uint8).reshape(n, h, w, 3)
    norm = prep["normalization"]
    mean = torch.tensor(norm["mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(norm["std"]).reshape(1, 3, 1, 1)
    x_host = ((px.permute(0, 3, 1, 2).float() / 255.0 - mean) / std).contiguous().pin_memory()
    gpu = torch.cuda.get_device_name(0)

    for label, ctx in [("f32", torch.no_grad), ("bf16-autocast", None)]:
        def run():
            with torch.no_grad():
                x = x_host.to(dev, non_blocking=True)
                if ctx is None:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        y = net(x)
                else:
                    y = net(x)
                return y.float().cpu()

        median, runs = bench(run, args.seconds)
        print(json.dumps({
            "runtime": f"pytorch {torch.__version__}", "compute": label, "gpu": gpu,
            "precision": graph["precision"], "batch": n, "median_ms": median * 1e3,
            "images_per_s": n / median, "runs": runs,
        }), flush=True)


if __name__ == "__main__":
    main()
