"""Training throughput of 1 process against N processes under torchrun (gloo, CPU).

    .venv/bin/python benchmarks/ddp_speed.py [--recipe fast] [--procs 2] [--train-size 20000]
        [--epochs 2] [--repeats 3] [--root DIR]

Runs the same `cifarlab train` (same recipe, global batch, steps) as: one process with all
cores' threads; one process with one thread; N processes under torchrun with one thread each
(torchrun's default). Reads the training images/s of the last epoch from each run's
metrics.jsonl (all ranks' images, over the epoch's training time). Configurations are
interleaved; prints the median of ``--repeats`` and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(cmd: list[str], threads: int, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    from cifarlab.runs import RunFolder

    rows = RunFolder(out).read_metrics()
    return rows[-1]["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--root", default=os.environ.get("CIFARLAB_DATA", "../shared/data"))
    args = p.parse_args()
    cores = os.cpu_count() or 1
    train = ["-m", "cifarlab", "train", "--recipe", args.recipe, "--root", args.root,
             "--train-size", str(args.train_size), "--val-size", "1000", "--epochs",
             str(args.epochs), "--no-progress", "--device", "cpu"]  # fmt: skip
    single = [sys.executable, *train]
    multi = [sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc_per_node={args.procs}", *train]  # fmt: skip
    configs = {
        f"1 process x {cores} threads": (single, cores),
        "1 process x 1 thread": (single, 1),
        f"{args.procs} processes x 1 thread (torchrun, gloo)": (multi, 1),
    }
    rates: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for k, (name, (cmd, threads)) in enumerate(configs.items()):
                rates[name].append(run(cmd, threads, Path(tmp) / f"r{i}-{k}"))
    result = {name: round(statistics.median(r)) for name, r in rates.items()}
    for name, value in result.items():
        print(f"{name:<40} {value:>8,} images/s")
    print(json.dumps({"recipe": args.recipe, "cores": cores, "images_per_s": result}))


if __name__ == "__main__":
    main()
