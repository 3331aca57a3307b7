"""Is a restructuring pure? Train, evaluate and predict with fixed seeds and print digests of
everything that comes out: the weights of both checkpoints, the metrics rows (timings left out),
the calibration, the evaluation's metrics and probabilities, and predictions on test images.

Run it on two commits, one after the other on the same machine, and compare the digests; equal
digests mean the two commits train, evaluate and predict bit-identically:

    git worktree add /tmp/old OLD_COMMIT
    PYTHONPATH=/tmp/old/src python benchmarks/identical.py --out /tmp/id-old
    PYTHONPATH=src          python benchmarks/identical.py --out /tmp/id-new

Two runs: ``quick`` on 2,000 training images (3 epochs, whitening, lookahead, calibration at
the end, evaluate with TTA 2, predict) and one epoch of ``fast`` on 2,000 images. Precision is
fixed to fp32 and the threads to 2 (``auto`` would be decided by a timing, which may differ
from run to run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

TIMINGS = {"epoch_seconds", "images_per_s", "elapsed_seconds", "report"}


def _digest_tensors(state: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()[:16]


def _digest_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMINGS and not k.endswith("seconds")}


def digests(run: Path, images: np.ndarray) -> dict[str, str]:
    from cifarlab import evaluate_run, load_run

    out: dict[str, str] = {}
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / name, map_location="cpu", weights_only=False)
        out[f"{name} weights"] = _digest_tensors(state["model"])
        opt = state["optimizer"]
        buffers = {f"{k}.{n}": v for k, s in opt["state"].items() for n, v in s.items()}
        out[f"{name} optimizer"] = (
            _digest_tensors(buffers)
            + "/"
            + _digest_json(json.loads(json.dumps(opt["param_groups"], default=str)))
        )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    out["metrics rows"] = _digest_json([_strip(r) for r in rows])
    if (run / "calibration.json").exists():
        cal = json.loads((run / "calibration.json").read_text())
        out["calibration"] = _digest_json(cal)
    metrics = evaluate_run(run, "test", device="cpu", report=False)
    out["eval_test.json"] = _digest_json(_strip(metrics))
    with np.load(run / "predictions_test.npz") as saved:
        out["predictions_test probs"] = hashlib.sha256(saved["probs"].tobytes()).hexdigest()[:16]
    probs = load_run(run).predict(images).probs
    out["predict probs"] = hashlib.sha256(np.asarray(probs).tobytes()).hexdigest()[:16]
    out["val_acc per epoch"] = json.dumps([r.get("val_acc") for r in rows])
    return out


def main() -> int:
    from cifarlab import load_dataset, recipe_config, train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the two runs")
    p.add_argument("--train-size", type=int, default=2000)
    args = p.parse_args()
    import cifarlab

    print(f"cifarlab from {Path(cifarlab.__file__).parent}", flush=True)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    common = dict(train_size=args.train_size, val_size=1000, seed=0, precision="fp32",
                  threads=2, device="cpu")  # fmt: skip
    images = load_dataset("cifar10", val_size=0).test.images[:64].numpy()
    report: dict[str, dict[str, str]] = {}
    runs = {
        "quick": recipe_config("quick", **common),
        "fast-1-epoch": recipe_config("fast", epochs=1, **common),
    }
    for name, cfg in runs.items():
        run = train(cfg, out=args.out / name, progress=False)
        report[name] = digests(run, images)
    print()
    for name, d in report.items():
        print(f"## {name}")
        for k, v in d.items():
            print(f"  {k:<24} {v}")
    (args.out / "digests.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out / 'digests.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("CIFARLAB_DATA", str(Path(__file__).resolve().parents[2] / "shared/data"))
    sys.exit(main())
