"""airbench94 and cifarlab side by side on this CPU: same data, same test split, same TTA.

    .venv/bin/pip install --no-deps airbench==0.1.8      # only for this benchmark
    .venv/bin/python benchmarks/peer_airbench.py [--root DIR] [--out runs/peer] [--seeds 3]
        [--cifarlab "--budget {airbench}" "--budget {airbench*0.6}"] [--skip-airbench]
        [--airbench-epochs 9.9] [--summary OUT/results.jsonl]

With ``--seeds N`` each seed 0..N-1 runs airbench94, then each cifarlab set-up (its budget
from that seed's airbench time), one after the other; at the end both sides' mean ± std of
test accuracy (TTA level 2) and training time, and for each cifarlab set-up the two ratios
the comparison asks for: its time over airbench94's, and its accuracy minus airbench94's in
points (Welch's t-test over the seeds: is the difference more than seed noise).
``--summary FILE`` prints that summary again from a results file, without training.

**airbench94** (PyPI ``airbench`` 0.1.8, Keller Jordan): its network (``make_net94``), its
hyperparameters (``hyp``), its loader (``CifarLoader``: data order, alternating flip, ±2 px
translation), its training loop (``utils.train``: whitening init, Nesterov SGD, triangle
schedule, lookahead every 5 steps, label smoothing) and its test-time augmentation
(``utils.infer``, level 2) are the package's own objects. Adapted, because they are bound to
CUDA, and nothing else:

- ``torchvision`` (which does not import beside this torch) gives the package two things: its
  ``transforms.Normalize`` and the ``datasets.CIFAR10`` download. A small stand-in module
  supplies both: the same normalisation (``(x - mean) / std`` per channel), and the images from
  cifarlab's data layer (the CIFAR-10 copy under ``--root``, all 50,000 training images),
  which airbench then saves as its ``train.pt`` / ``test.pt``, as it would have.
- ``torch.cuda.Event`` / ``synchronize`` time the GPU; here a stand-in records
  ``time.perf_counter()`` (the CPU is synchronous), so airbench's own ``total_time_seconds``
  (whitening + training steps, not the per-epoch test pass) is what is reported.
- ``make_net94`` ends with ``.half().cuda()``: here the network stays float32 on the CPU and
  its forward runs under ``torch.autocast("cpu", bfloat16)`` when bf16 trains faster here
  (``--precision auto``: cifarlab's probe decides, as for cifarlab; logits are returned as
  float32 for the loss, which on a GPU airbench computes from fp16 logits), in channels-last
  memory format as the package sets it.
- ``CifarLoader`` keeps the images as fp16 on the GPU (``gpu=0``); here float32 on the CPU (no
  fast fp16 arithmetic on a CPU), and each batch its ``batch_crop`` returns (NCHW) is made
  channels-last before the forward pass, since the network is: otherwise oneDNN converts the
  layout at every convolution.

Batch size 1024 and 9.9 epochs, as published. **cifarlab** runs in the same process series,
one after the other (never at the same time), on all 50,000 training images (``--val-size 0``),
with each ``--cifarlab`` argument string as the options of ``cifarlab train`` (``{airbench}``
is replaced by airbench's measured training seconds, for a budget equal to its time, and
``{airbench*0.6}`` by that share of them); test
accuracy with TTA level 2 and without. Results: one JSON line per system in OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

AIRBENCH_VERSION = "0.1.8"


def _stand_in_torchvision(root: str) -> None:
    """A ``torchvision`` module with the two things airbench takes from it."""
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    datasets = types.ModuleType("torchvision.datasets")

    class Normalize(torch.nn.Module):
        def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
            super().__init__()
            self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = (-1, 1, 1)
            return (x - self.mean.to(x).view(shape)) / self.std.to(x).view(shape)

    class CIFAR10:
        def __init__(self, path: str, download: bool = True, train: bool = True) -> None:
            from cifarlab import load_dataset

            ds = load_dataset("cifar10", root, val_size=0)
            split = ds.train if train else ds.test
            self.data = split.images.numpy()  # N, 32, 32, 3 uint8, as torchvision's
            self.targets = split.labels.tolist()
            self.classes = list(ds.class_names)

    transforms.Normalize = Normalize
    datasets.CIFAR10 = CIFAR10
    tv.transforms, tv.datasets = transforms, datasets
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                        "torchvision.datasets": datasets})  # fmt: skip


class _CpuEvent:
    """``torch.cuda.Event(enable_timing=True)`` for a synchronous CPU."""

    def __init__(self, enable_timing: bool = True) -> None:
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _CpuEvent) -> float:
        return 1e3 * (end.t - self.t)


def _import_airbench(root: str) -> tuple[types.ModuleType, types.ModuleType, str]:
    """airbench's ``lib_airbench94`` and ``utils`` (with the torchvision stand-in), and its
    version; exits with a clear message when it is missing or another version."""
    _stand_in_torchvision(root)
    try:
        from airbench import lib_airbench94 as ab94
        from airbench import utils
    except ImportError:
        sys.exit(f"airbench is not installed: .venv/bin/pip install --no-deps "
                 f"airbench=={AIRBENCH_VERSION}")  # fmt: skip
    import importlib.metadata

    version = importlib.metadata.version("airbench")
    if version != AIRBENCH_VERSION:
        sys.exit(f"airbench {version} is installed; this benchmark is for {AIRBENCH_VERSION}")
    return ab94, utils, version


class _AutocastSequential(torch.nn.Sequential):
    """airbench94's network with its forward under CPU bf16 autocast (``bf16`` attribute)."""

    bf16 = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return super().forward(x).float()


