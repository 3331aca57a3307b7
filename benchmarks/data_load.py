"""Data-layer speed on the full CIFAR-10 copy: first load (parse), cached load, peak memory,
and augmented-batch throughput.

    .venv/bin/python benchmarks/data_load.py [--root DIR] [--repeats 5]

Each load runs in a fresh subprocess (so peak memory and the parse are its own); the first
load uses an empty cache directory, the cached load the one the first load filled. Prints a
table of medians and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings


def _one_load(root: str) -> None:
    """Child process: time one load_dataset call, print JSON."""
    import torch  # noqa: F401 - imported before the clock starts, as any program would

    from cifarlab import load_dataset

    warnings.simplefilter("ignore")
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    ds = load_dataset("cifar10", root)
    seconds = time.perf_counter() - start
    # The train and val splits are copies (every page read); the test split stays memory-mapped
    # until used. Reading it is timed apart, so that nothing lazy is counted as free.
    start = time.perf_counter()
    test_sum = int(ds.test.images.sum())
    touch = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = {"seconds": seconds, "touch_test_s": touch, "peak_rss_mb": peak_mb,
              "baseline_rss_mb": baseline_mb,
              "from_cache": ds.meta["from_cache"], "test_sum": test_sum}  # fmt: skip
    print(json.dumps(record))


def _child(root: str, cache: str) -> dict:
    env = {**os.environ, "CIFARLAB_CACHE": cache}
    out = subprocess.run([sys.executable, __file__, "--child", "--root", root], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _throughput(root: str, batch_size: int, epochs: int) -> dict[str, float]:
    import torch

    from cifarlab import load_dataset
    from cifarlab.data.augment import Augment
    from cifarlab.data.loader import BatchLoader

    warnings.simplefilter("ignore")
    ds = load_dataset("cifar10", root)
    configs = {
        "none": None,
        "translate2+alternate flip": Augment(translate=2, flip="alternate"),
        "translate4+random flip+cutout8": Augment(translate=4, flip="random", cutout=8),
    }
    result = {}
    for name, aug in configs.items():
        loader = BatchLoader(ds.train.images, ds.train.labels, batch_size, shuffle=True, seed=0,
                             augment=aug, mean=ds.mean, std=ds.std, drop_last=True)  # fmt: skip
        rates = []
        for _ in range(epochs):
            n, start = 0, time.perf_counter()
            for x, _y in loader:
                n += len(x)
            rates.append(n / (time.perf_counter() - start))
        result[name] = statistics.median(rates)
    result["threads"] = torch.get_num_threads()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default=os.environ.get("CIFARLAB_DATA", "../shared/data"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=5, help="loader epochs per configuration")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _one_load(args.root)
        return

    first, cached = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            first.append(_child(args.root, cache))
            cached.append(_child(args.root, cache))
    assert not any(r["from_cache"] for r in first) and all(r["from_cache"] for r in cached)
    med = statistics.median
    summary = {
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "first_load_s": med(r["seconds"] for r in first),
        "cached_load_s": med(r["seconds"] for r in cached),
        "cached_touch_test_s": med(r["touch_test_s"] for r in cached),
        "first_load_peak_rss_mb": med(r["peak_rss_mb"] for r in first),
        "cached_load_peak_rss_mb": med(r["peak_rss_mb"] for r in cached),
        "rss_after_imports_mb": med(r["baseline_rss_mb"] for r in first),
        "loader_images_per_s": _throughput(args.root, args.batch_size, args.epochs),
        "repeats": args.repeats,
    }
    print(f"RSS after importing torch and cifarlab: {summary['rss_after_imports_mb']:.0f} MB")
    print(f"first load (parse + cache write)  {summary['first_load_s']:.2f} s   "
          f"peak RSS {summary['first_load_peak_rss_mb']:.0f} MB")  # fmt: skip
    print(f"cached load                       {summary['cached_load_s']:.2f} s   "
          f"peak RSS {summary['cached_load_peak_rss_mb']:.0f} MB   "
          f"(+{summary['cached_touch_test_s']:.2f} s to read the mapped test split)")  # fmt: skip
    for name, rate in summary["loader_images_per_s"].items():
        if name != "threads":
            print(f"loader, batch {args.batch_size}, {name:<32} {rate:>10,.0f} images/s")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
