"""Training-step throughput of a model under each CPU speed setting, side by side in one run.

    .venv/bin/python benchmarks/cpu_speed.py [--models fastnet_l fastnet_m] [--batch-sizes 128 512]
        [--modes fp32 fp32-cl bf16 bf16-cl] [--threads 2] [--steps 20] [--repeats 3]

One "step" is what training does per batch: forward, cross-entropy, backward, SGD-Nesterov
update, on random normalized NCHW input. Modes:

    fp32       float32, contiguous (NCHW) tensors
    fp32-cl    float32, channels_last memory format (model and input)
    bf16       autocast to bfloat16 (weights stay float32), NCHW
    bf16-cl    autocast to bfloat16, channels_last
    *-compile  any of the above after torch.compile (e.g. bf16-cl-compile)

Each configuration is warmed up, then timed ``--repeats`` times over ``--steps`` steps, the
configurations interleaved round-robin so that a change in the machine's load hits all of
them alike. Prints the median images/s of each and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from cifarlab.models import create_model


def make_step(model_name: str, batch: int, mode: str):  # noqa: ANN201
    torch.manual_seed(0)
    model = create_model(model_name, 10)
    cl = "-cl" in mode
    bf16 = mode.startswith("bf16")
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = model.to(memory_format=fmt)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, fused=True)
    forward = torch.compile(model) if mode.endswith("-compile") else model
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["fastnet_l"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    p.add_argument("--modes", nargs="+", default=["fp32", "fp32-cl", "bf16", "bf16-cl"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=10, help="steps per timing")
    p.add_argument("--repeats", type=int, default=3, help="timings per configuration")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    configs = [(m, b, mode) for m in args.models for b in args.batch_sizes for mode in args.modes]
    steps = {}
    for c in configs:
        steps[c] = make_step(*c)
        for _ in range(3):  # warm-up (and compilation)
            steps[c]()
    rates: dict[tuple, list[float]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for c in configs:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[c]()
            rates[c].append(args.steps * c[1] / (time.perf_counter() - t0))
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, "
          f"torch {torch.__version__}")  # fmt: skip
    rows = []
    for (model, batch, mode), r in rates.items():
        med = statistics.median(r)
        rows.append({"model": model, "batch": batch, "mode": mode, "images_per_s": round(med)})
        print(f"{model:<12} batch {batch:>5}  {mode:<16} {med:>9,.0f} images/s")
    print(json.dumps({"threads": args.threads, "results": rows}))


if __name__ == "__main__":
    main()