def airbench_net(root: str, bf16: bool) -> torch.nn.Module:
    """``make_net94`` as published, with its closing ``.half().cuda()`` made no-ops for the
    call: float32 weights, channels-last, the forward under bf16 autocast when ``bf16``."""
    ab94, _, _ = _import_airbench(root)
    half, cuda = torch.nn.Module.half, torch.nn.Module.cuda
    torch.nn.Module.half = lambda self: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        net = ab94.make_net94()
    finally:
        torch.nn.Module.half, torch.nn.Module.cuda = half, cuda  # type: ignore[method-assign]
    net.__class__ = _AutocastSequential
    net.bf16 = bf16
    return net.float().to(memory_format=torch.channels_last)


def run_airbench(args: argparse.Namespace, precision: str) -> dict:
    ab94, utils, version = _import_airbench(args.root)
    torch.cuda.Event = _CpuEvent  # type: ignore[misc,assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    bf16 = precision == "bf16"

    class CpuLoader(utils.CifarLoader):
        def __init__(self, path: str, *a, **k) -> None:  # noqa: ANN002, ANN003
            k["gpu"] = "cpu"
            super().__init__(str(args.out / "airbench-data"), *a, **k)
            self.images = self.images.float().contiguous(memory_format=torch.channels_last)

        def __iter__(self):  # noqa: ANN204
            for x, y in super().__iter__():
                yield x.contiguous(memory_format=torch.channels_last), y

    def make_net_cpu() -> torch.nn.Module:
        return airbench_net(args.root, bf16)

    (args.out / "airbench-data").mkdir(parents=True, exist_ok=True)
    utils.CifarLoader = CpuLoader  # train() builds its test loader from this name
    captured: dict = {}
    show = utils.print_training_details

    def capture(variables: dict, is_final_entry: bool) -> None:
        # airbench adds its final TTA pass to total_time_seconds: the training time is the
        # value of the last epoch's line, before the "eval" line
        if variables.get("epoch") != "eval":
            captured["train_seconds"] = variables["total_time_seconds"]
        else:
            captured["with_tta_seconds"] = variables["total_time_seconds"]
        show(variables, is_final_entry)

    utils.print_training_details = capture
    torch.manual_seed(args.seed)
    loader = CpuLoader("cifar10", train=True, batch_size=ab94.hyp["opt"]["batch_size"],
                       aug=ab94.hyp["aug"], altflip=True)  # fmt: skip
    t0 = time.perf_counter()
    model = ab94.train94(loader, epochs=args.airbench_epochs, make_net=make_net_cpu, run=0)
    wall = time.perf_counter() - t0
    test = CpuLoader("cifar10", train=False, batch_size=2000)
    plain = utils.evaluate(model, test, tta_level=0)
    tta = utils.evaluate(model, test, tta_level=2)
    return {
        "system": f"airbench94 {version}",
        "options": f"batch {loader.batch_size}, {args.airbench_epochs} epochs, {precision}",
        "train_seconds": round(captured["train_seconds"], 1),
        "train_and_tta_seconds": round(captured["with_tta_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "test_acc": plain,
        "test_acc_tta": tta,
        "train_images": len(loader.images),
    }


def run_cifarlab(options: str, args: argparse.Namespace, tag: str) -> dict:
    from cifarlab.evaluate.run import evaluate_run
    from cifarlab.runs import RunFolder

    run = args.out / f"cifarlab-{tag}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    cmd = [sys.executable, "-m", "cifarlab", "train", *shlex.split(options), "--val-size", "0",
           "--root", args.root, "--seed", str(args.seed), "--out", str(run),
           "--no-progress"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    config = RunFolder(run).read_config()
    m = evaluate_run(run, "test", checkpoint="last", tta=2, report=False)
    return {
        "system": "cifarlab",
        "options": options,
        "model": config["model"],
        "epochs": round(config["steps"] * config["batch_size"] / config["train_images"], 2)
        if config.get("steps")
        else config["epochs"],  # fmt: skip
        "precision": config["precision_used"],
        "train_seconds": round(config["train_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "test_acc": m.get("accuracy_without_tta", m["accuracy"]),
        "test_acc_tta": m["accuracy"],
        "train_images": config["train_images"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default=os.environ.get("CIFARLAB_DATA", "../shared/data"))
    p.add_argument("--out", type=Path, default=Path("runs/peer"))
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--seeds", type=int, default=1, help="seeds per side (seed, seed+1, ...)")
    p.add_argument("--summary", type=Path, help="only print the summary of this results file")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="airbench's precision (auto: cifarlab's probe of the network)")  # fmt: skip
    p.add_argument("--airbench-epochs", type=float, default=9.9)
    p.add_argument("--skip-airbench", action="store_true")
    p.add_argument("--airbench-seconds", type=float, metavar="S",
                   help="with --skip-airbench: airbench94's training seconds already measured "
                        "for this seed, for the {airbench} budgets (to finish a series that "
                        "stopped part-way)")  # fmt: skip
    p.add_argument("--cifarlab", nargs="*", default=["--budget {airbench}",
                                                     "--budget {airbench*0.6}"])  # fmt: skip
    args = p.parse_args()
    if args.airbench_seconds is not None and (not args.skip_airbench or args.seeds != 1):
        p.error("--airbench-seconds needs --skip-airbench and one seed (--seeds 1)")
    if args.summary:
        print(summary([json.loads(line) for line in args.summary.read_text().splitlines()]))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    from cifarlab.train.probe import choose_precision, describe_machine

    machine = describe_machine()
    rows = []

    def record(row: dict, setup: str) -> None:  # each row as it comes: a series may stop
        when = {"date": time.strftime("%Y-%m-%d"), "time": time.strftime("%H:%M:%S")}
        row = {**row, "setup": setup, "machine": machine, "seed": args.seed, **when}
        print(json.dumps(row), flush=True)
        rows.append(row)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")

    first = args.seed
    for seed in range(first, first + args.seeds):
        args.seed = seed
        airbench_seconds = args.airbench_seconds  # None unless given (with --skip-airbench)
        if not args.skip_airbench:
            precision = args.precision
            if precision == "auto":
                precision = choose_precision("fastnet_l", batch_size=1024).precision
            row = run_airbench(args, precision)
            airbench_seconds = row["train_seconds"]
            record(row, "airbench94")
        for i, options in enumerate(args.cifarlab):
            # {airbench}: airbench's training seconds; {airbench*0.6}: a share of them
            setup = options
            found = re.search(r"\{airbench(\*([0-9.]+))?\}", options)
            if found:
                if airbench_seconds is None:
                    continue
                seconds = airbench_seconds * float(found.group(2) or 1)
                options = options.replace(found.group(0), f"{seconds:.0f}s")
            record(run_cifarlab(options, args, tag=str(i)), setup)
    print(summary(rows))


def summary(rows: list[dict]) -> str:
    """Each set-up's mean ± std over its seeds, and each cifarlab set-up against airbench94:
    time ratio and accuracy difference (points, Welch's t-test)."""
    from cifarlab.evaluate.stats import difference, summarize

    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row.get("setup") or row["system"], []).append(row)
    lines = [f"{'set-up':<28} {'seeds':>5} {'train s (mean ± std)':>21} "
             f"{'test acc, TTA (mean ± std)':>27} {'× airbench time':>15} "
             f"{'Δ points (95% CI, p)':>26}"]  # fmt: skip
    base = by.get("airbench94")
    base_time = summarize([r["train_seconds"] for r in base]).mean if base else None
    for setup, group in by.items():
        t = summarize([r["train_seconds"] for r in group])
        a = summarize([r["test_acc_tta"] for r in group])
        ratio = f"{t.mean / base_time:.2f}" if base_time else "–"
        delta = "–"
        if base and setup != "airbench94":
            d = difference([r["test_acc_tta"] for r in base], [r["test_acc_tta"] for r in group])
            ci = f" [{100 * d.ci[0]:+.2f}, {100 * d.ci[1]:+.2f}]" if d.ci else ""
            p = f", p={d.p:.2f}" if d.p is not None else ""
            delta = f"{100 * d.diff:+.2f}{ci}{p}"
        lines.append(f"{setup:<28} {a.n:>5} {t.mean:>12.1f} ± {t.std or 0:>6.1f} "
                     f"{a.mean:>18.4f} ± {a.std or 0:.4f} {ratio:>15} {delta:>26}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
