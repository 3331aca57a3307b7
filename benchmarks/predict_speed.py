"""Prediction throughput: PyTorch eager against ONNX Runtime, batch 1 and batch 256.

    .venv/bin/python benchmarks/predict_speed.py [--models simple_cnn fastnet_m]
        [--batch-sizes 1 256] [--seconds 3] [--repeats 3] [--threads 2]

Every path computes the same thing, from uint8 N×32×32×3 pixels to logits, preprocessing
included (the exported graph of ``cifarlab.export``): ``torch-fp32`` runs that module in eager
PyTorch, ``torch-bf16`` the same under bfloat16 autocast with channels-last weights, ``onnxrt``
the exported ONNX file in ONNX Runtime (CPU provider). Weights are random: speed does not
depend on them. Each (model, batch, path) is timed ``--repeats`` times for about ``--seconds``
seconds, the configurations interleaved round-robin; prints the median images/s and ms per
batch, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from cifarlab.data.sources import CIFAR10
from cifarlab.export import Preprocessed, export_model
from cifarlab.models import create_model


def runners(name: str, batch: int, tmp: Path, threads: int, tta: int = 0) -> dict:
    import onnxruntime as ort

    from cifarlab.evaluate.inference import TTAModel

    torch.manual_seed(0)
    model = TTAModel(create_model(name, 10).eval(), tta).eval()
    x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    xt = torch.from_numpy(x)
    fp32 = Preprocessed(model, CIFAR10.mean, CIFAR10.std).eval()
    names = list(CIFAR10.class_names)
    path = export_model(model, tmp / f"{name}.onnx", fmt="onnx", class_names=names,
                        mean=CIFAR10.mean, std=CIFAR10.std)  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    bf16 = Preprocessed(TTAModel(create_model(name, 10).eval(), tta), CIFAR10.mean, CIFAR10.std)
    bf16 = bf16.eval()
    bf16.load_state_dict(fp32.state_dict())
    bf16 = bf16.to(memory_format=torch.channels_last)

    def torch_fp32() -> None:
        with torch.inference_mode():
            fp32(xt)

    def torch_bf16() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            bf16(xt)

    def onnxrt() -> None:
        session.run(["logits"], {"images": x})

    return {"torch-fp32": torch_fp32, "torch-bf16": torch_bf16, "onnxrt": onnxrt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["simple_cnn", "fastnet_m"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 256])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument(
        "--tta",
        type=int,
        default=0,
        choices=[0, 1, 2],
        help="test-time augmentation views in every path, as a run with this level "
        "predicts (0: one view; 2: six)",
    )
    args = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    with tempfile.TemporaryDirectory() as tmp:
        configs = {}
        for name in args.models:
            for batch in args.batch_sizes:
                for path, fn in runners(name, batch, Path(tmp), args.threads, args.tta).items():
                    for _ in range(5):
                        fn()  # warm-up
                    configs[(name, batch, path)] = fn
        rates: dict[tuple, list[float]] = {c: [] for c in configs}
        for _ in range(args.repeats):
            for (name, batch, path), fn in configs.items():
                n, t0 = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - t0) < args.seconds:
                    fn()
                    n += 1
                rates[(name, batch, path)].append(n * batch / elapsed)
    rows = []
    print(f"{args.threads} threads, TTA {args.tta}, torch {torch.__version__}")
    for (name, batch, path), r in rates.items():
        med = statistics.median(r)
        rows.append({"model": name, "batch": batch, "path": path, "images_per_s": round(med),
                     "ms_per_batch": round(1000 * batch / med, 3)})  # fmt: skip
        print(f"{name:<12} batch {batch:>4}  {path:<11} {med:>10,.0f} images/s  "
              f"{1000 * batch / med:8.3f} ms per batch")  # fmt: skip
    print(json.dumps({"threads": args.threads, "tta": args.tta, "results": rows}))


if __name__ == "__main__":
    main()
