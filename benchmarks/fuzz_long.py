"""A longer fuzzing run than the test suite's: the same properties (tests/test_fuzz.py) with
many more examples, and the hostile-files corpus (tests/test_hostile.py).

    python benchmarks/fuzz_long.py                 # 5,000 examples per fuzz test
    python benchmarks/fuzz_long.py --examples 50000 -k image

Hypothesis is seeded (derandomize) in the tests; here ``--seed`` picks another sequence of
examples, so that repeated long runs explore new inputs. Exits non-zero on the first failure,
printing the smallest failing input Hypothesis found.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=5000, help="examples per fuzz test")
    p.add_argument("--seed", type=int, default=None, help="another example sequence")
    p.add_argument("-k", default=None, help="only the tests matching this pytest expression")
    p.add_argument("--no-corpus", action="store_true", help="skip the hostile-files corpus")
    args = p.parse_args()
    env = {**os.environ, "FUZZ_EXAMPLES": str(args.examples)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(REPO / "tests" / "test_fuzz.py")]  # fmt: skip
    if not args.no_corpus:
        cmd.append(str(REPO / "tests" / "test_hostile.py"))
    if args.seed is not None:
        cmd += ["--hypothesis-seed", str(args.seed)]
        env["FUZZ_RANDOM"] = "1"
    if args.k:
        cmd += ["-k", args.k]
    return subprocess.call(cmd, cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
