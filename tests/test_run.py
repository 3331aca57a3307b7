"""The run folder (cifarlab/runs.py): its files, locking, reading and writing, opening a run,
provenance; and run folders written by an older version still open, evaluate and predict."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import fakedata
from cifarlab import evaluate_run, load_run, open_run
from cifarlab.errors import CifarlabError
from cifarlab.runs import CONFIG, METRICS, RunFolder
from cifarlab.train import TrainConfig, train
from cifarlab.trained import read_run

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_where_each_file_lives(tmp_path: Path) -> None:
    f = RunFolder(tmp_path / "r")
    assert f.config_path.name == "config.json" and f.metrics_path.name == "metrics.jsonl"
    assert f.checkpoint_path("best").name == "best.pt"
    assert f.checkpoint_path("last").name == "last.pt"
    assert f.eval_path("val").name == "eval_val.json"
    assert f.predictions_path("test").name == "predictions_test.npz"
    assert f.report_path("test").name == "report.html"
    assert f.report_path("val").name == "report_val.html"
    assert f.figure_path("val", "x.png").name == "val_x.png"
    assert f.figure_path("test", "x.png").name == "x.png"
    assert f.export_path("onnx").name == "model.onnx"
    with pytest.raises(CifarlabError, match="checkpoint must be best or last"):
        f.checkpoint_path("middle")


def test_no_module_spells_a_run_file_name() -> None:
    """Every module goes through cifarlab/runs.py for the names of a run's files."""
    names = re.compile(
        r"""["'](config\.json|metrics\.jsonl|last\.pt|best\.pt|\.lock|"""
        r"""report\.html|model\.onnx|calibration\.json|robustness\.json)["']|f["']eval_\{|f["']predictions_\{"""
    )
    offenders = []
    for path in (REPO / "src" / "cifarlab").rglob("*.py"):
        if path.name == "runs.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if names.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_metrics_config_and_eval_round_trip(tmp_path: Path) -> None:
    f = RunFolder(tmp_path / "r")
    with pytest.raises(CifarlabError, match="no such run folder"):
        f.read_config()
    f.path.mkdir()
    with pytest.raises(CifarlabError, match=r"not a run folder \(no config.json\)"):
        f.read_config()
    f.write_config({"model": "mlp", "num_classes": 10, "class_names": list("abcdefghij")})
    assert f.read_config()["model"] == "mlp"
    for epoch in (1, 2, 3):
        f.append_metrics({"epoch": epoch, "val_acc": 0.1 * epoch})
    assert [r["epoch"] for r in f.read_metrics()] == [1, 2, 3]
    f.trim_metrics(2)
    assert [r["epoch"] for r in f.read_metrics()] == [1, 2]
    f.metrics_path.write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(CifarlabError, match=r"metrics.jsonl: line 2 is not JSON"):
        f.read_metrics()
    with pytest.raises(CifarlabError, match="not evaluated on test yet"):
        f.read_eval("test")
    f.eval_path("test").write_text('{"accuracy": 0.5}')
    with pytest.raises(CifarlabError, match="not an evaluation written by cifarlab"):
        f.read_eval("test")
    assert sorted(p.name for p in f.path.iterdir()) == [CONFIG, "eval_test.json", METRICS]


def test_lock_refuses_a_second_trainer_and_cleans_an_empty_folder(tmp_path: Path) -> None:
    f = RunFolder(tmp_path / "new")
    with f.lock():
        with pytest.raises(CifarlabError, match="is being trained right now"):
            with RunFolder(f.path).lock():
                pass
    assert not f.path.exists()  # made here, nothing written: removed again
    f.path.mkdir()
    (f.path / "kept.txt").write_text("x")
    with f.lock():
        pass
    assert (f.path / "kept.txt").exists()


