"""Accuracy reached and time taken by `cifarlab train --budget` for several budgets.

    .venv/bin/python benchmarks/budget.py [--budgets 1m 2m 5m 10m 20m] [--seed 0]
        [--root DIR] [--out runs/budget] [--plot FILE.png] [--plot-only] [--before OLD.jsonl]
        [--also MORE.jsonl] [--forecast 1m 5m 20m 1h 3h]

For each budget: a fresh subprocess runs `cifarlab train --budget B` on all 45,000 training
images (5,000 held out for validation), timed from the start of the process to its end
(interpreter start-up, data loading and the machine probe included: the promise is about the
whole command); then the final weights are evaluated once on the test split, with the run's
test-time augmentation (level 2) and without. The probe cache is the user's (run `cifarlab
doctor` first to measure the machine while it is idle, or let the first budget do it).

Prints and appends one JSON line per budget to OUT/results.jsonl: budget, the process's wall
seconds, the budget seconds the run counted, what was chosen (network, precision, steps,
epochs, expected validation accuracy), validation and test accuracy, and the machine.
`--plot` draws test accuracy against the budget from every line there (and of the `--also`
files, earlier runs of the same series). `--forecast` plans those budgets on this machine
without training (`budget.plan`: the curves in curves.json and this machine's probe, cached)
and writes OUT/forecast.jsonl: what each budget would choose and the validation accuracy its
curve expects; the plot draws OUT/forecast.jsonl, when there is one, as a dotted line,
beyond the budgets that were trained too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_one(budget: str, args: argparse.Namespace) -> dict:
    from cifarlab.evaluate.run import evaluate_run
    from cifarlab.runs import RunFolder
    from cifarlab.train.budget import parse_duration

    run = args.out / f"budget-{budget}-seed{args.seed}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    cmd = [sys.executable, "-m", "cifarlab", "train", "--budget", budget, "--root", args.root,
           "--seed", str(args.seed), "--out", str(run), "--no-progress"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    config = RunFolder(run).read_config()
    chosen = config["budget_plan"]["chosen"]
    test = evaluate_run(run, "test", checkpoint="last", report=False)
    val = evaluate_run(run, "val", checkpoint="last", report=False)
    return {
        "budget": budget,
        "budget_seconds": parse_duration(budget),
        "wall_seconds": round(wall, 1),
        "budget_used_seconds": round(config["budget_used_seconds"], 1),
        "train_seconds": round(config["train_seconds"], 1),
        "model": config["model"],
        "candidate": chosen["name"],
        "recipe": config["recipe"],
        "precision": config["precision_used"],
        "steps": config["steps"],
        "epochs": round(config["steps"] * config["batch_size"] / config["train_images"], 2),
        "planned_steps": chosen["steps"],
        "expected_val_acc": chosen["expected_acc"],
        "replans": len(config.get("budget_replans", [])),
        "val_acc_tta": val["accuracy"],
        "test_acc": test.get("accuracy_without_tta", test["accuracy"]),
        "test_acc_tta": test["accuracy"],
        "seed": args.seed,
        "machine": config["machine"],
    }


# The issues' targets on the project's copy of CIFAR-10: minutes → test accuracy with TTA.
TARGETS = {5: 0.88, 20: 0.92, 60: 0.93}
# Seconds of a budget gone before planning, for a forecast: starting Python and loading the
# cached data (about 5 s on the Zen 4 machine of BENCHMARKS.md).
FORECAST_SPENT = 5.0


def forecast(budgets: list[str], out: Path) -> list[dict]:
    """Plan each of ``budgets`` here (cached probe, no training): what it would choose and
    the validation accuracy its curve expects; written to ``out`` (JSON lines)."""
    from cifarlab.errors import CifarlabError
    from cifarlab.train import budget as planner

    rows = []
    for text in budgets:
        seconds = planner.parse_duration(text)
        try:
            plan = planner.plan(seconds, num_train=45000, val_size=5000, spent=FORECAST_SPENT)
        except CifarlabError as e:
            print(f"{text:>5}: {e}", flush=True)
            continue
        c = plan.chosen
        rows.append({"budget": text, "budget_seconds": seconds, "candidate": c.name,
                     "epochs": round(c.epochs, 2), "expected_val_acc": c.expected_acc,
                     "images_per_s": c.images_per_s, "machine": plan.machine})  # fmt: skip
        print(f"{text:>5}: {c.name} {c.epochs:.1f} epochs, expected val "
              f"{100 * (c.expected_acc or 0):.1f}%", flush=True)  # fmt: skip
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def plot(
    results: Path,
    out: Path,
    before: list[Path] | None = None,
    also: list[Path] | None = None,
    expected: Path | None = None,
) -> None:
    """Test accuracy against the budget from ``results`` and ``also``; each of ``before`` (an
    earlier series, e.g. before a recipe change) drawn faintly behind it for comparison; the
    forecast ``expected`` (validation accuracy the curves expect) as a dotted line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def read(path: Path) -> list[dict]:
        if not path.exists():
            return []
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return sorted(rows, key=lambda r: r["budget_seconds"])

    rows = sorted(
        [r for path in [results, *(also or [])] for r in read(path)],
        key=lambda r: r["budget_seconds"],
    )
    ahead = read(expected) if expected else []
    if not rows and not ahead:
        raise SystemExit(f"nothing to plot: no runs in {results} and no forecast beside it")
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = {"fastnet_s": "#1f77b4", "fastnet_m": "#ff7f0e", "fastnet_l": "#2ca02c",
              "fastnet_m_muon": "#d62728", "fastnet_l_muon": "#9467bd",
              "fastnet_xl_muon": "#8c564b"}  # fmt: skip
    for path in before or []:
        old = read(path)
        ax.plot([r["budget_seconds"] / 60 for r in old], [100 * r["test_acc_tta"] for r in old],
                color="#bbb", lw=1, ls="--", marker="o", ms=4, zorder=1,
                label=f"before: {path.stem}")  # fmt: skip
    if ahead:
        ax.plot([r["budget_seconds"] / 60 for r in ahead],
                [100 * r["expected_val_acc"] for r in ahead], color="#555", lw=1.2, ls=":",
                marker=".", zorder=2,
                label="expected (validation, from the curves; not trained)")  # fmt: skip
        last = max((x["budget_seconds"] for x in rows), default=0)
        for r in ahead:
            if r["budget_seconds"] > last:
                ax.annotate(f"{100 * r['expected_val_acc']:.1f}%\n{r['candidate']}\n"
                            f"{r['epochs']:.0f} ep", (r["budget_seconds"] / 60,
                            100 * r["expected_val_acc"]), textcoords="offset points",
                            xytext=(0, 8), ha="center", fontsize=7, color="#555")  # fmt: skip
    for name in sorted({r.get("candidate", r["model"]) for r in rows}):
        rs = [r for r in rows if r.get("candidate", r["model"]) == name]
        ax.scatter([r["budget_seconds"] / 60 for r in rs], [100 * r["test_acc_tta"] for r in rs],
                   s=50, color=colors.get(name), label=name, zorder=3)  # fmt: skip
    ax.plot([r["budget_seconds"] / 60 for r in rows], [100 * r["test_acc_tta"] for r in rows],
            color="#888", lw=1, zorder=2)  # fmt: skip
    for r in rows:
        ax.annotate(f"{100 * r['test_acc_tta']:.1f}%\n{r['wall_seconds'] / 60:.1f} min, "
                    f"{r['epochs']:.1f} ep", (r["budget_seconds"] / 60, 100 * r["test_acc_tta"]),
                    textcoords="offset points", xytext=(0, -30), ha="center",
                    fontsize=8)  # fmt: skip
    for minutes, acc in TARGETS.items():  # the targets, to be read against the dots
        ax.scatter([minutes], [100 * acc], marker="x", color="#c62828", s=60, zorder=3)
        ax.annotate(f"target ≥ {100 * acc:g}%", (minutes, 100 * acc),
                    textcoords="offset points", xytext=(-8, 0), ha="right", va="center",
                    fontsize=8, color="#c62828")  # fmt: skip
    ax.set_xscale("log")
    ticks = sorted({r["budget_seconds"] / 60 for r in rows + ahead})
    ax.set_xlim(ticks[0] / 1.35, ticks[-1] * 1.35)
    ax.set_xticks(ticks, [f"{t / 60:.3g} h" if t >= 60 else f"{t:.3g}" for t in ticks])
    ax.minorticks_off()
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - 3, hi + 1)
    ax.set_xlabel(
        "budget (minutes, or h: hours; log scale)\ndots: test accuracy, actual time, epochs"
        + ("; dotted: the validation accuracy the curves expect" if ahead else "")
    )
    ax.set_ylabel("test accuracy with TTA (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="network chosen", loc="lower right", fontsize=8)
    machine = rows[0]["machine"].split(", flags")[0] if rows else ""
    ax.set_title(f"cifarlab train --budget: CIFAR-10 (JPEG copy)\n{machine}", fontsize=10)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budgets", nargs="+", default=["1m", "2m", "5m", "10m", "20m"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default=os.environ.get("CIFARLAB_DATA", "../shared/data"))
    p.add_argument("--out", type=Path, default=Path("runs/budget"))
    p.add_argument("--plot", type=Path, help="draw test accuracy against the budget")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--also", nargs="*", type=Path, default=[],
                   help="more results files of the same series, plotted with OUT's")  # fmt: skip
    p.add_argument(
        "--forecast",
        nargs="+",
        metavar="BUDGET",
        help="plan these budgets here without training: OUT/forecast.jsonl, which --plot "
        "draws whenever it is there",
    )
    p.add_argument("--before", nargs="*", type=Path, default=[],
                   help="earlier results files, drawn faintly behind")  # fmt: skip
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    expected = args.out / "forecast.jsonl"
    if args.forecast:
        forecast(args.forecast, expected)
    if not args.plot_only:
        for budget in args.budgets:
            row = run_one(budget, args)
            print(json.dumps(row), flush=True)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
    if args.plot:
        plot(results, args.plot, args.before, args.also, expected)


if __name__ == "__main__":
    main()
