"""The README's picture of the ``cifarlab serve`` page: serve a run, open the page in headless
Chromium (Debian's, driven by Playwright), pick CIFAR-10 test images and a text file, and save
the page as a PNG.

    .venv/bin/python docs/serve_screenshot.py runs/fast [--out docs/serve-page.png]
        [--images 6] [--width 1100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from serving import Server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "serve-page.png")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--width", type=int, default=1100)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from cifarlab import load_dataset

    root = os.environ.get("CIFARLAB_DATA") or REPO.parent / "shared" / "data"
    ds = load_dataset("cifar10", root, val_size=0)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        seen: set[int] = set()
        for i in range(200):  # one image of each of the first classes met
            label = int(ds.test.labels[i])
            if label in seen:
                continue
            seen.add(label)
            name = ds.class_names[label]
            path = Path(tmp) / f"{name}-{i}.png"
            Image.fromarray(ds.test.images[i].numpy()).save(path)
            files.append(str(path))
            if len(files) == args.images:
                break
        notes = Path(tmp) / "notes.txt"
        notes.write_text("not a picture\n")
        files.append(str(notes))
        server = Server(args.run)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=shutil.which("chromium"),
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
                )
                page = browser.new_page(viewport={"width": args.width, "height": 900})
                page.goto(server.url + "/")
                page.wait_for_selector("#run-name:not(:empty)")
                page.set_input_files("#picker", files)
                page.wait_for_function(
                    "n => document.querySelectorAll('.card').length >= n && "
                    "!document.querySelector('.card[data-state=pending]')",
                    arg=len(files),
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
