"""Step-by-step parity of our trainer against airbench94 (PyTorch), on the CPU.

Written for cifar-edge after reading Keller Jordan's legacy/airbench94.py
(github.com/KellerJordan/cifar10-airbench): the same network, loss, optimizer
parametrization, schedule, lookahead, data augmentation and TTA, in f32 on the CPU.

  python airbench_parity.py steps TRACE_DIR      # compare `trainer trace` output step by step
  python airbench_parity.py train --data DIR     # train airbench94 on our dataset's split

`steps` loads the trace's initial weights into airbench's net, feeds it the trace's
batches, runs airbench's own training step on each, and compares the loss, the gradient
of every parameter and every parameter after the step with ours. It exits non-zero when
any relative error (||ours - theirs|| / ||theirs||, per tensor) exceeds --tol.

`train` trains airbench94 on the same 45,000 images `trainer fit` trains on (the
dataset's training split minus its validation indices) and reports the validation
accuracy with and without TTA, as one JSON line.
"""

import argparse
import copy
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

# airbench94's hyper-parameters (legacy/airbench94.py `hyp`).
HYP = {
    "lr": 11.5,  # per 1024 examples, decoupled from momentum
    "momentum": 0.85,
    "weight_decay": 0.0153,  # per 1024 examples, decoupled from the learning rate
    "bias_scaler": 64.0,
    "label_smoothing": 0.2,
    "whiten_bias_epochs": 3,
    "translate": 2,
    "batchnorm_momentum": 0.6,
    "scaling_factor": 1 / 9,
    "bn_eps": 1e-12,
}
CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465))
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616))


# ---------------------------------------------------------------- the network


class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, momentum, eps, weight=False):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = weight
        self.bias.requires_grad = True


