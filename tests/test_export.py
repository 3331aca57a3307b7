"""Export (cifarlab/export.py): ONNX (run in onnxruntime) and TorchScript files, checked
against PyTorch, for every model and from the CLI."""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab import load_run
from cifarlab.export import Preprocessed, export_model
from cifarlab.models import create_model, model_names
from cifarlab.train import TrainConfig, train
from conftest import run_cli


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore")


_cli = run_cli


def _settle_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Give BatchNorm real running statistics, so the comparison is not of a trivial net."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    model.eval()


@pytest.mark.parametrize("name", model_names())
@pytest.mark.slow
def test_export_matches_pytorch_for_every_model(
    name: str, test_images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort

    images, _ = test_images
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    torch.manual_seed(0)
    model = create_model(name, 10)
    wrapped = Preprocessed(model, mean, std)
    x8 = torch.from_numpy(images[:64])
    _settle_batchnorm(model, (x8.permute(0, 3, 1, 2).float() * wrapped.scale + wrapped.shift))
    with torch.no_grad():
        want = wrapped(x8)[0].numpy()
    names = [f"c{i}" for i in range(10)]
    path = export_model(model, tmp_path / "m.onnx", fmt="onnx", class_names=names, mean=mean,
                        std=std, config={"model": name})  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probs = session.run(None, {"images": images[:64]})
    assert np.abs(logits - want).max() < 1e-4
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    for n in (1, 7):  # dynamic batch
        assert session.run(None, {"images": images[:n]})[0].shape == (n, 10)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == names and "NHWC" in meta["input_format"]

    ts = export_model(model, tmp_path / "m.pt", fmt="torchscript", class_names=names,
                      mean=mean, std=std)  # fmt: skip
    extra = {"cifarlab.json": ""}
    loaded = torch.jit.load(str(ts), _extra_files=extra)
    with torch.no_grad():
        got = loaded(x8)[0].numpy()
        assert loaded(x8[:3])[0].shape == (3, 10)
    assert np.abs(got - want).max() < 1e-4
    assert json.loads(json.loads(extra["cifarlab.json"])["class_names"]) == names


@pytest.mark.slow
def test_cli_export_float_input_and_errors(
    trained_run: Path, tmp_path: Path, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    import onnxruntime as ort

    images, _ = test_images
    out = tmp_path / "float.onnx"
    r = _cli("export", str(trained_run), "--input", "float", "--out", str(out))
    assert r.returncode == 0, r.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = (images[:16].transpose(0, 3, 1, 2) / 255).astype(np.float32)
    logits = session.run(None, {"images": x})[0]
    run = load_run(trained_run)
    with torch.no_grad():
        want = run.model.float()(run.preprocess(images[:16]).contiguous()).numpy()
    # the exported logits are calibrated: divided by the run's temperature
    assert run.calibrated
    assert np.abs(logits - want / run.temperature).max() < 1e-4
    r = _cli("export", str(trained_run), "--format", "torchscript")
    assert r.returncode == 0 and (trained_run / "model.pt").is_file()
    r = _cli("export", str(tmp_path / "none"))
    assert r.returncode == 1 and "no such run folder" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_export_of_a_cifar100_run_names_100_classes(tmp_path: Path) -> None:
    from fakedata import write_cifar100_python

    write_cifar100_python(tmp_path / "data", train=300, test=100)
    cfg = TrainConfig(model="simple_cnn", dataset="cifar100", root=str(tmp_path / "data"),
                      val_size=100, epochs=1, device="cpu")  # fmt: skip
    run = train(cfg, out=tmp_path / "r", progress=False)
    r = _cli("export", str(run))
    assert r.returncode == 0, r.stderr
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    assert len(json.loads(meta["class_names"])) == 100


# --------------------------------------------------------------------------- refused, never stored

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_class_names_that_do_not_match_the_outputs_are_refused(tmp_path: Path) -> None:
    from cifarlab.errors import SettingError

    model = create_model("simple_cnn", 10)
    for names, problem in [
        ([f"c{i}" for i in range(9)], r"^class_names has 9 names but the model gives \[2, 10\]"),
        (list(range(10)), r"^class_names must be a list of strings"),
        ("abcdefghij", r"^class_names must be a list of strings"),
    ]:
        with pytest.raises(SettingError, match=problem):
            export_model(model, tmp_path / "m.pt", fmt="torchscript", class_names=names,
                         mean=None, std=None)  # fmt: skip
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_export_of_a_run_whose_class_names_do_not_fit_is_refused(tmp_path: Path) -> None:
    from cifarlab.errors import CifarlabError
    from cifarlab.export import export_run

    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run_v0_1", run)
    config = json.loads((run / "config.json").read_text())
    config["class_names"] = config["class_names"][:9]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CifarlabError, match=r"class_names has 9 names but num_classes is 10"):
        export_run(run, "torchscript")
    config["num_classes"] = 9
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CifarlabError, match=r"best.pt: the weights do not fit .*parameter .* \[10"):
        export_run(run, "torchscript")
    assert not (run / "model.pt").exists()


def test_export_and_compare_refuse_a_fifo_or_a_device_as_out(tmp_path: Path) -> None:
    """Checked before the run is read; a named pipe or a device is never opened (no hang) nor
    replaced by a regular file."""
    from cifarlab.cli import main

    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run_v0_1", run)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    targets = [fifo]
    try:  # a character device of our own (root only), like /dev/null
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets.append(tmp_path / "null")
    except PermissionError:
        pass
    for out in targets:
        kind = os.lstat(out).st_mode
        for args in (["export", str(run), "--out", str(out)],
                     ["compare", str(run), "--out", str(out)]):  # fmt: skip
            assert main(args) == 1
        assert os.lstat(out).st_mode == kind  # still what it was


@pytest.mark.parametrize("command", ["export", "compare"])
def test_out_dev_null_is_refused_and_stays_a_device(tmp_path: Path, command: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run_v0_1", run)
    r = _cli(command, str(run), "--out", "/dev/null", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == ("error: cannot write /dev/null: it is a character device, not a "
                                "regular file; name a file")  # fmt: skip
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