@pytest.fixture
def tiny_run(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    cfg = TrainConfig(
        model="fastnet_s",
        model_args={"widths": [8, 16, 16]},
        root=str(root),
        epochs=1,
        val_size=20,
        precision="fp32",
    )
    return train(cfg, out=tmp_path / "run", progress=False), root


def test_a_run_records_what_made_it(tiny_run: tuple[Path, Path]) -> None:
    import torch

    import cifarlab

    run, _ = tiny_run
    config = RunFolder(run).read_config()
    made = config["provenance"]
    assert made["cifarlab"] == cifarlab.__version__ and made["torch"] == torch.__version__
    assert made["cpu"] and made["python"]
    assert config["precision_used"] == "fp32" and config["recipe"] == "quick"
    if (REPO / ".git").exists():  # run from a checkout: the commit it ran
        assert re.fullmatch(r"[0-9a-f]{40}(\+changes)?", made["git_commit"]), made["git_commit"]
    f = RunFolder(run)
    assert f.holds_run() and f.checkpoint_path("best").is_file()
    with pytest.raises(CifarlabError, match="already holds a run"):
        f.check_new()


def test_open_run_gives_model_normalization_and_precision(tiny_run: tuple[Path, Path]) -> None:
    run, _ = tiny_run
    opened = open_run(run)
    assert opened.mean is not None and len(opened.class_names) == 10  # quick: standard
    assert opened.autocast is None and opened.tta == 2 and not opened.model.training
    _, config, history = read_run(run)
    assert config["model"] == "fastnet_s" and len(history) == 1


def test_weights_of_another_model_are_a_clear_error(tiny_run: tuple[Path, Path]) -> None:
    run, _ = tiny_run
    config = json.loads((run / "config.json").read_text())
    config["model_args"] = {"widths": [16, 16, 16]}
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CifarlabError, match=r"best.pt: the weights do not fit model 'fastnet_s'"):
        open_run(run)


# --------------------------------------------------------------------------- older versions


def _legacy(tmp_path: Path) -> tuple[Path, Path]:
    """The run folder cifarlab 0.1.0 wrote (tests/fixtures/README.md), and its data."""
    run = tmp_path / "old-run"
    shutil.copytree(FIXTURES / "run_v0_1", run)
    root = tmp_path / "data"
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    return run, root


def test_a_run_from_the_previous_version_predicts_the_same(tmp_path: Path) -> None:
    run, _ = _legacy(tmp_path)
    expected = json.loads((run / "expected.json").read_text())
    probs = load_run(run).predict(fakedata.arrays(20, 10, 100)[0]).probs
    # bf16 (as it was trained): kernels of another CPU may round a little differently
    assert np.allclose(probs, np.asarray(expected["probs"]), atol=5e-3)


def test_a_run_from_the_previous_version_evaluates_the_same(tmp_path: Path) -> None:
    run, root = _legacy(tmp_path)
    expected = json.loads((run / "expected.json").read_text())
    m = evaluate_run(run, "test", root=root, report=False)
    assert m["num_samples"] == 20 and m["tta"] == 2
    assert m["log_loss"] == pytest.approx(expected["log_loss"], abs=5e-3)
    assert RunFolder(run).read_eval("test")["log_loss"] == m["log_loss"]


def test_the_study_config_of_the_previous_version_is_what_simple_cnn_trains_now() -> None:
    old = json.loads((FIXTURES / "config_v0_1_simple_cnn.json").read_text())
    new = TrainConfig(model="simple_cnn", epochs=1, val_size=20, root=old["root"]).resolved()
    saved = TrainConfig.from_saved(old)
    differ = {
        k: (v, getattr(saved, k))
        for k, v in new.to_dict().items()
        if k != "recipe" and getattr(saved, k) != v
    }
    assert not differ, differ
    assert new.recipe == "original" and old["recipe"] is None


def test_a_config_missing_newer_fields_takes_the_old_defaults() -> None:
    old = json.loads((FIXTURES / "run_v0_1" / "config.json").read_text())
    for key in ("progressive", "muon_lr", "muon_momentum", "eval_batch_size"):
        del old[key]
    cfg = TrainConfig.from_saved(old)
    assert cfg.progressive == {} and cfg.muon_lr == 0.24 and cfg.eval_batch_size == 1000


