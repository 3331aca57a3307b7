"""Models: the registry, and bringing your own model (registered by name, given as an import
path, or passed as a module) through training, evaluation, prediction and export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fakedata
from cifarlab import TrainConfig, create_model, evaluate_run, load_run, register_model, train
from cifarlab.errors import CifarlabError
from cifarlab.models import registry
from conftest import run_cli

TESTS = Path(__file__).resolve().parent


class TinyNet(nn.Module):
    """A researcher's own network: defined here, in a test file, not in cifarlab."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten()
        )
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_tiny(num_classes: int, width: int = 8) -> nn.Module:
    return TinyNet(num_classes, width)


def not_a_model(num_classes: int) -> str:
    return "nope"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    return root


@pytest.fixture
def clean_registry():  # noqa: ANN201
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def _small(root: Path, **kw) -> TrainConfig:  # noqa: ANN003
    return TrainConfig(root=str(root), epochs=1, val_size=20, **kw)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env={"PYTHONPATH": str(TESTS)})


def _one_error(stderr: str, message: str) -> bool:
    """stderr is one `error:` line that says ``message`` (after the file it names, if any:
    `error: RUN/config.json: model ...`)."""
    return (
        stderr.count("\n") == 1
        and stderr.startswith("error: ")
        and (stderr.startswith(f"error: {message}") or f".json: {message}" in stderr)
    )


def test_registry_builds_by_name_and_by_import_path() -> None:
    assert isinstance(create_model("simple_cnn"), nn.Module)
    model = create_model("test_models:build_tiny", num_classes=7, width=4)
    assert model.head.out_features == 7 and model.head.in_features == 64
    with pytest.raises(CifarlabError, match="unknown model 'nope'.*import path"):
        create_model("nope")
    with pytest.raises(CifarlabError, match="cannot import module 'no_such_pkg_xyz.nets'"):
        create_model("no_such_pkg_xyz.nets:build")
    with pytest.raises(CifarlabError, match="has no 'missing'"):
        create_model("test_models:missing")
    with pytest.raises(CifarlabError, match="returned str, not a torch.nn.Module"):
        create_model("test_models:not_a_model")
    with pytest.raises(CifarlabError, match="cannot be built with"):
        create_model("simple_cnn", widths=(1, 2))


def raises_value_error(num_classes: int) -> nn.Module:
    raise ValueError("widths must\nbe positive")


def test_num_classes_is_range_checked_and_builder_failures_are_one_line() -> None:
    for bad in (0, 1, -3, 10**12, registry.MAX_CLASSES + 1):
        with pytest.raises(CifarlabError, match=r"num_classes must be between 2 and 100,000"):
            create_model("test_models:build_tiny", bad)
    for bad in (True, "10", 10.0, None):
        with pytest.raises(CifarlabError, match=r"num_classes must be an integer"):
            create_model("test_models:build_tiny", bad)
    tiny = create_model("test_models:build_tiny", registry.MAX_CLASSES, width=1)
    assert tiny.head.out_features == 100_000
    with pytest.raises(CifarlabError) as e:
        create_model("test_models:raises_value_error")
    assert str(e.value).endswith("ValueError: widths must be positive") and "\n" not in str(e.value)


