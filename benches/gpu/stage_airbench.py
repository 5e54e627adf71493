#!/usr/bin/env python3
"""Stages airbench94 (KellerJordan/cifar10-airbench, `legacy/airbench94.py`) for the GPU
machine, changed only where it must be to run there on our data:

- data: `train.pt`/`test.pt` from $AIRBENCH_DATA (default `cifar10`), never a download
  (the GPU machine has no network); `make_pt.py` writes them from our imported dataset;
- normalization: the same mean and std, without torchvision (the machine lacks it);
- runs: $AIRBENCH_RUNS (default 4; run 0 warms cuDNN, as airbench's own warm-up does);
- no log file.

The training itself (model, hyperparameters, timing) is untouched. The result is never
committed (it is airbench's code): scripts/gpu-build.sh writes it to .gpu-carry/.

    python3 stage_airbench.py path/to/airbench94.py .gpu-carry/airbench94.py
"""
import sys

EDITS = [
    ("import torchvision\n", ""),
    ("import torchvision.transforms as T\n", ""),
    (
        "        if not os.path.exists(data_path):\n",
        "        if not os.path.exists(data_path):  # staged: no download on the GPU machine\n"
        "            raise FileNotFoundError(data_path + ' (make it with make_pt.py)')\n"
        "        if False:\n",
    ),
    (
        "self.normalize = T.Normalize(CIFAR_MEAN, CIFAR_STD)",
        "self.normalize = lambda x: (x - CIFAR_MEAN.to(x.device, x.dtype).view(1, 3, 1, 1))"
        " / CIFAR_STD.to(x.device, x.dtype).view(1, 3, 1, 1)",
    ),
    ("CifarLoader('cifar10',", "CifarLoader(os.environ.get('AIRBENCH_DATA', 'cifar10'),"),
    ("for run in range(25)", "for run in range(int(os.environ.get('AIRBENCH_RUNS', '4')))"),
    ("    torch.save(log, os.path.join(log_dir, 'log.pt'))\n", ""),
]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src = open(sys.argv[1]).read()
    for old, new in EDITS:
        if old not in src:
            sys.exit(f"stage_airbench: {sys.argv[1]} is not the airbench94.py this expects (no {old.strip()!r})")
        src = src.replace(old, new)
    if "torchvision" in src.replace("if False:", ""):
        # Only the dead download branch may still name it.
        lines = [l for l in src.splitlines() if "torchvision" in l and "datasets.CIFAR10" not in l]
        if lines:
            sys.exit(f"stage_airbench: torchvision is still used: {lines}")
    open(sys.argv[2], "w").write(src)
    print(f"staged {sys.argv[2]}")


if __name__ == "__main__":
    main()
