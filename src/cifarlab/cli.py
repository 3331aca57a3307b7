"""The ``cifarlab`` command line: parse options, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from cifarlab.errors import CifarlabError


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


def _add_data_options(p: argparse.ArgumentParser, *, labels: bool = True) -> None:
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"],
                   help="which dataset (default: cifar10)")  # fmt: skip
    p.add_argument("--root", type=Path, default=None,
                   help="folder or .tar.gz holding the data (default: $CIFARLAB_DATA, else the "
                        "user cache directory)")  # fmt: skip
    if labels:
        p.add_argument("--labels", default="fine", choices=["fine", "coarse"],
                       help="CIFAR-100 label set: fine (100 classes) or coarse (20)")  # fmt: skip
        p.add_argument("--val-size", type=int, default=5000,
                       help="images held out of train for validation (default: 5000)")  # fmt: skip
        p.add_argument("--download", action="store_true",
                       help="download the official archive if the data is not found")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarlab",
        description="Train, evaluate and use CIFAR-10/100 image classifiers.",
    )
    from cifarlab import __version__

    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("download", help="download and unpack an official archive",
                       description="Download an official CIFAR archive (resumable, md5-checked) "
                                   "and unpack it into the data folder.")  # fmt: skip
    _add_data_options(p, labels=False)
    p.add_argument("--format", default="python", choices=["python", "binary"],
                   help="which official archive (default: python)")  # fmt: skip
    p.add_argument("--url", default=None,
                   help="base URL of a mirror (default: $CIFARLAB_MIRROR, else the official "
                        "site)")  # fmt: skip
    p.set_defaults(func=cmd_download)

    data = sub.add_parser("data", help="inspect the data (info, show)",
                          description="Inspect a dataset.")  # fmt: skip
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    data.set_defaults(func=lambda args: data.print_help() or 0)

    p = data_sub.add_parser("info", help="counts per class per split, source, checksums",
                            description="Show where the data came from, its checksum "
                                        "status and images per class in each split.")  # fmt: skip
    _add_data_options(p)
    p.set_defaults(func=cmd_data_info)

    p = data_sub.add_parser("show", help="write a PNG grid of sample images",
                            description="Write a PNG grid of sample images, N per class, titled "
                                        "with their class names.")  # fmt: skip
    _add_data_options(p)
    p.add_argument("--split", default="train", choices=["train", "val", "test"],
                   help="which split to sample (default: train)")  # fmt: skip
    p.add_argument("--per-class", type=int, default=8,
                   help="images per class (default: 8)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="which samples (default: 0)")
    p.add_argument("--out", type=Path, default=Path("runs/samples.png"),
                   help="PNG file to write (default: runs/samples.png)")  # fmt: skip
    p.set_defaults(func=cmd_data_show)
    return parser


# --------------------------------------------------------------------------- commands


def cmd_download(args: argparse.Namespace) -> int:
    from cifarlab.data.dataset import data_root
    from cifarlab.data.download import download_dataset

    root, _ = data_root(args.root)
    root.mkdir(parents=True, exist_ok=True)
    folder = download_dataset(args.dataset, root, args.format, base_url=args.url)
    print(f"{args.dataset} ready in {folder}")
    return 0


def _load(args: argparse.Namespace):  # noqa: ANN202
    from cifarlab.data.dataset import load_dataset

    return load_dataset(
        args.dataset, args.root, val_size=args.val_size, labels=args.labels, download=args.download
    )


def cmd_data_info(args: argparse.Namespace) -> int:
    ds = _load(args)
    meta = ds.meta
    where = {"--root": "--root", "CIFARLAB_DATA": "$CIFARLAB_DATA", "cache": "user cache"}
    kind = f"{ds.labels_kind} labels, " if ds.info.num_coarse_classes else ""
    print(f"dataset   {ds.info.title} ({kind}{ds.num_classes} classes)")
    print(
        f"source    {meta['source']} ({meta['kind']} layout, found via {where[meta['root_from']]})"
    )
    print(f"checksum  {meta['checksum']['status']}: {meta['checksum']['detail']}")
    print(f"loaded    {'from the parsed cache' if meta['from_cache'] else 'parsed (now cached)'}")
    print()
    counts = {s: ds.split(s).labels.bincount(minlength=ds.num_classes).tolist()
              for s in ("train", "val", "test")}  # fmt: skip
    width = max(12, *(len(n) for n in ds.class_names))
    print(f"{'class':<{width}} {'train':>7} {'val':>7} {'test':>7}")
    for c, name in enumerate(ds.class_names):
        row = " ".join(f"{counts[s][c]:>7}" for s in counts)
        print(f"{name:<{width}} {row}")
    print(f"{'total':<{width}} " + " ".join(f"{sum(counts[s]):>7}" for s in counts))
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from cifarlab.report.samples import save_sample_grid

    if args.per_class < 1:
        raise CifarlabError(f"--per-class must be at least 1, got {args.per_class}")
    if args.out.suffix.lower() != ".png":
        raise CifarlabError(f"--out must name a .png file, got {args.out}")
    ds = _load(args)
    split = ds.split(args.split)
    if len(split) == 0:
        raise CifarlabError(f"the {args.split} split is empty (is --val-size 0?)")
    title = f"{ds.info.title} {args.split}: {args.per_class} per class"
    out = save_sample_grid(split.images, split.labels, ds.class_names, args.out,
                           per_class=args.per_class, seed=args.seed, title=title)  # fmt: skip
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except CifarlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
