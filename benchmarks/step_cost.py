"""What Muon and smaller images cost per training step on this machine.

    .venv/bin/python benchmarks/step_cost.py [--models fastnet_m fastnet_l] [--sizes 32 28 24 20]
        [--batch-size 256] [--repeats 7] [--precision bf16] [--standardize]

For each model, optimizer (sgd, muon) and image size: the real training step of cifarlab's
trainer (forward under autocast, loss, backward, optimizer step; channels-last), timed
``--repeats`` times after 3 warm-up steps, interleaved so that the machine's drift hits every
variant alike; prints the median seconds per step, images/s, and the ratio to the full-size SGD
step. The ratio of a smaller size is what progressive resizing saves per step here; the pixel
count after the 2×2 whitening conv, ((size-1)/31)², is what the budget planner assumes.
``--standardize`` adds a third variant, ``muon+std``: Muon with FastNet's per-image
standardization (``model_args={"standardize": true}``, the recipes' since version 2), so its
cost shows beside the same step without it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cifarlab.models import create_model  # noqa: E402
from cifarlab.train.optim import build_optimizer  # noqa: E402
from cifarlab.train.probe import describe_machine  # noqa: E402
from cifarlab.train.recipes import recipe_config  # noqa: E402

RECIPE = {"fastnet_s": "quick", "fastnet_m": "fast", "fastnet_l": "max-cpu"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["fastnet_m", "fastnet_l"])
    p.add_argument("--sizes", nargs="+", type=int, default=[32, 28, 24, 20])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--out", type=Path, help="append JSON lines here")
    p.add_argument("--standardize", action="store_true", help="add the muon+std variant")
    args = p.parse_args()
    optimizers = ["sgd", "muon", *(["muon+std"] if args.standardize else [])]
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    print(f"{describe_machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for model_name in args.models:
        variants = {}
        for opt_name in optimizers:
            std = opt_name.endswith("+std")
            cfg = recipe_config(RECIPE[model_name], optimizer=opt_name.removesuffix("+std"))
            model = create_model(model_name, 10, standardize=std)
            model = model.to(memory_format=torch.channels_last)
            variants[opt_name] = (model, build_optimizer(cfg, model))
        x_full = torch.randn(args.batch_size, 3, 32, 32).contiguous(
            memory_format=torch.channels_last
        )
        y = torch.randint(0, 10, (args.batch_size,))
        inputs = {
            s: (
                F.interpolate(x_full, size=(s, s), mode="bilinear", antialias=True)
                if s < 32
                else x_full
            ).contiguous(memory_format=torch.channels_last)
            for s in args.sizes
        }

        def step(opt_name: str, size: int, variants=variants, inputs=inputs, y=y) -> float:  # noqa: ANN001
            model, opt = variants[opt_name]
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                logits = model(inputs[size])
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - t0

        keys = [(o, s) for o in optimizers for s in args.sizes]
        for k in keys:
            for _ in range(3):
                step(*k)
        times: dict[tuple[str, int], list[float]] = {k: [] for k in keys}
        for _ in range(args.repeats):
            for k in keys:
                times[k].append(step(*k))
        base = statistics.median(times[("sgd", 32)])
        for (o, s), ts in times.items():
            med = statistics.median(ts)
            row = {"model": model_name, "optimizer": o, "size": s, "step_s": round(med, 4),
                   "images_per_s": round(args.batch_size / med, 1),
                   "ratio": round(med / base, 3), "pixel_model": round(((s - 1) / 31) ** 2, 3),
                   "precision": args.precision, "batch_size": args.batch_size,
                   "machine": describe_machine()}  # fmt: skip
            print(f"{model_name:10s} {o:5s} {s:3d}px  {med * 1000:7.1f} ms/step  "
                  f"{row['images_per_s']:7,.0f} img/s  ×{row['ratio']:.3f} "
                  f"(pixels ×{row['pixel_model']:.3f})", flush=True)  # fmt: skip
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
