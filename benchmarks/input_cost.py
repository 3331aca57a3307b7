"""What the input checks cost: the same reads timed with cifarlab at another revision (e.g.
before the hardening of issue 12) and with this checkout, side by side, interleaved.

    .venv/bin/python benchmarks/input_cost.py --old e444421 [--root DIR] [--repeats 5]

Each measurement runs in a fresh subprocess with ``PYTHONPATH`` pointing at one of the two
source trees (the old one is a temporary ``git worktree``):

- ``parse``: ``load_dataset("cifar10")`` from the python pickles with an empty cache;
- ``cached``: the same load again, from the cache the parse filled;
- ``decode``: 400 image files (PNG, JPEG, GIF, 32×32 to 640×480) through predict's decoder and
  its resize to 32×32 (``load_image`` + ``as_uint8_batch``);
- ``folder``: an image-folder dataset (10 classes × 100 train + 20 test PNGs) read by
  ``read_image_folder``.

Prints the median seconds of each and the ratio new/old, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _child(mode: str, root: str, work: str) -> None:
    warnings.simplefilter("ignore")
    import numpy as np
    import torch  # noqa: F401 - imported before the clock starts

    # Every module is imported before the clock starts: the figures are the reads alone.
    from cifarlab.data.dataset import load_dataset
    from cifarlab.data.formats import read_image_folder
    from cifarlab.data.sources import CIFAR10
    from cifarlab.predict import as_uint8_batch, load_image

    work_dir = Path(work)
    files = sorted((work_dir / "images").iterdir())
    start = time.perf_counter()
    if mode in ("parse", "cached"):
        ds = load_dataset("cifar10", root)
        int(ds.train.images[:1].sum())
    elif mode == "decode":
        out = [as_uint8_batch(load_image(f)) for f in files]
        assert len(out) == len(files)
    elif mode == "folder":
        raw = read_image_folder(work_dir / "folder", CIFAR10)
        assert len(raw.train_x) == 1000 and np.asarray(raw.test_x).shape[1:] == (32, 32, 3)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def _make_inputs(work: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (work / "images").mkdir()
    sizes = [(32, 32), (64, 48), (320, 240), (640, 480)]
    for i in range(400):
        w, h = sizes[i % len(sizes)]
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))
        fmt, ext = [("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif")][i % 3]
        im.save(work / "images" / f"{i:04d}.{ext}", fmt)
    from cifarlab.data.sources import CIFAR10

    for split, n in (("train", 100), ("test", 20)):
        for name in CIFAR10.class_names:
            folder = work / "folder" / split / name
            folder.mkdir(parents=True)
            for j in range(n):
                arr = rng.integers(0, 256, (32, 32, 3), np.uint8)
                Image.fromarray(arr).save(folder / f"{j}.png")


def _run(tree: Path, mode: str, root: str, work: Path, cache: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "CIFARLAB_CACHE": str(cache),
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--root", root, "--work", str(work)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default="e444421", help="the revision to compare with")
    default_root = os.environ.get("CIFARLAB_DATA", str(REPO.parent / "shared" / "data"))
    p.add_argument("--root", default=default_root)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child, args.root, args.work)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        old = tmp_path / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.old],
                       check=True, capture_output=True)  # fmt: skip
        try:
            work = tmp_path / "work"
            work.mkdir()
            _make_inputs(work)
            trees = {"old": old, "new": REPO}
            times: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
            for r in range(args.repeats):
                for label, tree in trees.items() if r % 2 == 0 else reversed(trees.items()):
                    cache = tmp_path / f"cache-{label}-{r}"
                    for mode in ("parse", "cached", "decode", "folder"):
                        s = _run(tree, mode, args.root, work, cache)
                        times[label].setdefault(mode, []).append(s)
                print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)],
                           check=False, capture_output=True)  # fmt: skip
    med = {t: {m: statistics.median(v) for m, v in d.items()} for t, d in times.items()}
    print(f"{'read':<8} {'old s':>8} {'new s':>8} {'new/old':>8}")
    for mode in med["old"]:
        o, n = med["old"][mode], med["new"][mode]
        print(f"{mode:<8} {o:8.3f} {n:8.3f} {n / o:8.2f}")
    print(json.dumps({"old": args.old, "repeats": args.repeats, "median_s": med, "all_s": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
