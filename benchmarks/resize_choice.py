"""Which way of bringing a user's image to 32×32 keeps the most accuracy?

    .venv/bin/python benchmarks/resize_choice.py RUN [--root DIR] [--n 10000]

CIFAR test images are made into "user photos" three ways, then brought back to 32×32 by each
method of ``cifarlab.predict.resize_to_32`` and classified by the run (with its TTA):

- ``square``: upsized 4× (128×128, bicubic) — crop and stretch do the same thing here;
- ``wider``: upsized to 128×128 and given 21 px of extra scene on the left and right
  (reflection of the image's own border) — a photo with the object in the middle of a 4:3
  frame;
- ``distorted``: upsized to 170×128 (stretched sideways) — a picture whose aspect ratio was
  changed.

Then, for the ``square`` photos, which resampling filter shrinks them best. Prints the
accuracy of each (scenario, method) and filter, and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

import numpy as np
from PIL import Image


def make_photo(img: np.ndarray, scenario: str) -> Image.Image:
    im = Image.fromarray(img).resize((128, 128), Image.Resampling.BICUBIC)
    if scenario == "wider":
        arr = np.asarray(im)
        arr = np.pad(arr, ((0, 0), (21, 21), (0, 0)), mode="reflect")
        return Image.fromarray(arr)
    if scenario == "distorted":
        return Image.fromarray(img).resize((170, 128), Image.Resampling.BICUBIC)
    return im


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run")
    p.add_argument("--root", default=os.environ.get("CIFARLAB_DATA", "../shared/data"))
    p.add_argument("--n", type=int, default=10000)
    args = p.parse_args()
    warnings.simplefilter("ignore")

    from cifarlab import load_dataset, load_run
    from cifarlab.predict import resize_to_32

    run = load_run(args.run)
    ds = load_dataset("cifar10", args.root, val_size=0)
    images = ds.test.images[: args.n].numpy()
    labels = ds.test.labels[: args.n].numpy()
    base = (run.predict(images).indices == labels).mean()
    print(f"original 32×32 test images: {base:.4f}")
    result = {"original": float(base)}
    for scenario in ("square", "wider", "distorted"):
        photos = [make_photo(img, scenario) for img in images]
        for method in ("crop", "stretch"):
            small = np.stack([np.asarray(resize_to_32(ph, method)) for ph in photos])
            acc = float((run.predict(small).indices == labels).mean())
            result[f"{scenario}/{method}"] = acc
            print(f"{scenario:<10} {method:<8} {acc:.4f}")
    photos = [make_photo(img, "square") for img in images]
    for name in ("LANCZOS", "BOX", "BICUBIC", "HAMMING", "BILINEAR", "NEAREST"):
        f = Image.Resampling[name]
        small = np.stack([np.asarray(ph.resize((32, 32), f)) for ph in photos])
        acc = float((run.predict(small).indices == labels).mean())
        result[f"filter/{name.lower()}"] = acc
        print(f"square, filter {name.lower():<9} {acc:.4f}")
    print(json.dumps({"run": str(args.run), "n": len(labels), "accuracy": result}))


if __name__ == "__main__":
    main()
