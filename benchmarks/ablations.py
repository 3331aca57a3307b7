"""Ablations of the FastNet recipes on the validation split, many runs in parallel.

    # the grid (validation only: the test split is never read here)
    .venv/bin/python benchmarks/ablations.py run [--only NAME ...] [--workers 4]
        [--deadline SECONDS] [--out runs/ablations] [--root DIR]
    .venv/bin/python benchmarks/ablations.py table runs/ablations/*.jsonl
    # carry the data to a machine without ../shared/data (e.g. a GPU box): about 40 MB
    .venv/bin/python benchmarks/ablations.py pack DIR [--root ../shared/data]
    .venv/bin/python benchmarks/ablations.py unpack DIR DEST

Each grid entry trains one recipe with some settings changed (``--set``-style overrides) for
some epochs with ``benchmarks/time_to_accuracy.py --no-test`` and records validation accuracy
with and without TTA. Accuracy per epoch does not depend on the machine (up to bf16 rounding),
so the grid may run on a GPU, where it is many times faster than on the 2-core CPUs; the
seconds a change costs or saves on a CPU are measured on the CPU (``benchmarks/budget.py``,
``benchmarks/kernel_efficiency.py``).

``pack`` stores the images as JPEG mosaics (quality 95, no chroma subsampling: mean absolute
difference 0.7 of 255 levels from the copy in ../shared/data) so that the whole set fits in
about 40 MB; ``unpack`` writes them back in the official python layout. Figures from an
unpacked copy are for comparing settings with each other, not for quoting.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

MUON = {"optimizer": "muon"}
LINEAR = {"warmup": 0.0, "lr_start": 1.0, "lr_end": 0.0}
P24 = {"progressive": {"24": 0.5}}


def _grid(which: str = "first") -> list[tuple[str, str, dict, int]]:
    """(name, recipe, overrides, seed), most wanted first. ``first``: Muon, progressive
    resizing and the rest against the recipes; ``second``: what the first left open (Muon's
    lr, progressive resizing with SGD over more seeds and at equal cost); ``third``: Muon's
    lr below 0.12; ``fourth``: small changes around the Muon recipe at 7 and 11 epochs, 3
    seeds each."""
    g: list[tuple[str, str, dict, int]] = []

    def add(name: str, recipe: str, overrides: dict, epochs: list[int], seed: int = 0) -> None:
        for e in epochs:
            g.append((f"{name}-e{e}-s{seed}", recipe, {**overrides, "epochs": e}, seed))

    add("L-muon", "max-cpu", MUON, [8])
    add("L-muon-p24", "max-cpu", {**MUON, **P24}, [8])
    add("L-sgd", "max-cpu", {}, [8])
    add("L-sgd-p24", "max-cpu", P24, [8])
    add("L-muon", "max-cpu", MUON, [8], seed=1)
    add("L-muon-p24", "max-cpu", {**MUON, **P24}, [8], seed=1)
    add("L-sgd", "max-cpu", {}, [8], seed=1)
    add("L-muon-lin", "max-cpu", {**MUON, **LINEAR}, [8])
    add("L-muon-lr012", "max-cpu", {**MUON, "muon_lr": 0.12}, [8])
    add("L-muon-lr036", "max-cpu", {**MUON, "muon_lr": 0.36}, [8])
    add("L-muon-nola", "max-cpu", {**MUON, "lookahead_every": 0}, [8])
    add("L-muon-p16-24", "max-cpu", {**MUON, "progressive": {"16": 0.25, "24": 0.5}}, [8])
    add("L-muon-p24x7", "max-cpu", {**MUON, "progressive": {"24": 0.7}}, [8])
    add("L-muon-ls01", "max-cpu", {**MUON, "label_smoothing": 0.1}, [8])
    add("L-muon-b512", "max-cpu", {**MUON, "batch_size": 512, "lr": 0.75}, [8])
    add("L-muon", "max-cpu", MUON, [4, 6, 12, 16])
    add("L-muon-p24", "max-cpu", {**MUON, **P24}, [4, 6, 12, 16])
    add("M-muon", "fast", MUON, [2, 4, 8])
    add("M-muon-p24", "fast", {**MUON, **P24}, [2, 4, 8])
    add("M-sgd", "fast", {}, [4, 8])
    add("L-sgd", "max-cpu", {}, [4, 12])
    add("M-muon", "fast", MUON, [3, 6, 12])
    add("M-muon-p24", "fast", {**MUON, **P24}, [3, 6, 12])
    add("S-muon", "quick", MUON, [1, 2, 3, 6])
    add("L-muon", "max-cpu", MUON, [3, 10, 20])
    add("L-muon-p24", "max-cpu", {**MUON, **P24}, [3, 10, 20])
    if which == "first":
        return g
    g = []
    M12 = {**MUON, "muon_lr": 0.12}
    P24x3 = {"progressive": {"24": 0.3}}
    for seed in (1, 2):
        add("L-sgd-p24", "max-cpu", P24, [8], seed)
    add("L-sgd", "max-cpu", {}, [8], 2)
    for seed in (0, 1):
        add("L-sgd-p24", "max-cpu", P24, [10], seed)
        add("L-sgd", "max-cpu", {}, [10], seed)
        add("L-sgd-p24x3", "max-cpu", P24x3, [8], seed)
        add("L-muon012-p24", "max-cpu", {**M12, **P24}, [8], seed)
    add("L-muon012", "max-cpu", M12, [8], 1)
    add("L-muon008", "max-cpu", {**MUON, "muon_lr": 0.08}, [8])
    add("L-muon006", "max-cpu", {**MUON, "muon_lr": 0.06}, [8])
    add("L-muon012-b512", "max-cpu", {**M12, "batch_size": 512, "lr": 0.75}, [8])
    add("L-sgd-p28", "max-cpu", {"progressive": {"28": 0.5}}, [8])
    add("L-sgd-p24", "max-cpu", P24, [12, 16])
    add("L-muon012-p24", "max-cpu", {**M12, **P24}, [10, 12, 16])
    add("L-muon012", "max-cpu", M12, [12, 16])
    for seed in (0, 1):
        add("M-sgd-p24", "fast", P24, [8], seed)
    add("M-sgd", "fast", {}, [8], 1)
    add("M-sgd-p24", "fast", P24, [10, 12])
    add("M-sgd", "fast", {}, [10, 12])
    add("M-muon012", "fast", M12, [8])
    add("M-muon012-p24", "fast", {**M12, **P24}, [8])
    add("L-sgd-p24", "max-cpu", P24, [4, 6])
    add("M-sgd-p24", "fast", P24, [2, 4, 6])
    add("S-sgd-p24", "quick", P24, [3, 6])
    if which == "second":
        return g
    g = []  # third: Muon's lr below 0.12, with progressive resizing, and its curves
    for lr in ("006", "008"):
        mu = {**MUON, "muon_lr": int(lr) / 100}
        for seed in (0, 1):
            add(f"L-muon{lr}-p24", "max-cpu", {**mu, **P24}, [8], seed)
        add(f"L-muon{lr}", "max-cpu", mu, [8], 1)
    add("L-muon004", "max-cpu", {**MUON, "muon_lr": 0.04}, [8])
    M8 = {**MUON, "muon_lr": 0.08}
    for seed in (0, 1):
        add("M-muon008-p24", "fast", {**M8, **P24}, [8], seed)
        add("M-muon006-p24", "fast", {**MUON, "muon_lr": 0.06, **P24}, [8], seed)
    add("L-muon008-p24", "max-cpu", {**M8, **P24}, [3, 4, 6, 10, 12, 16])
    add("L-muon006-p24", "max-cpu", {**MUON, "muon_lr": 0.06, **P24}, [4, 6, 10, 12, 16])
    add("L-muon008-p24x3", "max-cpu", {**M8, "progressive": {"24": 0.3}}, [8])
    add("L-muon008-p20", "max-cpu", {**M8, "progressive": {"20": 0.5}}, [8])
    add("L-muon008-p24-28", "max-cpu", {**M8, "progressive": {"24": 0.5, "28": 0.75}}, [8])
    add("M-muon008-p24", "fast", {**M8, **P24}, [2, 3, 4, 6, 12])
    add("S-muon008-p24", "quick", {**M8, **P24}, [3, 6])
    if which == "third":
        return g
    # fourth: around the Muon recipe at the lengths the airbench94 comparison needs (about 7
    # and 11.5 epochs), 3 seeds each: the SGD groups' lr, label smoothing, Muon's momentum,
    # warm-up, Muon's lr for the longer run
    g = []
    base = {**M8, **P24}
    variants = {
        "base": {},
        "lr16": {"lr": 0.5217391304, "weight_decay": 0.00095625},  # sgd_hyper(256, 16, ...)
        "lr8": {"lr": 0.2608695652, "weight_decay": 0.0019125},  # sgd_hyper(256, 8, ...)
        "ls03": {"label_smoothing": 0.3},
        "mom08": {"muon_momentum": 0.8},
        "warm01": {"warmup": 0.1},
    }
    for e in (7, 11):
        for seed in (0, 1, 2):
            for v, o in variants.items():
                add(f"L4-{v}", "max-cpu", {**base, **o}, [e], seed)
            if e == 11:
                add("L4-mlr010", "max-cpu", {**base, "muon_lr": 0.10}, [e], seed)
                add("L4-mlr006", "max-cpu", {**base, "muon_lr": 0.06}, [e], seed)
    return g


def _run_one(entry: tuple[str, str, dict, int], args: argparse.Namespace) -> dict | None:
    name, recipe, overrides, seed = entry
    out = args.out / name
    cmd = [sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--no-test",
           "--seeds", "1", "--first-seed", str(seed), "--out", str(out), "--root", args.root,
           "--recipe", recipe, "--tag", "run", "--set", f"precision={args.precision}",
           "--set", f"threads={args.threads}"]  # fmt: skip
    for k, v in overrides.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    results = out / "results.jsonl"
    if proc.returncode or not results.exists():
        print(f"FAILED {name}: {proc.stderr[-800:]}", flush=True)
        return None
    row = json.loads(results.read_text().splitlines()[-1])
    row.update(name=name, overrides=overrides, wall=round(time.perf_counter() - t0, 1))
    with open(args.jsonl or args.out / "ablations.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{name:28s} val {row['val_acc']:.4f} tta {row['val_acc_tta']:.4f} "
          f"({row['wall']:.0f} s)", flush=True)  # fmt: skip
    return row


def run(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from cifarlab.data.dataset import load_dataset

    load_dataset("cifar10", root=args.root)  # parse and cache once, before the workers
    wanted = args.only or [""]
    grid = [e for e in _grid(args.grid) if any(e[0].startswith(o) for o in wanted)]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def job(entry: tuple[str, str, dict, int]) -> dict | None:
        if args.deadline and time.perf_counter() - start > args.deadline:
            return None  # out of time: not started
        return _run_one(entry, args)

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(job, grid))
    print(f"grid done in {time.perf_counter() - start:.0f} s", flush=True)


def table(args: argparse.Namespace) -> None:
    rows = [json.loads(x) for p in args.results for x in Path(p).read_text().splitlines() if x]
    for r in sorted(rows, key=lambda r: r["name"]):
        print(f"{r['name']:28s} val {r['val_acc']:.4f}  tta {r['val_acc_tta']:.4f}")


def pack(args: argparse.Namespace) -> None:
    from PIL import Image

    args.dir.mkdir(parents=True, exist_ok=True)
    src = Path(args.root) / "cifar-10-batches-py"
    for name in FILES:
        with open(src / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        mosaic = x.reshape(100, 100, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(3200, 3200, 3)
        Image.fromarray(mosaic).save(args.dir / f"{name}.jpg", quality=95, subsampling=0)
        np.save(args.dir / f"{name}_labels.npy", np.asarray(batch["labels"], dtype=np.uint8))
    with open(src / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    (args.dir / "label_names.json").write_text(json.dumps(meta["label_names"]))
    size = sum(p.stat().st_size for p in args.dir.iterdir())
    print(f"packed into {args.dir} ({size / 1e6:.1f} MB)")


def unpack(args: argparse.Namespace) -> None:
    from PIL import Image

    dest = args.dest / "cifar-10-batches-py"
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        mosaic = np.asarray(Image.open(args.dir / f"{name}.jpg").convert("RGB"))
        x = mosaic.reshape(100, 32, 100, 32, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 32, 32, 3)
        labels = np.load(args.dir / f"{name}_labels.npy").astype(int).tolist()
        batch = {"batch_label": name, "labels": labels,
                 "data": np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1)),
                 "filenames": [f"{name}_{i}.png" for i in range(len(x))]}  # fmt: skip
        buf = io.BytesIO()
        pickle.dump(batch, buf, protocol=2)
        (dest / name).write_bytes(buf.getvalue())
    names = json.loads((args.dir / "label_names.json").read_text())
    meta = {"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072}
    (dest / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    print(f"unpacked into {dest}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--grid", choices=["first", "second", "third", "fourth"], default="first")
    r.add_argument("--only", nargs="*", help="grid entries whose names start so")
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    r.add_argument("--deadline", type=float, help="start no run after this many seconds")
    r.add_argument("--out", type=Path, default=Path("runs/ablations"))
    r.add_argument("--root", default="../shared/data")
    r.add_argument("--precision", default="bf16")
    r.add_argument("--jsonl", type=Path, help="results file (default: OUT/ablations.jsonl)")
    t = sub.add_parser("table")
    t.add_argument("results", nargs="+")
    k = sub.add_parser("pack")
    k.add_argument("dir", type=Path)
    k.add_argument("--root", default="../shared/data")
    u = sub.add_parser("unpack")
    u.add_argument("dir", type=Path)
    u.add_argument("dest", type=Path)
    args = p.parse_args()
    {"run": run, "table": table, "pack": pack, "unpack": unpack}[args.cmd](args)


if __name__ == "__main__":
    main()