def test_register_model_trains_with_the_loop_and_recipe(
    data: Path, tmp_path: Path, clean_registry: None
) -> None:
    register_model("tiny_test", recipe="quick")(build_tiny)
    assert registry.get_entry("tiny_test").description == ""  # build_tiny has no docstring
    cfg = _small(data, model="tiny_test", precision="fp32").resolved()
    assert cfg.recipe == "quick" and cfg.optimizer == "sgd"
    run = train(cfg, out=tmp_path / "run", progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "tiny_test" and config["model_source"] == "test_models:build_tiny"
    del registry._REGISTRY["tiny_test"]  # another process, where the name was never registered
    m = evaluate_run(run, "test", report=False)
    assert m["num_samples"] == 20


def test_a_module_passed_in_is_trained_recorded_and_reopened(data: Path, tmp_path: Path) -> None:
    net = TinyNet(10, width=6)
    run = train(
        _small(data, model_args={"width": 6}), model=net, out=tmp_path / "run", progress=False
    )
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "test_models:TinyNet" and config["recipe"] == "original"
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    reopened = load_run(run).model  # rebuilt from the recorded import path
    for k, v in reopened.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert evaluate_run(run, "test", report=False)["num_samples"] == 20


@pytest.mark.slow
def test_the_cli_trains_evaluates_predicts_and_exports_your_model(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    r = _cli(
        "train",
        "--model",
        "test_models:build_tiny",
        "--root",
        str(data),
        "--epochs",
        "1",
        "--val-size",
        "20",
        "--out",
        str(run),
        "--no-progress",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["model"] == "test_models:build_tiny"
    r = _cli("evaluate", str(run), "--no-report", cwd=tmp_path)
    assert r.returncode == 0 and "accuracy" in r.stdout, r.stderr
    image = tmp_path / "cat.png"
    from PIL import Image

    Image.fromarray(fakedata.arrays(1, 10, 5)[0][0]).save(image)
    r = _cli("predict", str(run), str(image), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (
        json.loads(r.stdout)[0]["label"]
        in json.loads((run / "config.json").read_text())["class_names"]
    )
    r = _cli("export", str(run), "--format", "torchscript", cwd=tmp_path)
    assert r.returncode == 0 and (run / "model.pt").is_file(), r.stderr


@pytest.mark.slow
def test_a_run_whose_model_cannot_be_imported_says_so(data: Path, tmp_path: Path) -> None:
    run = train(_small(data), model=TinyNet(10), out=tmp_path / "run", progress=False)
    config = json.loads((run / "config.json").read_text())
    config["model"] = "gone_package_xyz.nets:TinyNet"
    (run / "config.json").write_text(json.dumps(config))
    for args in (
        ["evaluate", str(run)],
        ["predict", str(run), str(tmp_path)],
        ["export", str(run)],
    ):
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert _one_error(r.stderr, "model 'gone_package_xyz.nets:TinyNet': cannot import "
                          "module 'gone_package_xyz.nets'"), r.stderr  # fmt: skip


def test_a_model_defined_where_it_cannot_be_imported_still_trains(
    data: Path, tmp_path: Path, capsys
) -> None:  # noqa: ANN001
    class Local(TinyNet):
        pass

    train(_small(data), model=Local(10), out=tmp_path / "run", progress=False)
    assert "cannot be rebuilt by another process (it is defined inside a function)" in (
        capsys.readouterr().err
    )


def test_a_module_whose_model_args_do_not_rebuild_it_is_warned_about(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train(_small(data), model=TinyNet(10, width=6), out=tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert "rebuilding test_models:TinyNet(num_classes=10, **{}) does not give the module" in err
    mismatch = (
        r"the weights do not fit model 'test_models:TinyNet' with model_args \{\} \((size "
        r"mismatch|parameter features\.0\.weight is \[6, 3, 3, 3\] in the checkpoint, "
        r"\[8, 3, 3, 3\] in the model)"
    )
    with pytest.raises(CifarlabError, match=mismatch):
        load_run(tmp_path / "run")


@pytest.mark.slow
def test_a_model_defined_in_a_script_is_warned_about_and_refused_clearly(
    data: Path, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\nfrom torch import nn\nfrom cifarlab import TrainConfig, train\n"
        "class Tiny(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__(); self.f = nn.Sequential(nn.Flatten(), "
        "nn.Linear(3072, num_classes))\n"
        "    def forward(self, x): return self.f(x)\n"
        f"train(TrainConfig(root={str(data)!r}, epochs=1, val_size=20), model=Tiny(), "
        f"out={str(tmp_path / 'run')!r}, progress=False)\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "cannot be rebuilt by another process (it is defined in the script being run" in (
        r.stderr
    )
    r = _cli("evaluate", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert _one_error(r.stderr, "model '__main__:Tiny': module '__main__' has no 'Tiny'"), r.stderr
