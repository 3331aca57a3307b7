"""Accuracy against epochs of each --budget candidate: the evidence behind `train --budget`.

    # train the grid (validation split only: the test split is never read here)
    .venv/bin/python benchmarks/epoch_curves.py run [--grid quick:1,2,4 fast:2,4 ...]
        [--out runs/curves] [--root DIR]
    # write src/cifarlab/train/curves.json from every results file given
    .venv/bin/python benchmarks/epoch_curves.py collect runs/curves/results.jsonl [more.jsonl ...]
        [--machine "AMD EPYC (Zen 4) 2026-11-26"]

`run` trains each recipe for each number of epochs (seed 0, 45,000 training images, the
recipe's hyperparameters with its schedule stretched over that many epochs) with
`benchmarks/time_to_accuracy.py --no-test`, which appends one JSON line per run to
OUT/results.jsonl: validation accuracy with and without test-time augmentation.

`collect` reads such lines (plain recipe runs count as their recipe's epochs), keeps the
median over seeds of the validation accuracy with TTA for each (candidate, epochs), and writes
the curves. A line carries no machine name, so each file is labelled with `--machine` (one per
file, in order; default: this machine). Accuracy per epoch does not depend on the machine,
up to bf16 rounding (third digit); the seconds per epoch do, and are not kept: `--budget`
measures them on the machine it runs on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CURVES = ROOT / "src" / "cifarlab" / "train" / "curves.json"
# candidate name → (recipe it trains, model); smallest first (the planner relies on it)
CANDIDATES = {
    "fastnet_s": ("quick", "fastnet_s"),
    "fastnet_m": ("fast", "fastnet_m"),
    "fastnet_m_muon": ("fast-muon", "fastnet_m"),
    "fastnet_l": ("max-cpu", "fastnet_l"),
    "fastnet_l_muon": ("max-cpu-muon", "fastnet_l"),
    "fastnet_xl_muon": ("long", "fastnet_xl"),
}
# settings that vary along a curve or change rounding/speed, not what is learned
_ALONG = {"epochs", "precision", "threads"}
# what this file's curves.json holds beyond the recipes' own runs (time_to_accuracy.py)
DEFAULT_GRID = ["quick:1,4,6,10", "fast:2,4,12", "max-cpu:3,10"]


def run(args: argparse.Namespace) -> None:
    for item in args.grid:
        recipe, _, epochs = item.partition(":")
        for e in epochs.split(","):
            cmd = [sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--no-test",
                   "--seeds", "1", "--out", str(args.out), "--root", args.root,
                   "--recipe", recipe, "--set", f"epochs={int(e)}",
                   "--set", f"precision={args.precision}"]  # fmt: skip
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)


def collect(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from cifarlab.errors import CifarlabError
    from cifarlab.train.probe import describe_machine
    from cifarlab.train.recipes import get_recipe, recipe_config

    def setup(recipe: str, overrides: dict) -> dict:
        cfg = recipe_config(recipe, **{k: v for k, v in overrides.items() if k not in _ALONG})
        return {k: v for k, v in cfg.to_dict().items() if k not in _ALONG | {"recipe"}}

    # a line counts for a candidate when its recipe with its overrides *is* the candidate's
    # recipe (an ablation that changed `fast` into `fast-muon` is a `fast-muon` run)
    known = {name: setup(r, {}) for name, (r, _) in CANDIDATES.items()}
    labels = args.machine or []
    samples: dict[tuple[str, int], list[tuple[float, str]]] = {}
    for i, path in enumerate(args.results):
        machine = labels[i] if i < len(labels) else describe_machine()
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                this = setup(row["recipe"], row.get("overrides") or {})
            except CifarlabError:
                continue
            name = next((n for n, s in known.items() if s == this), None)
            if name is None or "val_acc_tta" not in row:
                continue  # another setting than a candidate's: not a curve point
            key = (name, int(row["epochs"]))
            samples.setdefault(key, []).append((row["val_acc_tta"], machine))
    candidates = {}
    for name, (recipe, model) in CANDIDATES.items():
        cfg = get_recipe(recipe).config
        points = []
        for (n, epochs), values in sorted(samples.items()):
            if n == name:
                acc = statistics.median(v for v, _ in values)
                sources = sorted({m for _, m in values})
                points.append([epochs, round(acc, 4), len(values), "; ".join(sources)])
        if points:
            candidates[name] = {"recipe": recipe, "model": model,
                                "batch_size": cfg.batch_size, "points": points}  # fmt: skip
    data = {
        "about": "validation accuracy with TTA level 2 (final weights) after training each "
        "candidate's recipe for N epochs on 45,000 CIFAR-10 training images (the JPEG copy in "
        "../shared/data), 5,000 held out; points are [epochs, accuracy (median over seeds), "
        "seeds, machine]. Written by benchmarks/epoch_curves.py collect.",
        "written": time.strftime("%Y-%m-%d"),
        "candidates": candidates,
    }
    CURVES.write_text(json.dumps(data, indent=1) + "\n")
    for name, c in candidates.items():
        print(name, [(p[0], p[1]) for p in c["points"]])
    print(f"wrote {CURVES}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--grid", nargs="+", default=DEFAULT_GRID, metavar="RECIPE:E1,E2")
    r.add_argument("--out", type=Path, default=Path("runs/curves"))
    r.add_argument("--root", default="../shared/data")
    r.add_argument("--precision", default="bf16", help="fixed, not probed (default: bf16)")
    c = sub.add_parser("collect")
    c.add_argument("results", nargs="+")
    c.add_argument("--machine", action="append", help="label of each results file, in order")
    args = p.parse_args()
    run(args) if args.cmd == "run" else collect(args)


if __name__ == "__main__":
    main()
