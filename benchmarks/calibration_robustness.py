"""Calibration and CIFAR-10-C robustness of trained runs, as one table (BENCHMARKS.md).

For each run folder: `cifarlab evaluate` (unless eval_test.json already has its calibration)
and `cifarlab robustness` (unless robustness.json is there), then one row: test accuracy, ECE
and NLL before and after temperature scaling, the temperature, the mean corruption accuracy,
its relative drop and the five worst corruptions, with the seconds robustness took.

    CIFARLAB_DATA=../shared/data .venv/bin/python benchmarks/calibration_robustness.py \\
        runs/quick runs/fast runs/max-cpu

Timing the first run (generation included) needs an empty cache: CIFARLAB_CACHE=$(mktemp -d).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cifarlab.runs import RunFolder


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cifarlab", *args], check=True)


def row(run: Path, *, rerun: bool = False) -> dict:
    folder = RunFolder(run)
    ev = folder.eval_path("test")
    if rerun or not ev.is_file() or "calibration" not in folder.read_eval("test"):
        _cli("evaluate", str(run), "--no-report")
    if rerun or not folder.robustness_path.is_file():
        _cli("robustness", str(run), "--no-progress")
    m = folder.read_eval("test")
    r = folder.read_robustness()
    c = m["calibration"]
    after = c.get("after") or {}
    return {
        "run": run.name,
        "test_accuracy": m["accuracy"],
        "tta": m.get("tta"),
        "ece_before": c["before"]["ece"],
        "ece_after": after.get("ece"),
        "nll_before": c["before"]["nll"],
        "nll_after": after.get("nll"),
        "temperature": c.get("temperature"),
        "clean_accuracy": r["clean_accuracy"],
        "mean_corruption_accuracy": r["mean_corruption_accuracy"],
        "relative_drop": r["relative_drop"],
        "worst": {n: r["per_corruption"][n]["mean_accuracy"] for n in r["worst"]},
        "robustness_seconds": r["timing"]["total_s"],
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--rerun", action="store_true", help="evaluate and run robustness again")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    rows = [row(r, rerun=args.rerun) for r in args.runs]
    print(
        "| run | test acc (TTA) | ECE before → after | NLL before → after | T | clean acc "
        "(no TTA) | mean corruption acc | relative drop | five worst (mean acc) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        worst = ", ".join(f"{n} {_pct(a)}" for n, a in r["worst"].items())
        t = "–" if r["temperature"] is None else f"{r['temperature']:.3f}"
        nll_after = "–" if r["nll_after"] is None else f"{r['nll_after']:.3f}"
        print(f"| {r['run']} | {_pct(r['test_accuracy'])} | {_pct(r['ece_before'])} → "
              f"{_pct(r['ece_after'])} | {r['nll_before']:.3f} → {nll_after} | {t} | "
              f"{_pct(r['clean_accuracy'])} | {_pct(r['mean_corruption_accuracy'])} | "
              f"{_pct(r['relative_drop'])} | {worst} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