class Conv(nn.Conv2d):
    """airbench's conv: bias-free 3x3 'same', PyTorch's default init, then a Dirac
    (identity) init of the first `in_channels` filters."""

    def __init__(self, cin, cout, kernel_size=3, padding="same", bias=False):
        super().__init__(cin, cout, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class CandleMaxPool(torch.autograd.Function):
    """candle 0.11's max_pool2d backward, reproduced to measure what it cost our GPU runs
    before the trainer stopped using it: the gradient is multiplied by the fraction of
    the window that holds the maximum (1/k^2 for a unique maximum) and mapped to windows
    by nearest-neighbour upsampling, which misplaces rows when the size is not a
    multiple of k."""

    @staticmethod
    def forward(ctx, x, k):
        y = F.max_pool2d(x, k)
        ctx.save_for_backward(x, y)
        ctx.k = k
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        k, size = ctx.k, x.shape[-2:]
        mask = (x == F.interpolate(y, size=size, mode="nearest")).to(x.dtype)
        avg = F.avg_pool2d(mask, k)
        return F.interpolate(grad * avg, size=size, mode="nearest") * mask, None


class MaxPool(nn.Module):
    def __init__(self, k, candle_bug=False):
        super().__init__()
        self.k, self.candle_bug = k, candle_bug

    def forward(self, x):
        return CandleMaxPool.apply(x, self.k) if self.candle_bug else F.max_pool2d(x, self.k)


class ConvGroup(nn.Module):
    def __init__(self, cin, cout, bn_momentum, bn_eps, gelu, bn_weight, candle_pool):
        super().__init__()
        self.conv1 = Conv(cin, cout)
        self.pool = MaxPool(2, candle_pool)
        self.norm1 = BatchNorm(cout, bn_momentum, bn_eps, bn_weight)
        self.conv2 = Conv(cout, cout)
        self.norm2 = BatchNorm(cout, bn_momentum, bn_eps, bn_weight)
        self.activ = nn.GELU(approximate=gelu)

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


def make_net(widths, gelu="none", bn_eps=HYP["bn_eps"], bn_weight=False, candle_pool=False):
    g = (HYP["batchnorm_momentum"], bn_eps, gelu, bn_weight, candle_pool)
    net = nn.Sequential(
        Conv(3, 24, 2, padding=0, bias=True),
        nn.GELU(approximate=gelu),
        ConvGroup(24, widths[0], *g),
        ConvGroup(widths[0], widths[1], *g),
        ConvGroup(widths[1], widths[2], *g),
        MaxPool(3, candle_pool),
        nn.Flatten(),
        nn.Linear(widths[2], 10, bias=False),
        Mul(HYP["scaling_factor"]),
    )
    net[0].weight.requires_grad = False
    return net


def init_whitening_conv(layer, images, eps=5e-4):
    """airbench's whitening: eigenvectors of the (uncentered) 2x2 patch covariance."""
    c, (h, w) = images.shape[1], layer.weight.shape[2:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    flat = patches.view(len(patches), -1)
    cov = (flat.T @ flat) / len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov, UPLO="U")
    eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
    eigenvectors = eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    layer.weight.data[:] = torch.cat((scaled, -scaled))


def torch_name(ours):
    """Our parameter name -> airbench's state_dict key."""
    if ours.startswith("whiten."):
        return "0." + ours.split(".", 1)[1]
    if ours.startswith("head."):
        return "7." + ours.split(".", 1)[1]
    group, layer, field = ours.split(".")
    g = int(group[len("group"):]) + 1
    return f"{g}.{layer.replace('bn', 'norm')}.{field}"


# ---------------------------------------------------------------- the optimizer


def make_optimizer(net, batch_size):
    """airbench94's SGD: the loss is summed over the batch; lr and weight decay are
    given per 1024 examples and decoupled from momentum."""
    momentum = HYP["momentum"]
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = HYP["lr"] / kilostep_scale
    wd = HYP["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * HYP["bias_scaler"]
    norm = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
    other = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
    groups = [
        dict(params=norm, lr=lr_biases, weight_decay=wd / lr_biases),
        dict(params=other, lr=lr, weight_decay=wd / lr),
    ]
    return torch.optim.SGD(groups, momentum=momentum, nesterov=True)


def lr_factor(step, total):
    """airbench94's get_lr."""
    warmup = int(total * 0.23)
    if step < warmup:
        frac = step / warmup
        return 0.2 * (1 - frac) + 1.0 * frac
    frac = (step - warmup) / (total - warmup)
    return 1.0 * (1 - frac) + 0.07 * frac


class Lookahead:
    def __init__(self, net):
        self.ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for e, p in zip(self.ema.values(), net.state_dict().values()):
            if p.dtype in (torch.half, torch.float):
                e.lerp_(p, 1 - decay)
                p.copy_(e)


def lookahead_decay(step, total):
    return 0.95**5 * (step / total) ** 3


def loss_fn():
    return nn.CrossEntropyLoss(label_smoothing=HYP["label_smoothing"], reduction="none")


# ---------------------------------------------------------------- steps


def rel(ours, theirs):
    """Relative error of a tensor, in the L2 norm: ||ours - theirs|| / ||theirs||."""
    d = (ours.double() - theirs.double()).norm().item()
    m = theirs.double().norm().item()
    return d / m if m > 0 else d


def check_recipe(cfg, batch):
    """Warns where the traced config is not airbench94's recipe (the harness always runs
    airbench94's): each such line explains a difference the table will show."""
    t, m = cfg["train"], cfg["model"]
    kilostep = 1024 * (1 + 1 / (1 - HYP["momentum"]))
    want = {
        "train.lr (mean loss)": (t["lr"], HYP["lr"] / kilostep * batch),
        "train.momentum": (t["momentum"], HYP["momentum"]),
        "train.weight_decay (mean loss)": (t["weight_decay"], HYP["weight_decay"] / HYP["lr"]),
        "train.bias_weight_decay (mean loss)": (t["bias_weight_decay"],
                                                HYP["weight_decay"] / (HYP["lr"] * HYP["bias_scaler"])),
        "train.bias_lr_mult": (t["bias_lr_mult"], HYP["bias_scaler"]),
        "train.label_smoothing": (t["label_smoothing"], HYP["label_smoothing"]),
        "model.bn_eps": (m["bn_eps"], HYP["bn_eps"]),
        "model.bn_momentum": (m["bn_momentum"], 1 - HYP["batchnorm_momentum"]),
        "model.output_scale": (m["output_scale"], HYP["scaling_factor"]),
    }
    for key, (ours, theirs) in want.items():
        if abs(ours - theirs) > 1e-3 * abs(theirs):
            print(f"note: {key} is {ours:g} in the trace, airbench94's is {theirs:g}")
    if not t["nesterov"]:
        print("note: train.nesterov is off in the trace; airbench94 uses Nesterov momentum")
    if not m["dirac_init"]:
        print("note: model.dirac_init is off: only the initial weights differ (the harness loads ours)")


def steps_command(args):
    trace = json.load(open(os.path.join(args.trace, "trace.json")))
    cfg = trace["config"]
    widths = cfg["model"]["widths"]
    batch = cfg["train"]["batch_size"]
    total = trace["total_steps"]
    init = load_file(os.path.join(args.trace, "init.safetensors"))
    batches = load_file(os.path.join(args.trace, "batches.safetensors"))
    steps = load_file(os.path.join(args.trace, "steps.safetensors"))
    check_recipe(cfg, batch)
    torch.manual_seed(0)
    net = make_net(widths, gelu=args.gelu, bn_weight=cfg["model"]["bn_scale"])
    state = net.state_dict()
    params = trace["params"]
    with torch.no_grad():
        for p in params:
            state[torch_name(p["name"])].copy_(init[p["name"]])
    opt = make_optimizer(net, batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total))
    lookahead = Lookahead(net) if cfg["train"]["lookahead"] else None
    ce = loss_fn()
    named = dict(net.named_parameters())
    peak = cfg["train"]["lr"]
    freeze_at = HYP["whiten_bias_epochs"] if cfg["train"]["whiten_bias_epochs"] > 0 else math.inf
    mode = "free-running from the same initial weights" if args.free else "each step from our state before it"
    print(f"trace: {args.trace} ({trace['backend']} kernels), widths {widths}, batch {batch}, "
          f"{trace['steps']} of {total} steps; GELU {args.gelu}; {mode}; errors are L2-relative")
    print()
    head = "| step | loss (ours) | loss (airbench94) | rel. | lr factor ours / airbench | worst gradient rel. | worst weight rel. after the step |"
    rule = "|---:|---:|---:|---:|---:|---|---|"
    if args.f64:
        head += " worst gradient rel., ours vs f64 | airbench94 (f32) vs f64 |"
        rule += "---:|---:|"
    print(head)
    print(rule)
    worst_all = 0.0
    rows = []
    failed = []
    for i in range(trace["steps"]):
        x, y = batches[f"x.{i}"], batches[f"y.{i}"].long()
        if i > 0 and not args.free:
            # Start from our state before this step: weights, running statistics,
            # momentum (airbench's buffer is in summed-loss units: ours times the batch)
            # and the lookahead average.
            with torch.no_grad():
                for p in params:
                    state[torch_name(p["name"])].copy_(steps[f"after.{i - 1}.{p['name']}"])
                for p in params:
                    key = f"momentum.{i - 1}.{p['name']}"
                    tp = named.get(torch_name(p["name"]))
                    if key in steps and tp is not None:
                        opt.state[tp]["momentum_buffer"] = steps[key].clone() * batch
                for p in params:
                    key = f"lookahead.{i - 1}.{p['name']}"
                    if key in steps and lookahead is not None:
                        lookahead.ema[torch_name(p["name"])].copy_(steps[key])
        # airbench trains the stem bias in its first 3 epochs only.
        net[0].bias.requires_grad = i // trace["steps_per_epoch"] < freeze_at
        net.train()
        exact = None
        if args.f64:
            # The same step in float64 from the same state: how far each f32
            # implementation's gradients are from exact.
            net64 = copy.deepcopy(net).double()
            ce(net64(x.double()), y).sum().backward()
            exact = {k: p.grad / batch for k, p in net64.named_parameters() if p.grad is not None}
        out = net(x)
        loss = ce(out, y).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        theirs_loss = loss.item() / batch
        ours_loss = trace["loss"][i]
        loss_rel = abs(ours_loss - theirs_loss) / abs(theirs_loss)
        gw = (0.0, "-")
        e_ours, e_theirs = 0.0, 0.0
        for p in params:
            key = f"grad.{i}.{p['name']}"
            tp = named.get(torch_name(p["name"]))
            has_theirs = tp is not None and tp.grad is not None
            if (key in steps) != has_theirs:
                print(f"step {i}: {p['name']} has a gradient in only one of the two "
                      f"(ours: {key in steps}, airbench94: {has_theirs})")
                gw = (math.inf, p["name"])
                continue
            if has_theirs:
                r = rel(steps[key], tp.grad / batch)
                if r > gw[0]:
                    gw = (r, p["name"])
                if exact is not None:
                    g64 = exact[torch_name(p["name"])]
                    e_ours = max(e_ours, rel(steps[key], g64))
                    e_theirs = max(e_theirs, rel(tp.grad.double() / batch, g64))
        opt.step()
        sched.step()
        done = i + 1
        if lookahead is not None and done % 5 == 0:
            lookahead.update(net, decay=lookahead_decay(done, total))
        if lookahead is not None and done >= total:
            lookahead.update(net, decay=1.0)
        ww = (0.0, "-")
        state = net.state_dict()
        for p in params:
            r = rel(steps[f"after.{i}.{p['name']}"], state[torch_name(p["name"])])
            if r > ww[0]:
                ww = (r, p["name"])
        ratio = trace["lr"][i] / peak / lr_factor(i, total)
        f64_cols = f" {e_ours:.1e} | {e_theirs:.1e} |" if exact is not None else ""
        print(f"| {i} | {ours_loss:.6f} | {theirs_loss:.6f} | {loss_rel:.1e} | {ratio:.4f} | "
              f"{gw[0]:.1e} ({gw[1]}) | {ww[0]:.1e} ({ww[1]}) |{f64_cols}", flush=True)
        # A gradient difference counts unless our gradient is at least as close to the
        # float64 one as airbench94's own f32 gradient is (when --f64 measured it).
        grad_err = gw[0]
        if exact is not None and e_ours <= max(args.tol, e_theirs):
            grad_err = min(grad_err, args.tol)
        worst = max(loss_rel, grad_err, ww[0])
        if worst > args.tol:
            failed.append(i)
        worst_all = max(worst_all, worst)
        rows.append(dict(step=i, loss_ours=ours_loss, loss_airbench=theirs_loss, loss_rel=loss_rel,
                         grad_rel=gw[0], grad_worst=gw[1], weight_rel=ww[0], weight_worst=ww[1],
                         grad_rel_ours_vs_f64=e_ours if exact is not None else None,
                         grad_rel_airbench_vs_f64=e_theirs if exact is not None else None))
    print()
    verdict = "PASS" if not failed else "FAIL"
    print(f"{verdict}: largest relative error {worst_all:.2e} (limit {args.tol:.0e})"
          + (f"; steps over the limit: {failed}" if failed else "")
          + ("; a gradient counts as equal when ours is as close to float64 as airbench94's" if args.f64 else ""))
    if args.json:
        json.dump(dict(trace=args.trace, gelu=args.gelu, rows=rows, worst=worst_all), open(args.json, "w"), indent=1)
    return 0 if verdict == "PASS" else 1


# ---------------------------------------------------------------- training


def read_dataset(path):
    """Our dataset directory (`trainer data import`): images u8 [N,32,32,3], labels u8,
    val_indices u32."""
    raw = load_file(os.path.join(path, "train.safetensors"))
    images, labels = raw["images"], raw["labels"].long()
    val = raw["val_indices"].long()
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return (images[mask], labels[mask]), (images[val], labels[val])


def to_float(images):
    x = images.permute(0, 3, 1, 2).float() / 255
    return (x - CIFAR_MEAN.view(1, 3, 1, 1)) / CIFAR_STD.view(1, 3, 1, 1)


def batch_flip_lr(x):
    mask = (torch.rand(len(x)) < 0.5).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def batch_crop(padded, size):
    r = (padded.size(-1) - size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(padded), 2))
    out = torch.empty((len(padded), 3, size, size), dtype=padded.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            m = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[m] = padded[m, :, r + sy:r + sy + size, r + sx:r + sx + size]
    return out


def infer(net, x, tta):
    def mirror(v):
        return 0.5 * net(v) + 0.5 * net(v.flip(-1))

    def mirror_translate(v):
        logits = mirror(v)
        p = F.pad(v, (1,) * 4, "reflect")
        translated = [mirror(p[:, :, 0:32, 0:32]), mirror(p[:, :, 2:34, 2:34])]
        return 0.5 * logits + 0.5 * torch.stack(translated).mean(0)

    fn = [net, mirror, mirror_translate][tta]
    net.eval()
    with torch.no_grad():
        return torch.cat([fn(v) for v in x.split(2000)])


def train_command(args):
    torch.manual_seed(args.seed)
    (tx, ty), (vx, vy) = read_dataset(args.data)
    widths = [int(w) for w in args.widths.split(",")]
    images = to_float(tx)
    val = to_float(vx)
    batch = args.batch
    steps_per_epoch = len(images) // batch
    total = math.ceil(steps_per_epoch * args.epochs)
    net = make_net(widths, gelu=args.gelu, bn_weight=args.bn_weight, candle_pool=args.candle_maxpool)
    start = time.time()
    init_whitening_conv(net[0], images[:5000])
    opt = make_optimizer(net, batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total))
    lookahead = Lookahead(net) if not args.no_lookahead else None
    ce = loss_fn()
    flipped = batch_flip_lr(images)
    padded = F.pad(flipped, (HYP["translate"],) * 4, "reflect")
    step = 0
    epoch_losses = []
    for epoch in range(math.ceil(args.epochs)):
        net[0].bias.requires_grad = epoch < HYP["whiten_bias_epochs"]
        x_epoch = batch_crop(padded, 32)
        if epoch % 2 == 1:
            x_epoch = x_epoch.flip(-1)
        order = torch.randperm(len(x_epoch))
        net.train()
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            out = net(x_epoch[idx])
            loss = ce(out, ty[idx]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item() / batch)
            if lookahead is not None and step % 5 == 0:
                lookahead.update(net, decay=lookahead_decay(step, total))
            if step >= total:
                if lookahead is not None:
                    lookahead.update(net, decay=1.0)
                break
        epoch_losses.append(float(np.mean(losses)))
        print(f"epoch {epoch + 1}: mean train loss {epoch_losses[-1]:.4f} ({time.time() - start:.0f}s)",
              file=sys.stderr, flush=True)
        if step >= total:
            break
    train_secs = time.time() - start
    acc = (infer(net, val, 0).argmax(1) == vy).float().mean().item()
    acc_tta = (infer(net, val, 2).argmax(1) == vy).float().mean().item()
    result = dict(impl="airbench94 (PyTorch %s, CPU f32)" % torch.__version__, widths=widths, epochs=args.epochs,
                  batch=batch, steps=step, seed=args.seed, gelu=args.gelu, lookahead=lookahead is not None,
                  bn_weight=args.bn_weight, candle_maxpool=args.candle_maxpool,
                  train_images=len(images), val_images=len(val), epoch_train_loss=epoch_losses,
                  val_acc=acc, val_acc_tta=acc_tta, train_secs=train_secs)
    print(json.dumps(result))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("steps", help="compare a `trainer trace` directory with airbench94's steps")
    s.add_argument("trace")
    s.add_argument("--gelu", choices=["none", "tanh"], default="tanh",
                   help="PyTorch's GELU form: none = erf (airbench94's), tanh = ours (default)")
    s.add_argument("--tol", type=float, default=1e-3)
    s.add_argument("--free", action="store_true",
                   help="let airbench94 run on from the initial weights instead of restarting each step "
                        "from our state (f32 rounding then grows with the steps in both)")
    s.add_argument("--json", help="also write the rows here")
    s.add_argument("--f64", action="store_true",
                   help="also compute each step's gradients in float64: how far each f32 implementation is from exact")
    t = sub.add_parser("train", help="train airbench94 on our dataset's training split")
    t.add_argument("--data", default="data/cifar10")
    t.add_argument("--widths", default="64,256,256")
    t.add_argument("--epochs", type=float, default=9.9)
    t.add_argument("--batch", type=int, default=1024)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--gelu", choices=["none", "tanh"], default="none")
    t.add_argument("--no-lookahead", action="store_true")
    t.add_argument("--bn-weight", action="store_true", help="train the batch-norm scale (airbench's BatchNorm(weight=True))")
    t.add_argument("--candle-maxpool", action="store_true",
                   help="train through candle 0.11's max-pool backward (what our GPU runs did before the fix)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    return steps_command(args) if args.cmd == "steps" else train_command(args)


if __name__ == "__main__":
    sys.exit(main())
