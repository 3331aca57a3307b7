"""Is a sweep's gain real? Sweep a recipe's learning rate, weight decay and label smoothing on
the validation split, then train its best configuration and the recipe's own with fresh
seeds (not the sweep's), and compare the two groups with `cifarlab compare` — the commands a
user would type, timed one after the other.

    python benchmarks/sweep_vs_default.py --trials 24 --seeds 1-5 --out /tmp/sweep-bench

Every step is the real CLI (`cifarlab sweep`, `train --seeds`, `evaluate`, `compare`); the
wall time of each and what `compare` printed are appended to
benchmarks/results/sweep-issue24.jsonl with the machine. Run it with nothing else on the
machine: the times are the point of the record as much as the accuracies.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "sweep-issue24.jsonl"


def run(*args: str) -> tuple[float, str]:
    """One `cifarlab` command: its wall time and its output (which is also shown)."""
    cmd = [sys.executable, "-m", "cifarlab", *args]
    print("$ cifarlab " + " ".join(args), flush=True)
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(p.stdout[-4000:], p.stderr[-2000:], sep="\n", flush=True)
    if p.returncode:
        raise SystemExit(f"failed ({p.returncode}): cifarlab {' '.join(args)}")
    return seconds, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(HERE.parent / "examples" / "sweep-quick.toml"))
    ap.add_argument("--recipe", default="quick", help="the default the best is compared with")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seeds", default="1-5", help="the comparison's seeds (not the sweep's 0)")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-size", type=int)
    args = ap.parse_args()
    from cifarlab.train.probe import describe_machine

    size = ["--train-size", str(args.train_size)] if args.train_size else []
    out = args.out
    times: dict[str, float] = {}
    times["sweep"], sweep_out = run(
        "sweep", args.space, "--trials", str(args.trials), "--out", str(out / "sweep"),
        "--no-progress", *size,
    )  # fmt: skip
    best = out / "sweep" / "best.toml"
    times["train_best"], _ = run(
        "train", "--config", str(best), "--seeds", args.seeds, "--out", str(out / "best"),
        "--no-progress", *size,
    )  # fmt: skip
    times["train_default"], _ = run(
        "train", "--recipe", args.recipe, "--seeds", args.seeds, "--out", str(out / "default"),
        "--no-progress", *size,
    )  # fmt: skip
    for name in ("default", "best"):
        times[f"evaluate_{name}"], _ = run("evaluate", str(out / name), "--split", args.split)
    times["compare"], compared = run(
        "compare", str(out / "default"), str(out / "best"), "--split", args.split,
        "--out", str(out / "compare.html"),
    )  # fmt: skip
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": describe_machine(),
        "space": args.space,
        "trials": args.trials,
        "seeds": args.seeds,
        "split": args.split,
        "train_size": args.train_size,
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "best_toml": best.read_text(),
        "sweep_tail": sweep_out[-3000:],
        "compare": compared,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
