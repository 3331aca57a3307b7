"""What decoding one big image costs in memory, per mode and format, against what the
server's memory budget counts for it (``serve.engine.decode_cost``).

    python benchmarks/decode_memory.py                 # 8,000×8,000 images (~1 min, ~2 GB)
    python benchmarks/decode_memory.py --side 4000     # smaller

Each image is written once into a temporary folder, then decoded by ``decode_upload`` (the
server's decoder) in a fresh process, which reports its peak RSS growth (``ru_maxrss``)
in bytes per pixel. A budget below the measurement is marked UNDER.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

MEASURE = """
import gc, io, resource, sys
from PIL import Image
from cifarlab.serve.engine import decode_cost, decode_upload
data = open(sys.argv[1], "rb").read()
with Image.open(io.BytesIO(data)) as im:
    cost, px = decode_cost(im), im.size[0] * im.size[1]
gc.collect()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decode_upload(data, "x", "crop")
r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((r1 - r0) * 1024 / px, cost / px)
"""


def write_images(folder: Path, side: int) -> list[tuple[str, Path]]:
    yy, xx = np.mgrid[0:side, 0:side]
    base = ((np.sin(xx / 50) + np.cos(yy / 70) + 2) * 16000).astype(np.uint16)
    grey = (base >> 8).astype(np.uint8)
    rgb = Image.fromarray(np.stack([grey, grey[::-1], grey.T], -1))
    exif = Image.Exif()
    exif[0x0112] = 6
    made = {
        "RGB PNG": ("png", lambda p: rgb.save(p)),
        "RGB JPEG": ("jpg", lambda p: rgb.save(p, "JPEG", quality=70)),
        "RGB JPEG, progressive": ("jpg", lambda p: rgb.save(p, "JPEG", progressive=True)),
        "RGB JPEG, EXIF rotation": ("jpg", lambda p: rgb.save(p, "JPEG", exif=exif.tobytes())),
        "RGB WebP": ("webp", lambda p: rgb.save(p, "WEBP", quality=70)),
        "RGBA WebP": ("webp", lambda p: rgb.convert("RGBA").save(p, "WEBP", quality=70)),
        "CMYK JPEG": ("jpg", lambda p: rgb.convert("CMYK").save(p, "JPEG")),
        "RGBA PNG": ("png", lambda p: rgb.convert("RGBA").save(p)),
        "LA PNG": ("png", lambda p: Image.fromarray(grey).convert("LA").save(p)),
        "P PNG, transparency": ("png", lambda p: rgb.convert("P").save(p, transparency=0)),
        "16-bit grey PNG": ("png", lambda p: Image.fromarray(base).save(p)),
        "32-bit grey TIFF": (
            "tif",
            lambda p: Image.fromarray(base.astype(np.int32)).save(p, compression="tiff_deflate"),
        ),
        "float grey TIFF": (
            "tif",
            lambda p: Image.fromarray(base.astype(np.float32) / 65535).save(
                p, compression="tiff_deflate"
            ),
        ),
    }
    out = []
    for i, (name, (ext, save)) in enumerate(made.items()):
        path = folder / f"{i}.{ext}"
        save(path)
        out.append((name, path))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--side", type=int, default=8000, help="width and height (default: 8000)")
    ap.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write:  # in a process of its own: Linux hands a parent's peak RSS to its children
        for name, path in write_images(args.write, args.side):
            print(f"{name}\t{path}")
        return
    env_limit = {"CIFARLAB_MAX_IMAGE_FILE_MB": "4096"}
    print(f"| image ({args.side:,}×{args.side:,}) | measured B/px | budgeted B/px | |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        listed = subprocess.run(
            [sys.executable, __file__, "--side", str(args.side), "--write", tmp],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for name, path in (line.split("\t") for line in listed.splitlines()):
            r = subprocess.run(
                [sys.executable, "-c", MEASURE, str(path)],
                capture_output=True,
                text=True,
                env={**os.environ, **env_limit},
            )
            if r.returncode:
                print(f"| {name} | failed: {r.stderr.strip().splitlines()[-1]} | | |")
                continue
            measured, budget = map(float, r.stdout.split())
            flag = "" if budget >= measured else "UNDER"
            print(f"| {name} | {measured:.1f} | {budget:.1f} | {flag} |", flush=True)


if __name__ == "__main__":
    main()
