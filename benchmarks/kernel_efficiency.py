"""How far from this machine's limit training runs: model FLOP/s against torch.mm's peak.

    .venv/bin/python benchmarks/kernel_efficiency.py [--models fastnet_s fastnet_m fastnet_l]
        [--batch-size 256] [--profile fastnet_m] [--rows 12]

For each model: the FLOPs of one training step (forward + backward, counted by
``torch.utils.flop_counter`` on a batch; the update's few FLOPs are left out), the training
step's speed in fp32 and bf16 (channels-last, ``cifarlab.train.probe.measure``, measured
afresh: the fastest of 8 interleaved steps; bf16 both with the convolution's own weight
gradients, "bf16 conv", and with the small maps' as matrix products, "bf16 matmul",
models/conv_grad.py: before and after issue 25), hence the model FLOP/s each reaches; against
the peak of a dense 2048×2048 ``torch.mm`` in fp32 and bf16 on the same cores, measured before
and after the models (these shared machines change speed by up to 2× within minutes: the
larger of the two counts). Then a ``torch.profiler`` table of where one model's bf16 training
step spends its time (``--weight-grad``: which way). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cifarlab.models import create_model
from cifarlab.models.conv_grad import use_shifted_weight_grad
from cifarlab.train import probe


def step_flops(model_name: str, batch: int) -> int:
    model = create_model(model_name)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops()


def profile(model_name: str, batch: int, rows: int, weight_grad: str = "matmul") -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = create_model(model_name).to(memory_format=torch.channels_last)
    use_shifted_weight_grad(model, weight_grad == "matmul")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.85, nesterov=True, fused=True)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["fastnet_s", "fastnet_m", "fastnet_l"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--profile", default="fastnet_m", help="model to profile ('' for none)")
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--weight-grad", choices=["conv", "matmul"], default="matmul",
                   help="the profiled step's small-map weight gradients")  # fmt: skip
    args = p.parse_args()
    torch.set_flush_denormal(True)

    def peak() -> dict[str, float]:
        return {d: probe.matmul_peak(t, seconds=2)
                for d, t in (("fp32", torch.float32), ("bf16", torch.bfloat16))}  # fmt: skip

    first = peak()
    print(probe.describe_machine())
    print("torch.mm peak: " + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in first.items()))
    results = []
    for model in args.models:
        flops = step_flops(model, 8) / 8
        speeds = probe.measure(model, batch_sizes=(args.batch_size,), seconds=3, max_steps=8,
                               use_cache=False)  # fmt: skip
        for s in speeds:
            for way, rate in (s.weight_grad_speeds or {"": s.images_per_s}).items():
                results.append((model, flops, f"{s.precision} {way}".strip(), rate))
    last = peak()
    print("torch.mm peak after: "
          + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in last.items()))  # fmt: skip
    peaks = {k: max(first[k], last[k]) for k in first}
    rows = []
    print(f"\n{'model':<10} {'GFLOP/img':>9} {'step':>11} {'images/s':>9} {'GFLOP/s':>8} "
          f"{'of fp32 peak':>12} {'of bf16 peak':>12}")  # fmt: skip
    for model, flops, step, images_per_s in results:
        rate = flops * images_per_s
        row = {"model": model, "train_flops_per_image": flops, "step": step,
               "images_per_s": images_per_s, "flops_per_s": rate,
               "share_of_fp32_peak": rate / peaks["fp32"],
               "share_of_bf16_peak": rate / peaks["bf16"]}  # fmt: skip
        rows.append(row)
        print(f"{model:<10} {flops / 1e9:>9.3f} {step:>11} {images_per_s:>9,.0f} "
              f"{rate / 1e9:>8,.0f} {rate / peaks['fp32']:>12.0%} "
              f"{rate / peaks['bf16']:>12.0%}")  # fmt: skip
    if args.profile:
        print(f"\nwhere a bf16 training step of {args.profile} (batch {args.batch_size}, "
              f"weight gradients: {args.weight_grad}) goes:")  # fmt: skip
        print(profile(args.profile, args.batch_size, args.rows, args.weight_grad))
    print(json.dumps({"machine": probe.machine_info(), "matmul_flops": peaks,
                      "matmul_flops_before": first, "matmul_flops_after": last,
                      "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
