#!/usr/bin/env python3
"""Makes the ONNX import fixtures in fixtures/onnx/: small PyTorch CNNs, briefly trained
on the project's CIFAR-10 dataset so that their top-1 means something, exported to ONNX,
with ONNX Runtime's f32 logits on the first validation images committed beside them (the
oracle of `trainer import-onnx`'s tests: candle-onnx lacks GlobalAveragePool).

Run through scripts/onnx-fixtures.sh, which installs PyTorch and ONNX Runtime into a
virtual environment on demand. Not run in CI: PyTorch from PyPI is several GB.

Models:
- resnet20: the CIFAR ResNet-20 of He et al. (2016), projection shortcuts (option B).
- mobilenetv2: MobileNetV2 (Sandler et al., 2018) at width 0.5 in its CIFAR form (stem
  and second stage at stride 1), inverted residuals with depthwise convolutions and
  ReLU6; the head's 1x1 convolution uses hard-swish (MobileNetV3's) so that the fixture
  covers it.
"""

import argparse
import json
import struct
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)  # the SDK's Normalization::CIFAR10
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


def read_safetensors(path):
    """The tensors of a safetensors file as numpy arrays (U8 and U32 only)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    dtypes = {"U8": np.uint8, "U32": np.uint32}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


def normalize(images_u8):
    """[N, 32, 32, 3] u8 -> [N, 3, 32, 32] f32, normalized as the SDK does."""
    x = images_u8.astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(0, 3, 1, 2))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        cin = 16
        for i, width in enumerate([16, 32, 64]):
            for j in range(3):
                layers.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def divisible(v, d=8):
    return max(d, int(v + d / 2) // d * d)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    # (expansion, channels, blocks, stride); CIFAR form: stride 1 in the stem and stage 2.
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, classes=10, width=0.5):
        super().__init__()
        cin = divisible(32 * width)
        layers = [nn.Conv2d(3, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6()]
        for t, c, n, s in self.CFG:
            cout = divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = divisible(1280 * width)
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(last, classes)

    def forward(self, x):
        return self.classifier(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


# Name -> (class, peak learning rate, epochs of the committed fixture). MobileNetV2 gets
# 10: trained 3 (69.6% top-1) it had so many near ties between its top two classes that
# int8 top-1 agreement measured tie-breaking (BENCHMARKS.md, issue 21).
MODELS = {"resnet20": (ResNet20, 0.1, 3), "mobilenetv2": (MobileNetV2, 0.1, 10)}


def augment(x):
    """Random crop (4 pixels of reflection padding) and horizontal flip, on a batch."""
    n = x.shape[0]
    padded = nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    dy, dx = np.random.randint(0, 9, n), np.random.randint(0, 9, n)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
    flip = torch.from_numpy(np.random.rand(n) < 0.5)
    out[flip] = out[flip].flip(3)
    return out


def train(model, x, y, epochs, lr, batch=128):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    start = time.time()
    for epoch in range(epochs):
        order = np.random.permutation(len(x))
        for k in range(len(x) // batch):
            idx = order[k * batch : (k + 1) * batch]
            xb, yb = augment(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]).long()
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()


def export(model, path):
    dummy = torch.zeros(1, 3, 32, 32)
    kwargs = dict(input_names=["input"], output_names=["logits"], opset_version=17)
    try:
        torch.onnx.export(model, dummy, str(path), dynamo=False, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kwargs)
    except Exception as e:  # the TorchScript exporter is gone from newer PyTorch
        print(f"  TorchScript export failed ({e}); using the dynamo exporter")
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(model, (dummy,), str(path), dynamo=True, dynamic_shapes={"x": {0: batch}}, external_data=False, **kwargs)
    onnx.checker.check_model(onnx.load(str(path)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/cifar10", help="dataset directory made by `trainer data import`")
    ap.add_argument("--out", default="fixtures/onnx")
    ap.add_argument("--epochs", type=int, default=0, help="epochs for every model (0: each model's own, as committed)")
    ap.add_argument("--train-limit", type=int, default=0, help="train on this many random training images (0: all)")
    ap.add_argument("--reference-images", type=int, default=1000, help="validation images whose ORT logits are kept")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    data = Path(args.data)
    tensors = read_safetensors(data / "train.safetensors")
    manifest = json.loads((data / "manifest.json").read_text())
    images, labels, val = tensors["images"], tensors["labels"], tensors["val_indices"].astype(np.int64)
    held = np.zeros(len(labels), bool)
    held[val] = True
    train_idx = np.flatnonzero(~held)
    if args.train_limit:  # a random subset: the dataset is stored class by class
        train_idx = np.sort(np.random.permutation(train_idx)[: args.train_limit])
    x_train, y_train = normalize(images[train_idx]), labels[train_idx]
    x_val, y_val = normalize(images[val]), labels[val]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "dataset_digest": manifest["digest"],
        "reference_images": f"the first {args.reference_images} images of the validation split, in order",
        "normalization": {"mean": MEAN.tolist(), "std": STD.tolist()},
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "models": {},
    }
    # Models not remade this time keep their entries (and files), if they were made the
    # same way.
    remade = set(args.models.split(","))
    if (out / "manifest.json").exists():
        old = json.loads((out / "manifest.json").read_text())
        kept = set(old.get("models", {})) - remade
        differ = [k for k in ("dataset_digest", "reference_images", "normalization", "torch", "onnx", "onnxruntime") if old.get(k) != record[k]]
        if kept and differ:
            raise SystemExit(f"{out}/manifest.json: {', '.join(kept)} were made with another {', '.join(differ)}; remake them too (--models)")
        record["models"] = {k: v for k, v in old.get("models", {}).items() if k in kept}
    for name in args.models.split(","):
        cls, lr, epochs = MODELS[name]
        epochs = args.epochs or epochs
        model = cls()
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params} parameters, training {epochs} epochs on {len(x_train)} images", flush=True)
        train(model, x_train, y_train, epochs, lr)
        path = out / f"{name}.onnx"
        export(model, path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = np.concatenate([sess.run(None, {"input": x_val[i : i + 500]})[0] for i in range(0, len(x_val), 500)])
        with torch.no_grad():
            torch_logits = model(torch.from_numpy(x_val[:500])).numpy()
        ort_acc = float((logits.argmax(1) == y_val).mean())
        diff = float(np.abs(torch_logits - logits[:500]).max() / np.abs(torch_logits).max())
        print(f"  ONNX Runtime top-1 {100 * ort_acc:.2f}% on {len(y_val)} validation images; torch vs ORT {diff:.1e}")
        logits[: args.reference_images].astype("<f4").tofile(out / f"{name}.ort-logits.f32")
        record["models"][name] = {
            "file": path.name,
            "parameters": params,
            "epochs": epochs,
            "train_images": len(x_train),
            "ort_top1": ort_acc,
            "validation_images": len(y_val),
            "ort_logits": f"{name}.ort-logits.f32",
            "ops": sorted({n.op_type for n in onnx.load(str(path)).graph.node}),
        }
    (out / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
