"""``cifarlab robustness``: parse its options, call :func:`run_robustness`, print the table.

Wired into ``cifarlab.cli`` by its ``COMMANDS`` (``add_parser``); nothing heavy is imported
before the command runs (the CLI must catch a Ctrl-C from its first moment).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``robustness`` command's parser, as one of ``cifarlab.cli.COMMANDS``."""
    from cifarlab.cli import _add_run_argument, _command

    p = _command(
        sub,
        "robustness",
        cmd_robustness,
        help="accuracy on CIFAR-10-C-style corrupted test images (15 corruptions × 5 severities)",
        description="Evaluate a trained run on corrupted copies of its test split, made as "
        "CIFAR-10-C was (Hendrycks & Dietterich, ICLR 2019): 15 corruptions (noise, blur, "
        "weather, digital) at 5 severities. The corrupted sets are generated once and cached "
        "(about 2.3 GB for the whole test split). Prints the accuracy per corruption and "
        "severity, the means per corruption and family, and the mean corruption error beside "
        "the published ones; on the whole test split writes robustness.json and its figures "
        "into the run folder (a subset or the val split only with --out).",
    )
    _add_run_argument(p)
    p.add_argument(
        "--corruptions",
        default="all",
        metavar="all|NAME,...",
        help="all (default) or a comma-separated list, e.g. gaussian_noise,fog",
    )
    p.add_argument(
        "--severities",
        default="1-5",
        metavar="LEVELS",
        help="levels 1..5 as 1-5 (default), 1,3,5 or 2",
    )
    p.add_argument(
        "--tta",
        type=int,
        nargs="?",
        const=True,
        choices=[0, 1, 2],
        metavar="LEVEL",
        help="test-time augmentation: --tta alone uses the run's own level; or 0 none, "
        "1 mirror, 2 mirror + 1-px shifts (default: 0, as the published numbers)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="test (default), or val to compare training options without touching test",
    )
    p.add_argument(
        "--images",
        type=int,
        metavar="N",
        help="only N images of the split, class-stratified (a quick look: written only with --out)",
    )
    p.add_argument("--seed", type=int, default=0, help="the corruptions' random draws (default: 0)")
    p.add_argument("--root", type=Path, help="data folder, if not the one the run used")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder to write robustness.json and its figures into (default: the run folder, "
        "for the whole test split only)",
    )
    p.add_argument("--no-examples", action="store_true", help="skip the example-images figure")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_robustness(args: argparse.Namespace) -> int:
    """Run :func:`cifarlab.robustness.evaluate.run_robustness` and print its result."""
    from cifarlab.robustness.evaluate import parse_corruptions, parse_severities, run_robustness

    names = parse_corruptions(args.corruptions)  # both checked before anything is loaded
    levels = parse_severities(args.severities)
    result = run_robustness(
        args.run,
        corruptions=names,
        severities=levels,
        tta=False if args.tta is None else args.tta,
        split=args.split,
        images=args.images,
        seed=args.seed,
        checkpoint=args.checkpoint,
        root=args.root,
        device=args.device,
        out=args.out,
        progress=not args.no_progress,
        examples=not args.no_examples,
    )
    if args.json:
        print(json.dumps(result, indent=1, allow_nan=False))
    else:
        print(result_text(result, str(args.run)))
    return 0


def _pct(x: Any) -> str:
    return f"{100 * x:5.1f}" if isinstance(x, (int, float)) else "    –"


def result_text(r: dict[str, Any], run: str) -> str:
    """The result as the command prints it: scope, table, family means, headline, notes,
    files written."""
    from cifarlab.robustness.evaluate import PUBLISHED_ERROR, grouped, scope

    per, levels = r["per_corruption"], r["severities"]
    epoch = f", epoch {r['checkpoint_epoch']}" if r.get("checkpoint_epoch") is not None else ""
    tta = f"test-time augmentation {r['tta']}" if r.get("tta") else "no test-time augmentation"
    lines = [f"{run}: {scope(r)}, {r['checkpoint']} checkpoint{epoch}, {tta}, seed {r['seed']}",
             ""]  # fmt: skip
    width = max(20, *(len(n) + 2 for n in per))
    lines.append(f"{'accuracy (%)':<{width}}" + "".join(f"{s:>7}" for s in levels) + "   mean")
    lines.append(f"{'clean':<{width}}" + " " * 7 * len(levels) + f"  {_pct(r['clean_accuracy'])}")
    family = None
    for name in grouped(r):
        p = per[name]
        if p["family"] != family:
            family = p["family"]
            lines.append(family)
        cells = "".join(f"  {_pct(p['accuracy_by_severity'][str(s)])}" for s in levels)
        lines.append(f"  {name:<{width - 2}}{cells}  {_pct(p['mean_accuracy'])}")
    means = "   ".join(f"{f} {100 * v['mean_accuracy']:.1f}%" for f, v in r["per_family"].items())
    lines += ["", f"family means: {means}"]
    lines.append(f"worst: {', '.join(r['worst'])}")
    drop = r.get("relative_drop")
    drop_text = f"{drop:.1%}" if isinstance(drop, (int, float)) else "–"
    lines.append(f"clean {r['clean_accuracy']:.1%}   mean corruption accuracy "
                 f"{r['mean_corruption_accuracy']:.1%}   relative drop {drop_text}   mean "
                 f"corruption error {r['mean_corruption_error']:.1%} (published, standard "
                 f"training: WRN-40-2 {PUBLISHED_ERROR['WRN-40-2']:.1%})")  # fmt: skip
    if not r.get("comparable"):
        lines.append("not the published protocol (all 15 corruptions × 5 severities on the "
                     "whole test split, no test-time augmentation): compare with care")  # fmt: skip
    notes = [(n, per[n]["note"]) for n in r["corruptions"] if per[n].get("note")]
    if notes:
        lines += ["", "where these corruptions differ from CIFAR-10-C:"]
        lines += [f"  {n}: {t}" for n, t in notes]
    t = r["timing"]
    gen = sum(t[n]["generate_s"] for n in r["corruptions"])
    ev = sum(t[n]["evaluate_s"] for n in r["corruptions"]) + t.get("clean_evaluate_s", 0.0)
    c = r["cache"]
    lines += ["", f"{t['total_s']:.1f} s: corrupting {gen:.1f} s ({c['generated']} sets made, "
              f"{c['loaded']} from the cache {c['folder']}), evaluating {ev:.1f} s"]  # fmt: skip
    if r.get("written"):
        lines.append("wrote " + ", ".join(r["written"]))
    else:
        lines.append("nothing written (a subset or the val split is not the run's robustness "
                     "record): --out DIR keeps it")  # fmt: skip
    return "\n".join(lines)
