"""Reproduce the original study: mlp and simple_cnn, original recipe (Adam 1e-3, batch 32,
pixels / 255, no augmentation), 10 epochs, several seeds; test accuracy of the best-on-validation
checkpoint, measured once at the end of each run.

    .venv/bin/python benchmarks/original_study.py [--seeds 3] [--models mlp simple_cnn]
        [--root DIR] [--out runs/study] [--epochs 10]

Prints one JSON line per run and a summary (mean ± std). The runs stay in --out, so
`cifarlab evaluate` / `cifarlab compare` can report on them afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default=os.environ.get("CIFARLAB_DATA", "../shared/data"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["mlp", "simple_cnn"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("runs/study"))
    args = p.parse_args()
    warnings.simplefilter("ignore")

    from cifarlab.evaluate.run import evaluate_run
    from cifarlab.train import TrainConfig, train
    from cifarlab.trained import read_run

    results: dict[str, list[dict]] = {m: [] for m in args.models}
    for model in args.models:
        for seed in range(args.seeds):
            run_dir = args.out / f"{model}-seed{seed}"
            start = time.perf_counter()
            cfg = TrainConfig(model=model, root=args.root, epochs=args.epochs, seed=seed)
            train(cfg, out=run_dir, progress=False)
            wall = time.perf_counter() - start
            _, config, history = read_run(run_dir)
            m = evaluate_run(run_dir, "test", report=False)
            row = {
                "model": model,
                "seed": seed,
                "epochs": args.epochs,
                "test_acc": m["accuracy"],
                "test_macro_f1": m["macro_avg"]["f1"],
                "best_val_acc": config["best_val_acc"],
                "best_epoch": m["checkpoint_epoch"],
                "train_seconds": config["train_seconds"],
                "seconds_per_epoch": statistics.median(h["epoch_seconds"] for h in history),
                "wall_seconds": wall,
                "threads": torch.get_num_threads(),
            }
            results[model].append(row)
            print(json.dumps(row), flush=True)
    for model, rows in results.items():
        accs = [r["test_acc"] for r in rows]
        spe = statistics.median(r["seconds_per_epoch"] for r in rows)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(
            f"{model:<12} test accuracy {statistics.mean(accs):.4f} ± {std:.4f} "
            f"over {len(accs)} seeds   {spe:.1f} s/epoch (median)"
        )


if __name__ == "__main__":
    main()
