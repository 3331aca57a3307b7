"""airbench94's training step against cifarlab's, interleaved on this CPU.

    .venv/bin/pip install --no-deps airbench==0.1.8      # only for this benchmark
    .venv/bin/python benchmarks/peer_step.py [--repeats 7] [--recipe max-cpu-muon] [--out FILE]

Whole-run times (``peer_airbench.py``) carry the machine's speed at the moment each run ran;
on the shared 2-core machines that speed swings up to 2× within minutes, so two runs made one
after the other can differ by more than the two systems do. This compares the two steps in
one process, alternating step by step, so that every swing hits both alike:

- **airbench94**: ``make_net94`` from the installed package (its closing ``.half().cuda()``
  made no-ops, as in ``peer_airbench.py``), batch 1024, channels-last, the forward under bf16
  autocast, its loss (cross-entropy, label smoothing 0.2, summed), Nesterov SGD momentum 0.85.
- **cifarlab**: the recipe's network, optimizer and batch (``--recipe``, default
  ``max-cpu-muon``), at each image size its progressive resizing trains (24 px and 32 px),
  with the small maps' weight gradients as matrix products and, for comparison, without.

Prints the median images/s of each over ``--repeats`` rounds (after 2 warm-up rounds), and
what one epoch of 50,000 images costs each: airbench94's at 32 px; cifarlab's as the recipe
spends it (the share of steps at each size). Neither side's data loading nor lookahead is
timed (both have them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cifarlab.models import create_model  # noqa: E402
from cifarlab.models.conv_grad import use_shifted_weight_grad  # noqa: E402
from cifarlab.train.optim import build_optimizer  # noqa: E402
from cifarlab.train.probe import describe_machine  # noqa: E402
from cifarlab.train.recipes import recipe_config  # noqa: E402

EPOCH = 50_000


def airbench_step(root: str) -> tuple[int, object]:
    """airbench94's network and one training step of it (batch 1024)."""
    from peer_airbench import airbench_net

    net = airbench_net(root, bf16=True)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4,
                          momentum=0.85, nesterov=True)  # fmt: skip
    x = torch.randn(1024, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (1024,))

    def step() -> None:
        loss = F.cross_entropy(net(x), y, label_smoothing=0.2, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return 1024, step


def cifarlab_step(recipe: str, size: int, products: bool) -> tuple[int, object]:
    """cifarlab's network, optimizer and batch for ``recipe``, one step at ``size`` px."""
    cfg = recipe_config(recipe)
    torch.manual_seed(0)
    model = create_model(cfg.model, 10).to(memory_format=torch.channels_last)
    use_shifted_weight_grad(model, products)
    model.train()
    opt = build_optimizer(cfg, model)
    x = torch.randn(cfg.batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg.batch_size,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return cfg.batch_size, step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default=os.environ.get("CIFARLAB_DATA", "../shared/data"),
                   help="only for airbench's import (as peer_airbench.py)")  # fmt: skip
    p.add_argument("--recipe", default="max-cpu-muon")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, help="append one JSON line here")
    args = p.parse_args()
    cfg = recipe_config(args.recipe)
    share = {int(k): float(v) for k, v in (cfg.progressive or {}).items()}
    sizes = {**share, 32: 1.0 - sum(share.values())}
    variants = {"airbench94": airbench_step(args.root)}
    for products in (True, False):
        for size in sizes:
            variants[f"cifarlab {size}px {'matmul' if products else 'conv'}"] = cifarlab_step(
                args.recipe, size, products
            )
    machine = describe_machine()
    print(f"{machine}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(2 + args.repeats):
        for name, (batch, step) in variants.items():
            t0 = time.perf_counter()
            step()
            if r >= 2:
                times[name].append(batch / (time.perf_counter() - t0))
    ips = {k: statistics.median(v) for k, v in times.items()}
    for k, v in ips.items():
        spread = f"{min(times[k]):,.0f}–{max(times[k]):,.0f}"
        print(f"{k:<26} {v:8,.0f} images/s (median of {args.repeats}; {spread})")
    ab_epoch = EPOCH / ips["airbench94"]
    print(f"one epoch: airbench94 {ab_epoch:.1f} s", end="")
    row = {"recipe": args.recipe, "machine": machine, "repeats": args.repeats,
           "images_per_s": {k: round(v, 1) for k, v in ips.items()},
           "airbench94_epoch_s": round(ab_epoch, 1)}  # fmt: skip
    for wg in ("matmul", "conv"):
        epoch = sum(EPOCH * w / ips[f"cifarlab {s}px {wg}"] for s, w in sizes.items())
        row[f"cifarlab_epoch_s_{wg}"] = round(epoch, 1)
        row[f"epoch_ratio_{wg}"] = round(epoch / ab_epoch, 3)
        print(f"; {args.recipe} ({wg}) {epoch:.1f} s = {epoch / ab_epoch:.3f}×", end="")
    print()
    row["date"] = time.strftime("%Y-%m-%d %H:%M")
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
