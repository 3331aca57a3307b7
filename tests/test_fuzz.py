"""Property-based fuzzing (Hypothesis) of everything that parses user input: the pickle
reader, the binary reader, the image decoders of ``predict`` and of image folders, the
run-folder schemas and the option parsers. The property is the same everywhere: a result or a
:class:`CifarlabError`, within a time bound (Hypothesis' deadline) and a memory bound (the peak
resident size may not grow by more than ``MEMORY_MB``), and nothing written outside the test's
temp dir.

Seeded (``derandomize``): the same examples on every run. ``FUZZ_EXAMPLES`` sets how many per
test (default 300; ``benchmarks/fuzz_long.py`` runs thousands).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fakedata
import hostile
from cifarlab.errors import CifarlabError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
MEMORY_MB = 1024
REPO = Path(__file__).resolve().parent.parent

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=5000,  # ms per example
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _repo_state() -> dict[str, int]:
    """mtime of every file in the source tree (not .git, the venv or caches)."""
    out = {}
    for folder in ("src", "tests", "benchmarks"):
        for p in (REPO / folder).rglob("*"):
            if "__pycache__" not in p.parts and p.is_file():
                out[str(p)] = p.stat().st_mtime_ns
    return out


@pytest.fixture
def bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The working dir, HOME and temp dir inside tmp_path; afterwards the memory bound and an
    unchanged source tree are checked."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "tmp").mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    # Training in this process (other tests) turns on flush-to-zero, which makes Hypothesis
    # refuse to draw floats; the readers fuzzed here do not depend on it.
    import torch

    torch.set_flush_denormal(False)
    before, peak = _repo_state(), _peak_mb()
    yield work
    grown = _peak_mb() - peak
    assert grown < MEMORY_MB, f"peak memory grew by {grown:.0f} MB"
    assert _repo_state() == before, "the source tree changed"


def outcome(call) -> object:
    """The result of ``call()``, or the CifarlabError it raised; anything else fails."""
    try:
        return call()
    except CifarlabError as e:
        assert "\n" not in str(e), f"a message on several lines: {e!r}"
        return e


# --------------------------------------------------------------------------- data readers

_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.binary(max_size=64), st.text(max_size=16),
    st.builds(lambda n, k: np.zeros((n, k), np.uint8), st.integers(0, 40), st.sampled_from(
        [0, 1, 3072, 3073])),
    st.builds(lambda n: np.arange(n), st.integers(0, 40)),
)  # fmt: skip
_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.binary(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from([b"data", b"labels", b"batch_label", b"filenames", b"label_names", "data",
                         "labels"]) | st.binary(max_size=6)  # fmt: skip


@fuzz
@given(batch=st.dictionaries(_keys, _values, max_size=5), proto=st.integers(0, 5))
def test_python_layout_reader(bounded: Path, batch: dict, proto: int) -> None:
    from cifarlab.data.formats import read_python
    from cifarlab.data.sources import CIFAR10

    root = bounded / "py"
    if not root.exists():
        fakedata.write_cifar10_python(root, per_batch=4, test=4)
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=proto))
    outcome(lambda: read_python(folder, CIFAR10))


@fuzz
@given(data=st.binary(max_size=3000), at=st.integers(0, 4000))
def test_pickle_reader_on_mutated_bytes(bounded: Path, data: bytes, at: int) -> None:
    from cifarlab.data.formats import load_pickle

    valid = hostile.pickle_batch(np.zeros((2, 3072), np.uint8), [1, 2])
    path = bounded / "batch"
    path.write_bytes(valid[:at] + data + valid[at + len(data) :])
    outcome(lambda: load_pickle(path))


@fuzz
@given(size=st.integers(0, 3 * 3073 + 5), seed=st.integers(0, 2**32 - 1),
       names=st.binary(max_size=200))  # fmt: skip
def test_binary_layout_reader(bounded: Path, size: int, seed: int, names: bytes) -> None:
    from cifarlab.data.formats import read_binary
    from cifarlab.data.sources import CIFAR10

    root = bounded / "bin"
    if not root.exists():
        fakedata.write_cifar10_binary(root, per_batch=2, test=2)
    folder = root / "cifar-10-batches-bin"
    rng = np.random.default_rng(seed)
    (folder / "data_batch_3.bin").write_bytes(rng.integers(0, 256, size, np.uint8).tobytes())
    (folder / "batches.meta.txt").write_bytes(names)
    outcome(lambda: read_binary(folder, CIFAR10))


# --------------------------------------------------------------------------- images

_FORMATS = ("PNG", "GIF", "TIFF", "JPEG", "BMP", "WEBP")


@st.composite
def image_file(draw: st.DrawFn) -> bytes:
    """A real image of some format, size and frame count, then mutated a little or a lot."""
    fmt = draw(st.sampled_from(_FORMATS))
    frames = draw(st.integers(1, 3)) if fmt in ("GIF", "TIFF", "PNG", "WEBP") else 1
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    from PIL import Image

    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)) for _ in range(frames)]
    buf = io.BytesIO()
    extra = {"save_all": True, "append_images": ims[1:]} if frames > 1 else {}
    ims[0].save(buf, fmt, **extra)
    data = buf.getvalue()
    how = draw(st.sampled_from(["flip", "truncate", "splice", "none"]))
    if how == "flip":
        data = hostile.mutate(data, draw(st.integers(0, 2**16)), draw(st.integers(1, 40)))
    elif how == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=64)) + data[at:]
    return data


@fuzz
@given(data=image_file())
def test_predict_image_decoder(bounded: Path, data: bytes) -> None:
    from cifarlab.predict import as_uint8_batch, load_image

    path = bounded / "x.img"
    path.write_bytes(data)

    def decode() -> np.ndarray:
        x = as_uint8_batch(load_image(path))
        assert x.shape == (1, 32, 32, 3) and x.dtype == np.uint8
        return x

    outcome(decode)


@fuzz
@given(data=image_file())
def test_image_folder_decoder(bounded: Path, data: bytes) -> None:
    from cifarlab.data.formats import _load_image

    path = bounded / "x.png"
    path.write_bytes(data)
    result = outcome(lambda: _load_image(path))
    if not isinstance(result, CifarlabError):
        assert result.shape == (32, 32, 3) and result.dtype == np.uint8


@fuzz
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1),
       rows=st.integers(0, 3))  # fmt: skip
def test_image_headers_claiming_any_size(bounded: Path, width: int, height: int, rows: int) -> None:
    from cifarlab.data.formats import _load_image
    from cifarlab.predict import as_uint8_batch, load_image

    path = bounded / "x.png"
    rows = min(rows, height, (8 << 20) // (width + 1))  # at most 8 MB of pixel data
    path.write_bytes(hostile.png_claiming(width, height, rows))
    outcome(lambda: as_uint8_batch(load_image(path)))
    outcome(lambda: _load_image(path))


# --------------------------------------------------------------------------- run folders

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=15,
)  # fmt: skip


@pytest.fixture(scope="module")
def saved_config() -> dict:
    return json.loads((REPO / "tests" / "fixtures" / "run_v0_1" / "config.json").read_text())


@fuzz
@given(field=st.sampled_from(["model", "num_classes", "class_names", "model_args", "epochs",
                              "dataset", "augment", "normalize", "tta", "batch_size", "lr",
                              "precision_used", "seed", "params", "label_smoothing"]) | st.text(
                                  max_size=8), value=_json, drop=st.booleans())  # fmt: skip
def test_config_schema(bounded: Path, saved_config: dict, field: str, value, drop: bool) -> None:
    from cifarlab.runs import RunFolder

    run = bounded / "run"
    run.mkdir(exist_ok=True)
    config = dict(saved_config)
    if drop:
        config.pop(field, None)
    else:
        config[field] = value
    (run / "config.json").write_text(json.dumps(config))
    outcome(lambda: RunFolder(run).read_config())


@fuzz
@given(rows=st.lists(_json, max_size=4), raw=st.text(max_size=40))
def test_metrics_and_eval_schemas(bounded: Path, rows: list, raw: str) -> None:
    from cifarlab.runs import RunFolder

    run = bounded / "run"
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + raw)
    outcome(lambda: RunFolder(run).read_metrics())
    (run / "eval_test.json").write_text(json.dumps(rows[0] if rows else raw))
    outcome(lambda: RunFolder(run).read_eval("test"))


_robustness_fields = st.sampled_from(
    [*hostile.ROBUSTNESS_RECORD, "subset", "relative_drop", "per_family", "checkpoint_epoch"]
)
_corruption_fields = st.sampled_from(["family", "mean_accuracy", "accuracy_by_severity", "note"])


@fuzz
@given(
    field=_robustness_fields | st.text(max_size=8),
    inner=_corruption_fields | st.text(max_size=8),
    nested=st.booleans(),
    value=_json,
    drop=st.booleans(),
)
def test_robustness_schema(
    bounded: Path, field: str, inner: str, nested: bool, value, drop: bool
) -> None:
    """robustness.json with one field changed or dropped (at the top, or in a corruption's
    record): refused in one line, or accepted and drawn into the report's section."""
    from cifarlab.report.html import robustness_section
    from cifarlab.runs import RunFolder

    run = bounded / "run"
    run.mkdir(exist_ok=True)
    record = json.loads(json.dumps(hostile.ROBUSTNESS_RECORD))
    target, key = (record["per_corruption"]["fog"], inner) if nested else (record, field)
    if drop:
        target.pop(key, None)
    else:
        target[key] = value
    (run / "robustness.json").write_text(json.dumps(record))
    result = outcome(lambda: RunFolder(run).read_robustness())
    section = robustness_section(run)
    assert section is not None and section.startswith('<section id="robustness">')
    if isinstance(result, CifarlabError):
        assert "run cifarlab robustness again" in section


