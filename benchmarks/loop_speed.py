"""The training loop's speed in two checkouts, side by side: a seeded ``quick`` run (FastNet-S)
trained by each in turn, several times, in fresh processes; the median images/s of the epochs
after the first (the first builds oneDNN's kernels).

    git worktree add /tmp/old OLD_COMMIT
    python benchmarks/loop_speed.py --src /tmp/old/src src [--repeats 3] [--precision bf16]

Run nothing else meanwhile: the machine's noise is larger than a loop's overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys
from cifarlab import recipe_config, train
cfg = recipe_config("quick", train_size={n}, val_size=1000, epochs={epochs}, seed=0,
                    precision="{precision}", threads={threads}, device="cpu")
run = train(cfg, out=sys.argv[1], progress=False)
"""


def one_run(src: Path, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code = CHILD.format(
            n=args.train_size, epochs=args.epochs, precision=args.precision, threads=args.threads
        )
        env = {**os.environ, "PYTHONPATH": str(src.resolve()), "PYTHONWARNINGS": "ignore"}
        subprocess.run(
            [sys.executable, "-c", code, str(out)], check=True, env=env, capture_output=True
        )
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in rows[1:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, nargs="+", required=True, help="src folders to compare")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    speeds: dict[str, list[float]] = {str(s): [] for s in args.src}
    for r in range(args.repeats):
        for src in args.src:  # interleaved: a change in the machine's load hits both alike
            speeds[str(src)].append(one_run(src, args))
            print(f"repeat {r + 1}: {src}: {speeds[str(src)][-1]:,.0f} img/s", flush=True)
    for src, s in speeds.items():
        print(
            f"{src}: median {statistics.median(s):,.0f} img/s over {len(s)} runs "
            f"({', '.join(f'{x:,.0f}' for x in s)})"
        )
    print(json.dumps({k: statistics.median(v) for k, v in speeds.items()}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("CIFARLAB_DATA", str(Path(__file__).resolve().parents[2] / "shared/data"))
    sys.exit(main())