# --------------------------------------------------------------------------- damaged run folders
#
# Everything read back from a run folder is checked against its table (cifarlab/schemas.py,
# runs.SCHEMAS) and what fails is one line naming the file and the field. The folders are a
# copy of one tiny trained and evaluated run with one file altered.


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/`` (a tiny CIFAR-10) and ``run/`` (1 epoch of a small FastNet, evaluated on
    test): made once, copied by each test."""
    base = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIFARLAB_CACHE", str(base / "cache"))
        root = base / "data"
        fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
        cfg = TrainConfig(model="fastnet_s", model_args={"widths": [8, 16, 16]}, root=str(root),
                          epochs=1, val_size=20, precision="fp32", device="cpu")  # fmt: skip
        run = train(cfg, out=base / "run", progress=False)
        evaluate_run(run, "test", root=root, report=False, device="cpu")
    return base


def _copy(template: Path, tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(template / "run", run)
    return run, template / "data"


def _one_error_line(error: BaseException, path: Path, *fields: str) -> str:
    message = str(error)
    assert "\n" not in message and message.startswith(str(path)), message
    for name in fields:
        assert name in message, (name, message)
    return message


# Values of every kind: each field is given those its kind refuses.
BAD_VALUES = [None, "10", "", -1, 0, 2.5, float("nan"), True, [], [1], {}, {"a": 1}, 10**30]


def test_the_schemas_cover_every_file_a_run_folder_holds() -> None:
    from cifarlab import schemas
    from cifarlab.runs import BEST, CALIBRATION, LAST, ROBUSTNESS, SCHEMAS

    assert set(SCHEMAS) == {CONFIG, METRICS, "eval_SPLIT.json", "predictions_SPLIT.npz", BEST,
                            LAST, CALIBRATION, ROBUSTNESS}  # fmt: skip
    for schema in SCHEMAS.values():
        assert isinstance(schema, schemas.Schema) and schema.fields
        names = [f.name for f in schema.fields]
        assert len(names) == len(set(names)), schema.name
        for f in schema.fields:
            assert f.kind.want and f.required in (True, False, "resume"), (schema.name, f.name)


@pytest.mark.parametrize("name", [CONFIG, METRICS, "eval_SPLIT.json"])
def test_each_json_field_of_the_wrong_kind_is_one_line_naming_file_and_field(
    name: str, template: Path, tmp_path: Path
) -> None:
    from cifarlab.runs import SCHEMAS

    run, _ = _copy(template, tmp_path)
    f = RunFolder(run)
    schema = SCHEMAS[name]
    path, read, doc, write = {
        CONFIG: (f.config_path, f.read_config, f.read_config(),
                 lambda d: f.config_path.write_text(json.dumps(d))),
        METRICS: (f.metrics_path, f.read_metrics, f.read_metrics()[0],
                  lambda d: f.metrics_path.write_text(json.dumps(d) + "\n")),
        "eval_SPLIT.json": (f.eval_path("test"), lambda: f.read_eval("test"), f.read_eval("test"),
                            lambda d: f.eval_path("test").write_text(json.dumps(d))),
    }[name]  # fmt: skip
    tried = 0
    for field in schema.fields:
        for bad in BAD_VALUES:
            if field.kind.ok(bad):
                continue
            write({**doc, field.name: bad})
            with pytest.raises(CifarlabError) as e:
                read()
            _one_error_line(e.value, path, field.name)
            tried += 1
        if field.required is True:
            write({k: v for k, v in doc.items() if k != field.name})
            with pytest.raises(CifarlabError) as e:
                read()
            _one_error_line(e.value, path, field.name)
    assert tried > 2 * len(schema.fields)
    if name == CONFIG:  # the settings: TrainConfig's checks, named as fields of the file
        from cifarlab.train.config import FIELDS

        for setting in FIELDS:
            write({**doc, setting: [1]})
            with pytest.raises(CifarlabError) as e:
                read()
            _one_error_line(e.value, path, setting)
    write(doc)
    assert read()  # the document itself passes


def test_each_checkpoint_field_of_the_wrong_kind_is_one_line_naming_file_and_field(
    template: Path, tmp_path: Path
) -> None:
    import torch

    from cifarlab.checkpoint import load_checkpoint
    from cifarlab.runs import SCHEMAS

    run, _ = _copy(template, tmp_path)
    last = run / "last.pt"
    state = load_checkpoint(last, "resume")
    bad_values = [*BAD_VALUES, torch.zeros(3), {"w": "not a tensor"}]
    for field in SCHEMAS["last.pt"].fields:
        for bad in bad_values:
            if field.kind.ok(bad):
                continue
            torch.save({**state, field.name: bad}, last)
            with pytest.raises(CifarlabError) as e:
                load_checkpoint(last, "resume")
            _one_error_line(e.value, last, field.name)
        if field.required:
            torch.save({k: v for k, v in state.items() if k != field.name}, last)
            if field.required == "resume":
                load_checkpoint(last, "open")  # not needed to open a run for inference
            with pytest.raises(CifarlabError) as e:
                load_checkpoint(last, "resume")
            missing = "no model weights" if field.name == "model" else f"missing {field.name}"
            _one_error_line(e.value, last, missing)
    nested = [
        ({"totals": {**state["totals"], "seen": "3"}}, "totals.seen must be an integer"),
        ({"optimizer": {"state": {}, "param_groups": [{"params": ["a"], "lr": 0.1}]}},
         "optimizer.param_groups[0].params[0] must be an integer"),
        ({"config": {**state["config"], "lr": "fast"}}, "config.lr must be a number"),
        ({"row": {"epoch": 0}}, "row.epoch must be a positive integer"),
        ({"class_names": ["a", 2]}, "class_names[1] must be a string"),
    ]  # fmt: skip
    for change, message in nested:
        torch.save({**state, **change}, last)
        with pytest.raises(CifarlabError, match=re.escape(message)) as e:
            load_checkpoint(last, "resume")
        _one_error_line(e.value, last)


def test_each_predictions_array_of_the_wrong_kind_is_one_line(
    template: Path, tmp_path: Path
) -> None:
    run, _ = _copy(template, tmp_path)
    f = RunFolder(run)
    path = f.predictions_path("test")
    labels, probs = f.read_predictions("test")
    assert labels.shape == (20,) and probs.shape == (20, 10)
    cases = [
        ({"labels": labels.astype(np.float32)}, "labels must be a 1-D array of integers"),
        ({"labels": labels[None]}, "labels must be a 1-D array of integers"),
        ({"probs": probs[0]}, "probs must be a 2-D array of floats"),
        ({"labels": labels[:5]}, "labels has 5 entries but probs 20 rows"),
        ({"labels": labels + 10}, "labels must lie in 0..9"),
        ({"labels": None}, "missing labels"),
    ]
    for change, message in cases:
        arrays = {k: v for k, v in {"labels": labels, "probs": probs, **change}.items()
                  if v is not None}  # fmt: skip
        np.savez(path, **arrays)
        with pytest.raises(CifarlabError, match=re.escape(message)) as e:
            f.read_predictions("test")
        _one_error_line(e.value, path)
    np.savez(path, labels=np.array([object()], dtype=object), probs=probs)  # a pickle inside
    with pytest.raises(CifarlabError, match="not readable"):
        f.read_predictions("test")
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CifarlabError, match="not readable"):
        f.read_predictions("test")


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


def _config_change(**change: object):  # noqa: ANN202
    def alter(run: Path) -> None:
        config = json.loads((run / CONFIG).read_text())
        config.update(change)
        (run / CONFIG).write_text(json.dumps(config))

    return alter


def _checkpoint_change(name: str, change):  # noqa: ANN001, ANN202
    def alter(run: Path) -> None:
        import torch

        state = torch.load(run / name, weights_only=True)
        change(state)
        torch.save(state, run / name)

    return alter


def _another_models_best(run: Path) -> None:
    import torch

    from cifarlab.models import create_model

    model = create_model("fastnet_s", 10, widths=[16, 16, 16])
    torch.save({"model": model.state_dict(), "epoch": 1}, run / "best.pt")


def _fifo(name: str):  # noqa: ANN202
    def alter(run: Path) -> None:
        (run / name).unlink()
        os.mkfifo(run / name)

    return alter


def _line(text: str):  # noqa: ANN202
    def alter(run: Path) -> None:
        (run / METRICS).write_text(text)

    return alter


ALL = ("evaluate", "predict", "export", "compare", "resume")
OPENERS = ("evaluate", "predict", "export")
DAMAGE = {  # what is altered, the commands that must refuse it, what they say
    "another-models-best": (_another_models_best, OPENERS,
                            "best.pt: the weights do not fit model 'fastnet_s'"),
    "best-without-epoch": (_checkpoint_change("best.pt", lambda s: s.pop("epoch")), OPENERS,
                           "best.pt: missing epoch"),
    "best-epoch-text": (_checkpoint_change("best.pt", lambda s: s.update(epoch="1")), OPENERS,
                        "best.pt: epoch must be an integer ≥ 0, got '1'"),
    "best-weights-text": (_checkpoint_change("best.pt", lambda s: s.update(model="w")), OPENERS,
                          "best.pt: model must be a dict of parameter name → tensor"),
    "last-without-optimizer": (_checkpoint_change("last.pt", lambda s: s.pop("optimizer")),
                               ("resume",), "last.pt: missing optimizer"),
    "last-rng-float": (_checkpoint_change("last.pt", lambda s: s.update(
        torch_rng=s["torch_rng"].float())), ("resume",), "last.pt: torch_rng must be a 1-D uint8"),
    "num-classes-text": (_config_change(num_classes="10"), ALL,
                         "config.json: num_classes must be an integer 2..100000, got '10'"),
    "model-args-list": (_config_change(model_args=[]), ALL,
                        "config.json: model_args must be a JSON object, got []"),
    "class-names-ints": (_config_change(class_names=list(range(10))), ALL,
                         "config.json: class_names[0] must be a string, got 0"),
    "class-names-short": (_config_change(class_names=list("abcdefghi")), ALL,
                          "config.json: class_names has 9 names but num_classes is 10"),
    "classes-not-the-outputs": (_config_change(class_names=list("abcdefghi"), num_classes=9),
                                OPENERS, "best.pt: the weights do not fit model 'fastnet_s'"),
    "metrics-row-list": (_line('[1, 2]\n{"epoch": 1}\n'), ("evaluate", "compare", "resume"),
                         "metrics.jsonl: line 1: expected a JSON object, got [1, 2]"),
    "metrics-not-json": (_line('not json\n{"epoch": 1}\n'), ("evaluate", "compare", "resume"),
                         "metrics.jsonl: line 1 is not JSON"),
    "eval-accuracy-text": (lambda run: (run / "eval_test.json").write_text(json.dumps(
        {**json.loads((run / "eval_test.json").read_text()), "accuracy": "0.9"})), ("compare",),
        "eval_test.json: accuracy must be a number in [0, 1], got '0.9'"),
    "config-fifo": (_fifo(CONFIG), ALL, "config.json: is a named pipe (FIFO)"),
    "best-fifo": (_fifo("best.pt"), (*OPENERS, "resume"), "best.pt: is a named pipe (FIFO)"),
}  # fmt: skip


def _command(name: str, run: Path, data: Path, tmp_path: Path) -> list[str]:
    return {
        "evaluate": ["evaluate", str(run), "--root", str(data), "--device", "cpu"],
        "predict": ["predict", str(run), str(_png(tmp_path / "red.png"))],
        "export": ["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")],
        "compare": ["compare", str(run), "--out", str(tmp_path / "cmp.html")],
        "resume": ["train", "--resume", str(run), "--no-progress"],
    }[name]


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_run_folder_is_one_error_line_from_every_command(
    damage: str, template: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cifarlab.cli import main

    alter, commands, message = DAMAGE[damage]
    run, data = _copy(template, tmp_path)
    alter(run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for command in commands:
        rc = main(_command(command, run, data, tmp_path))
        err = capsys.readouterr().err
        assert rc == 1, (command, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, err)
        assert message in err and "internal error" not in err, (command, err)
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "cmp.html").exists()
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before  # a refused command changed nothing in the run


def test_the_undamaged_template_passes_every_command(
    template: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cifarlab.cli import main

    run, data = _copy(template, tmp_path)
    for command in ALL:
        rc = main(_command(command, run, data, tmp_path))
        assert rc == 0, (command, capsys.readouterr().err)
    assert "has finished all 1 epochs; nothing to resume" in capsys.readouterr().out


# --------------------------------------------------------------------------- writes, links


def test_a_lock_that_is_a_link_is_never_written_through(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(target)
    with pytest.raises(CifarlabError, match=r"\.lock is a symbolic link; refusing to write"):
        with RunFolder(run).lock():
            pass
    assert target.read_text() == "keep me"


def test_promoting_best_follows_no_link_and_leaves_no_temp_file(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import cifarlab.runs as runs

    run, _ = _copy(template, tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (run / ".best.pt.tmp").symlink_to(target)  # the fixed temporary name of older versions
    f = RunFolder(run)
    f.promote_last_to_best()
    assert target.read_text() == "keep me"
    assert (run / "best.pt").read_bytes() == (run / "last.pt").read_bytes()
    assert not (run / "best.pt").is_symlink()

    old_best = (run / "best.pt").read_bytes()

    def disk_full(src, dst, length=0):  # noqa: ANN001, ANN202
        dst.write(src.read(1000))  # some of it, then no space left
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.shutil, "copyfileobj", disk_full)
    with pytest.raises(CifarlabError, match="No space left on device"):
        f.promote_last_to_best()
    assert (run / "best.pt").read_bytes() == old_best
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == [".best.pt.tmp"]


# --------------------------------------------------------------------------- a folder not ours


@pytest.mark.parametrize(
    "files",
    [
        {CONFIG: '{"name": "my thesis"}', METRICS: '{"loss": 1}\n'},  # someone else's
        {"notes.txt": "mine"},
        {CONFIG: "[]"},
        {"best.pt": "x"},
        {METRICS: '{"epoch": 1}\n'},
    ],
    ids=[
        "foreign-config-and-metrics",
        "any-file",
        "config-not-object",
        "checkpoint-alone",
        "metrics-alone",
    ],  # fmt: skip
)
def test_train_out_never_writes_into_a_folder_that_is_not_a_run(
    tmp_path: Path, files: dict[str, str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    cfg = TrainConfig(model="fastnet_s", root=str(tmp_path / "no-data"), epochs=1)
    with pytest.raises(CifarlabError, match="choose another --out") as e:
        train(cfg, out=out, progress=False)
    assert "\n" not in str(e.value)
    assert {p.name: p.read_text() for p in out.iterdir()} == files  # untouched


def test_train_out_takes_a_folder_left_by_an_attempt_before_its_first_checkpoint(
    template: Path, tmp_path: Path
) -> None:
    run, data = _copy(template, tmp_path)
    # (calibration.json is written once training ends: an attempt stopped before has none)
    for name in ("best.pt", "last.pt", "eval_test.json", "predictions_test.npz",
                 "calibration.json"):  # fmt: skip
        (run / name).unlink()
    (run / METRICS).write_text("")
    RunFolder(run).check_new()  # a cifarlab config, no checkpoint, no metrics: may be reused
    (run / METRICS).write_text('{"epoch": 1}\n')
    with pytest.raises(CifarlabError, match="holds 1 rows of metrics but the folder has no"):
        RunFolder(run).check_new()


def test_json_too_deep_or_too_big_is_one_line(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = _copy(template, tmp_path)
    f = RunFolder(run)
    config = json.loads(f.config_path.read_text())
    deep = "[" * 500 + "]" * 500
    for text, message in [
        (json.dumps(config)[:-1] + f', "model_args": {deep}}}', "nested more than 32 levels"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)"),
        ('{"model": ' + "9" * 5000 + "}", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON (not UTF-8 text)"),
    ]:
        if isinstance(text, bytes):
            f.config_path.write_bytes(text)
        else:
            f.config_path.write_text(text)
        with pytest.raises(CifarlabError, match=re.escape(message)) as e:
            f.read_config()
        _one_error_line(e.value, f.config_path)
    f.metrics_path.write_text('{"epoch": 1, "x": ' + deep + "}\n")
    with pytest.raises(CifarlabError, match=r"metrics.jsonl: line 1: nested more than 32"):
        f.read_metrics()
    monkeypatch.setenv("CIFARLAB_MAX_JSON_FILE_MB", "0.001")  # about 1 KB
    f.config_path.write_text(json.dumps(config))
    with pytest.raises(CifarlabError, match=r"over the limit .*CIFARLAB_MAX_JSON_FILE_MB"):
        f.read_config()


def test_resume_rebuilds_what_last_pt_holds(
    template: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """best.pt of another model and a lost config.json are rebuilt from last.pt (its epoch is
    the best); a temporary file left by a killed process goes; nothing is called finished
    before that."""
    run, _ = _copy(template, tmp_path)
    _another_models_best(run)
    (run / CONFIG).unlink()
    (run / ".config.json.k3j4h5g6.tmp").write_text("{")
    capsys.readouterr()
    train(resume=run, progress=False)
    out = capsys.readouterr().out
    assert "config.json was missing: written again from last.pt" in out
    assert "best.pt is not this run's (parameter " in out and "rebuilt from last.pt" in out
    assert out.index("rebuilt") < out.index("has finished all 1 epochs")
    assert (run / "best.pt").read_bytes() == (run / "last.pt").read_bytes()
    assert RunFolder(run).read_config()["class_names"][0] == "airplane"
    assert not (run / ".config.json.k3j4h5g6.tmp").exists()
    open_run(run)
