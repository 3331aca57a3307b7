"""Time to accuracy of the training recipes: train, measure, plot.

    .venv/bin/python benchmarks/time_to_accuracy.py [--recipe quick fast max-cpu] [--seeds 3]
        [--root DIR] [--out runs/tta] [--set FIELD=VALUE ...] [--no-test] [--plot FILE.png]

For each recipe and seed: trains with ``cifarlab.train`` (progress bars off), then evaluates
the final weights on the validation split and (unless ``--no-test``) on the test split, each
with and without test-time augmentation. Prints one JSON line per run: recipe, seed, training
seconds (the training loop plus the whitening set-up, not the per-epoch validation), the wall
time of the whole train() call (data loading and validation included), images/s,
val and test accuracy with and without TTA, and the seconds the TTA evaluation of the test
split took. Appends the same lines to ``OUT/results.jsonl``; ``--plot`` draws test (else val)
accuracy against training time from every line there.

Choose hyperparameters with ``--no-test`` (validation only); measure test accuracy once, at
the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path


def _evaluate(run: Path, split: str, tta: int) -> tuple[float, float, float]:
    """(accuracy with TTA, without, seconds of the TTA pass) of the run's last weights."""
    from cifarlab.evaluate.run import evaluate_run

    t0 = time.perf_counter()
    m = evaluate_run(run, split, checkpoint="last", tta=tta, report=False)
    seconds = time.perf_counter() - t0
    return m["accuracy"], m.get("accuracy_without_tta", m["accuracy"]), seconds


def run_one(recipe: str, seed: int, args: argparse.Namespace) -> dict:
    from cifarlab.train import train
    from cifarlab.train.config import parse_setting
    from cifarlab.train.recipes import recipe_config
    from cifarlab.trained import read_run

    overrides = dict(parse_setting(s) for s in args.set)
    cfg = recipe_config(recipe, root=args.root, seed=seed, **overrides)
    tag = args.tag or "-".join(f"{k}={v}" for k, v in overrides.items()).replace("/", "_")
    run = args.out / f"{recipe}{'-' + tag if tag else ''}-seed{seed}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    t0 = time.perf_counter()
    train(cfg, out=run, progress=False)
    wall = time.perf_counter() - t0
    _, config, history = read_run(run)
    tta = cfg.tta or 2
    val, val_plain, _ = _evaluate(run, "val", tta)
    row = {
        "recipe": recipe,
        "overrides": overrides,
        "seed": seed,
        "epochs": cfg.epochs,
        "train_seconds": round(config["train_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "images_per_s": round(statistics.median(h["images_per_s"] for h in history)),
        "val_acc": val_plain,
        "val_acc_tta": val,
    }
    if not args.no_test:
        test, test_plain, seconds = _evaluate(run, "test", tta)
        row.update(test_acc=test_plain, test_acc_tta=test, tta_eval_seconds=round(seconds, 1))
    row["threads"] = __import__("torch").get_num_threads()
    return row


# The targets: (minutes of training, test accuracy with TTA), both limits.
TARGETS = {"quick": (0.5, 0.70), "fast": (5.0, 0.87), "max-cpu": (18.0, 0.905)}


def plot(results: Path, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    key = "test_acc_tta" if any("test_acc_tta" in r for r in rows) else "val_acc_tta"
    fig = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if key in r and not r.get("overrides"):
            groups.setdefault(r["recipe"], []).append(r)
    for name, rs in groups.items():
        xs = [r["train_seconds"] / 60 for r in rs]
        ys = [100 * r[key] for r in rs]
        points = ax.scatter(xs, ys, label=name, s=30)
        ax.errorbar(statistics.mean(xs), statistics.mean(ys), fmt="D", markersize=9,
                    color=points.get_facecolor()[0], markeredgecolor="black")  # fmt: skip
        left = statistics.mean(xs) > 0.6  # label to the left of the point, if there is room
        ax.annotate(f"{name}\n{statistics.mean(ys):.1f}% in {statistics.mean(xs):.1f} min",
                    (statistics.mean(xs), statistics.mean(ys)), textcoords="offset points",
                    xytext=(-12 if left else 12, 0), ha="right" if left else "left",
                    va="center", fontsize=9, fontweight="bold")  # fmt: skip
    for name, (minutes, acc) in TARGETS.items():
        if name in groups:
            ax.scatter([minutes], [100 * acc], marker="x", color="#c62828", s=60, zorder=3)
            ax.annotate(f"{name} target:\n≥ {100 * acc:g}% in ≤ {minutes:g} min",
                        (minutes, 100 * acc), textcoords="offset points", xytext=(8, 0),
                        ha="left", va="center", fontsize=8, color="#c62828")  # fmt: skip
    ax.set_xscale("log")
    ticks = [0.25, 0.5, 1, 2, 5, 10, 20, 30, 60]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    low = min([100 * a for n, (_, a) in TARGETS.items() if n in groups] + [ax.get_ylim()[0]])
    ax.set_ylim(low - 2, ax.get_ylim()[1] + 1)
    ax.set_xlabel("training time on this CPU (minutes, log scale)")
    ax.set_ylabel(f"{'test' if key.startswith('test') else 'validation'} accuracy with TTA (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="recipe (dots: seeds, ◆: mean)", loc="lower right")
    ax.set_title("CIFAR-10 (JPEG copy): accuracy against training time, 2-core CPU")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", nargs="+", default=["quick", "fast", "max-cpu"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--root", default=os.environ.get("CIFARLAB_DATA", "../shared/data"))
    p.add_argument("--out", type=Path, default=Path("runs/time_to_accuracy"))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--tag", help="name for these runs (default: from --set)")
    p.add_argument("--no-test", action="store_true", help="validation only (for tuning)")
    p.add_argument("--plot", type=Path, help="draw accuracy vs time from OUT/results.jsonl")
    p.add_argument("--plot-only", action="store_true", help="only draw the plot")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    if not args.plot_only:
        for recipe in args.recipe:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                row = run_one(recipe, seed, args)
                line = json.dumps(row)
                print(line, flush=True)
                with open(results, "a") as f:
                    f.write(line + "\n")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    sys.exit(main())
