"""Why the fast networks break under pixel noise: each suspect measured on the validation split.

    .venv/bin/python benchmarks/noise_suspects.py run --out runs/noise \
        [--recipe max-cpu-muon] [--epochs 4] [--seeds 0] [--jobs 2] [--images 2000] \
        [--variant NAME=SETTING[;SETTING…] …]
    .venv/bin/python benchmarks/noise_suspects.py summary runs/noise/results.jsonl

`run` trains the recipe once per variant and seed for a fixed number of epochs (accuracy after
N epochs does not depend on the machine's speed, so `--jobs 2` trains two at a time with one
thread each), on the 45,000 training images with the usual 5,000 held out, then runs
`cifarlab robustness RUN --split val --images N --json` (the test split is never read) and
appends one JSON line per run to OUT/results.jsonl: validation accuracy with the run's TTA,
clean accuracy and the noise family without TTA (as published), every corruption's mean and
the mean corruption error over the 15 corruptions × 5 severities.

A variant is the recipe with `--set` changes, separated by `;`, e.g.
`eps0.1=whiten_eps=0.1;model_args={}` or `ls0=label_smoothing=0`. The default variants are
issue 26's suspects: the frozen whitening stem (`whiten_eps`: the floor under each eigenvalue
before the 1/sqrt scaling), label smoothing, the logits' scale; and per-image standardization
(`model_args={"standardize":true}`) against the loss of contrast. (The first rounds, before
`whiten_eps` was a setting, passed the floor as `model_args={"whiten_eps":…}` to a FastNet
that took it: the raw lines say so in their `settings`.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cifarlab.runs import RunFolder

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cifarlab"]
# `v1` is the recipe as it was before issue 26 (airbench's whitening floor, no per-image
# standardization), `v2` the recipe as it is; the rest change one thing of v1 or v2.
V1 = "whiten_eps=0.0005;model_args={}"
DEFAULT_VARIANTS = [
    f"base={V1}",
    "eps0.01=whiten_eps=0.01;model_args={}",
    "eps0.1=whiten_eps=0.1;model_args={}",
    "eps0.3=whiten_eps=0.3;model_args={}",
    "eps1=whiten_eps=1.0;model_args={}",
    "eps3=whiten_eps=3.0;model_args={}",
    f"ls0={V1};label_smoothing=0",
    'logit1/3=whiten_eps=0.0005;model_args={"logit_scale":0.3333}',
    'eps0.1+std=whiten_eps=0.1;model_args={"standardize":true}',
    'eps1+std=whiten_eps=1.0;model_args={"standardize":true}',
    'eps3+std=whiten_eps=3.0;model_args={"standardize":true}',
    "v2=",
]


def _variant(text: str) -> tuple[str, list[str]]:
    name, _, settings = text.partition("=")
    if not name:
        raise SystemExit(f"--variant needs NAME=SETTINGS, got {text!r}")
    return name, [s for s in settings.split(";") if s.strip()]


def _one(args: argparse.Namespace, name: str, settings: list[str], seed: int) -> dict:
    folder = args.out / f"{name.replace('/', '_')}-seed{seed}"
    run = RunFolder(folder)  # the run's file names live there
    env = {**os.environ, "CIFARLAB_TENSORBOARD": "0"}
    if not run.checkpoint_path("best").exists():
        cmd = [*CLI, "train", "--recipe", args.recipe, "--epochs", str(args.epochs),
               "--seed", str(seed), "--threads", str(args.threads), "--out", str(folder),
               "--no-progress"]  # fmt: skip
        for s in settings:
            cmd += ["--set", s]
        if args.root:
            cmd += ["--root", args.root]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        train_wall = time.perf_counter() - t0
    else:
        train_wall = None
    rows = run.read_metrics()
    cmd = [*CLI, "robustness", str(folder), "--split", "val", "--images", str(args.images),
           "--json", "--no-progress", "--out", str(folder / "robustness-val")]  # fmt: skip
    env["OMP_NUM_THREADS"] = str(args.threads)
    out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True).stdout
    r = json.loads(out)
    per = r["per_corruption"]
    return {
        "variant": name,
        "settings": settings,
        "seed": seed,
        "recipe": args.recipe,
        "epochs": args.epochs,
        "val_acc_tta": rows[-1].get("val_acc"),
        "clean": r["clean_accuracy"],
        "noise": r["per_family"]["noise"]["mean_accuracy"],
        "mce": r["mean_corruption_error"],
        "per_corruption": {k: round(v["mean_accuracy"], 4) for k, v in per.items()},
        "noise_by_severity": {
            k: per[k]["accuracy_by_severity"] for k in r["per_family"]["noise"]["corruptions"]
        },
        "images": args.images,
        "train_wall_s": train_wall,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(*_variant(v), s) for v in args.variant for s in args.seeds]
    results = args.out / "results.jsonl"

    def go(job: tuple[str, list[str], int]) -> None:
        row = _one(args, *job)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(_line(row), flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(go, jobs))


def _line(r: dict) -> str:
    return (
        f"{r['variant']:>12} seed {r['seed']}: val(TTA) {r['val_acc_tta']:.4f}  clean "
        f"{r['clean']:.4f}  noise {r['noise']:.4f}  mCE {r['mce']:.4f}  "
        + " ".join(f"{k[:5]} {v:.3f}" for k, v in r["per_corruption"].items() if "noise" in k)
    )


def summary(args: argparse.Namespace) -> None:
    rows = [json.loads(x) for f in args.files for x in Path(f).read_text().splitlines() if x]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    print("| variant | seeds | val, TTA | clean val, no TTA | noise family | mCE | glass blur |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in by.items():

        def med(key: str, rs: list[dict] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        glass = statistics.median(r["per_corruption"]["glass_blur"] for r in rs)
        print(f"| {name} | {len(rs)} | {med('val_acc_tta'):.4f} | {med('clean'):.4f} | "
              f"{med('noise'):.3f} | {med('mce'):.3f} | {glass:.3f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, default=Path("runs/noise"))
    r.add_argument("--recipe", default="max-cpu-muon")
    r.add_argument("--epochs", type=int, default=4)
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--images", type=int, default=2000)
    r.add_argument("--root", default=os.environ.get("CIFARLAB_DATA"))
    r.add_argument("--variant", action="append", help="NAME=SETTING[;SETTING...]")
    s = sub.add_parser("summary")
    s.add_argument("files", nargs="+")
    args = p.parse_args()
    if args.cmd == "run":
        args.variant = args.variant or DEFAULT_VARIANTS
        run(args)
    else:
        summary(args)


if __name__ == "__main__":
    main()