@fuzz
@given(data=st.binary(max_size=200), at=st.integers(0, 120_000))
def test_checkpoint_reader(bounded: Path, data: bytes, at: int) -> None:
    from cifarlab.checkpoint import load_checkpoint

    valid = (REPO / "tests" / "fixtures" / "run_v0_1" / "best.pt").read_bytes()
    path = bounded / "best.pt"
    path.write_bytes(valid[:at] + data + valid[at + len(data) :])
    outcome(lambda: load_checkpoint(path))


# --------------------------------------------------------------------------- options

_option_values = st.one_of(
    st.integers(-(2**80), 2**80).map(str), st.floats().map(repr),
    st.text(string.printable, max_size=12), st.sampled_from(["nan", "inf", "-inf", "1e309", "",
                                                             "0", "-1", "1e30", "2.5"]),
)  # fmt: skip
_train_options = ["--epochs", "--batch-size", "--lr", "--seed", "--val-size", "--train-size",
                  "--threads", "--model", "--recipe", "--optimizer", "--momentum",
                  "--weight-decay", "--label-smoothing", "--budget", "--precision"]  # fmt: skip
_fields = [
    "augment",
    "model_args",
    "translate",
    "flip",
    "cutout",
    "epochs",
    "seed",
    "lr",
    "progressive",
    "lookahead_every",
    "ema",
    "tta",
    "steps",
    "whiten_bias_epochs",
]


@fuzz
@given(
    options=st.lists(st.tuples(st.sampled_from(_train_options), _option_values), max_size=3),
    sets=st.lists(
        st.tuples(
            st.sampled_from(_fields) | st.text(max_size=6),
            _json.map(json.dumps) | st.text(max_size=12),
        ),
        max_size=2,
    ),
)
def test_train_options(bounded: Path, options: list, sets: list) -> None:  # fmt: skip
    from cifarlab.cli import build_parser, train_config_from_args

    argv = ["train", "--out", "run"]
    for name, value in options:
        argv += [f"{name}={value}"]
    for name, value in sets:
        argv += ["--set", f"{name}={value}"]
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # argparse refused it: exit 2 with a usage line
        assert e.code == 2
        return
    outcome(lambda: train_config_from_args(args).validate())


@fuzz
@given(text=st.text(max_size=20))
def test_duration_parser(bounded: Path, text: str) -> None:
    from cifarlab.train.budget import parse_duration

    result = outcome(lambda: parse_duration(text))
    if not isinstance(result, CifarlabError):
        assert isinstance(result, float) and 0 < result < float("inf")
