"""BatchLoader throughput (augmented images per second), with and without augmentation.

    PYTHONPATH=src .venv/bin/python benchmarks/loader_throughput.py [--batch-size 512]
        [--epochs 3] [--n 50000] [--real [--root DIR]] [--device cpu]

By default the images are ``--n`` random uint8 images (the speed does not depend on the
pixels); ``--real`` uses the CIFAR-10 training split instead. Each configuration runs one
untimed warm-up epoch, then ``--epochs`` timed ones; the median epoch rate is reported. Every
batch is consumed (its sum is taken) so nothing lazy is counted as free.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from cifarlab.data.augment import Augment
from cifarlab.data.loader import BatchLoader
from cifarlab.data.sources import CIFAR10

CONFIGS: dict[str, Augment | None] = {
    "none": None,
    "translate 2 + alternate flip": Augment(translate=2, flip="alternate"),
    "translate 4 + random flip + cutout 8": Augment(translate=4, flip="random", cutout=8),
}


def _data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    if args.real:
        from cifarlab import load_dataset

        ds = load_dataset("cifar10", args.root)
        return ds.train.images, ds.train.labels
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 32, 32, 3), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (args.n,), generator=g)


def measure(
    images: torch.Tensor, labels: torch.Tensor, aug: Augment | None, args: argparse.Namespace
) -> float:
    """Median images/s over the timed epochs of one loader configuration."""
    loader = BatchLoader(images, labels, args.batch_size, shuffle=True, seed=0,
                         device=args.device, augment=aug, mean=CIFAR10.mean, std=CIFAR10.std,
                         drop_last=True)  # fmt: skip
    rates = []
    for epoch in range(args.epochs + 1):
        n, check = 0, 0.0
        start = time.perf_counter()
        for x, _y in loader:
            n += len(x)
            check += float(x[:, 0, 0, 0].sum())  # forces the batch (and a device sync)
        seconds = time.perf_counter() - start
        if epoch:  # epoch 0 is the warm-up
            rates.append(n / seconds)
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per configuration")
    p.add_argument("--n", type=int, default=50_000, help="random images (without --real)")
    p.add_argument("--real", action="store_true", help="use the CIFAR-10 training split")
    p.add_argument("--root", default=os.environ.get("CIFARLAB_DATA"), help="data folder (--real)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    images, labels = _data(args)
    print(f"{len(images)} images, batch {args.batch_size}, device {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    result = {}
    for name, aug in CONFIGS.items():
        result[name] = measure(images, labels, aug, args)
        print(f"{name:<40} {result[name]:>12,.0f} images/s")
    print(json.dumps({"images_per_s": result, "batch_size": args.batch_size,
                      "threads": torch.get_num_threads(), "n": len(images)}))  # fmt: skip


if __name__ == "__main__":
    main()
