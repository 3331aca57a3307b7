"""Configuration logic (train/config.py): defaults from recipes, overrides, --set, the resume
and budget policies, and errors that name the setting (or, in the CLI, its option)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifarlab.errors import SettingError
from cifarlab.models import get_entry, model_names
from cifarlab.train.config import (
    TrainConfig,
    apply_changes,
    budget_config,
    make_config,
    parse_setting,
    resume_config,
)
from cifarlab.train.recipes import ORIGINAL, RECIPES, default_recipe, get_recipe, recipe_config
from conftest import run_cli


def test_every_model_has_a_default_recipe_that_suits_it() -> None:
    expected = {
        "mlp": "original",
        "simple_cnn": "original",
        "fastnet_s": "quick",
        "fastnet_m": "fast",
        "fastnet_l": "max-cpu",
        "fastnet_xl": "long",
        "resnet18": "resnet18",
    }
    assert {m: default_recipe(m) for m in model_names()} == expected
    for name in model_names():
        assert get_entry(name).recipe in RECIPES


def test_a_model_without_a_recipe_trains_the_way_its_recipe_does() -> None:
    cfg = TrainConfig(model="fastnet_m", epochs=3).resolved()
    fast = get_recipe("fast").config
    assert cfg.recipe == "fast" and cfg.epochs == 3
    for key in (
        "optimizer",
        "lr",
        "batch_size",
        "augment",
        "schedule",
        "label_smoothing",
        "lookahead_every",
        "precision",
        "tta",
    ):
        assert getattr(cfg, key) == getattr(fast, key), key
    assert cfg.optimizer == "sgd" and cfg.batch_size == 256  # not the study's Adam / 32


def test_the_study_models_keep_the_study_set_up() -> None:
    for model in ("mlp", "simple_cnn"):
        cfg = TrainConfig(model=model).resolved()
        assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.normalize, cfg.augment) == (
            "adam",
            1e-3,
            32,
            10,
            "unit",
            {},
        )
    assert TrainConfig().resolved().model == "simple_cnn"
    assert ORIGINAL.recipe == "original" and RECIPES["original"].config is ORIGINAL


def test_recipes_are_complete() -> None:
    """Every recipe sets every training setting: none relies on a default elsewhere."""
    for name, recipe in RECIPES.items():
        cfg = recipe.config
        cfg.validate()
        assert cfg.recipe == name


def test_changes_name_what_is_wrong() -> None:
    base = get_recipe("fast").config
    assert apply_changes(base, {"translate": 4}).augment == {**base.augment, "translate": 4}
    with pytest.raises(SettingError, match=r"^warp_speed is not a setting") as e:
        apply_changes(base, {"warp_speed": 9})
    assert e.value.names == ["warp_speed"]
    with pytest.raises(SettingError, match=r"^epochs must be an integer, got '3'"):
        apply_changes(base, {"epochs": "3"})
    with pytest.raises(SettingError, match=r"^model_args must be a JSON object"):
        apply_changes(base, {"model_args": []})
    with pytest.raises(SettingError, match=r"^lr must be > 0"):
        make_config("fast", lr=-1.0)
    with pytest.raises(
        SettingError,
        match=r"^augment has no setting 'bogus': its settings are translate, flip, cutout",
    ):
        make_config("fast", augment={"bogus": 1})
    with pytest.raises(SettingError, match=r"^recipe 'turbo' is unknown"):
        recipe_config("turbo")
    with pytest.raises(SettingError, match=r"^warp_speed is not a setting"):
        TrainConfig.from_dict({"warp_speed": 1})


def test_a_recipe_change_names_the_recipe() -> None:
    """``--set recipe=NAME`` (``make_config(recipe=NAME)``) is ``--recipe NAME``; both is an
    error, and so is a value that is not a name."""
    assert make_config(recipe="quick", epochs=2) == make_config("quick", epochs=2)
    assert make_config(recipe="quick").model == "fastnet_s"
    with pytest.raises(
        SettingError, match=r"^recipe is given twice \(--recipe and --set recipe=\)"
    ):
        make_config("fast", recipe="quick")
    for bad in (5, "", None, ["quick"]):
        with pytest.raises(SettingError, match=r"^recipe must be a recipe's name, got "):
            make_config(recipe=bad)
    for bad in (5, "", ["quick"]):
        with pytest.raises(SettingError, match=r"^recipe must be a recipe's name, got "):
            apply_changes(ORIGINAL, {"recipe": bad})
    assert apply_changes(ORIGINAL, {"recipe": None}).recipe is None  # the model's default


def test_recipes_are_the_original_set_up_with_their_changes() -> None:
    """A recipe's config is the original set-up with what its data (train/recipe_data.py, which
    config.py reads too) changes."""
    from cifarlab.train import recipe_data

    for name, recipe in RECIPES.items():
        data = recipe_data.RECIPE_DATA[name]
        assert (recipe.description, recipe.measured) == (data.description, data.measured)
        expected = {**recipe_data.ORIGINAL_VALUES, **data.changes, "recipe": name}
        assert {k: getattr(recipe.config, k) for k in expected} == expected
    values = recipe_data.recipe_values("fast")
    values["augment"]["translate"] = 9  # a copy: the recipe is not changed
    assert get_recipe("fast").config.augment["translate"] == 2
    assert TrainConfig(model="fastnet_m").resolved().augment == get_recipe("fast").config.augment


def test_set_values_are_json_or_text() -> None:
    assert parse_setting("lookahead-every=0") == ("lookahead_every", 0)
    assert parse_setting('augment={"translate": 4}') == ("augment", {"translate": 4})
    assert parse_setting("optimizer=sgd") == ("optimizer", "sgd")
    with pytest.raises(SettingError, match="needs FIELD=VALUE"):
        parse_setting("lr")


def test_resume_and_budget_policies() -> None:
    saved = make_config("quick", epochs=2)
    assert resume_config(saved, {"epochs": 5, "device": None}).epochs == 5
    with pytest.raises(SettingError, match=r"^lr cannot change when a run is resumed"):
        resume_config(saved, {"lr": 0.1})
    budgeted = make_config("quick", budget=60.0, steps=10)
    with pytest.raises(SettingError, match=r"^epochs cannot extend a run trained to a budget"):
        resume_config(budgeted, {"epochs": 9})
    assert budget_config({"seed": 3, "val_size": 100}).seed == 3
    with pytest.raises(SettingError, match=r"^epochs, lr cannot be combined with a budget"):
        budget_config({"lr": 0.1, "epochs": 3})


_cli = run_cli


@pytest.mark.slow
def test_the_cli_names_its_options_not_the_library_parameters(tmp_path: Path) -> None:
    """No message names an option that does not exist."""
    cases = [
        (["train", "--epochs", "0"], "error: --epochs must be ≥ 1, got 0"),
        (["train", "--set", "lookahead_start=2"], "error: --set lookahead_start must be in"),
        (["train", "--set", "warp=1"], "error: --set warp is not a setting"),
        (["train", "--recipe", "turbo"], "error: --recipe 'turbo' is unknown"),
        (["train", "--budget", "5m", "--lr", "0.1"], "error: --lr cannot be combined with a"),
        (["train", "--budget", "soon"], "error: --budget 'soon': give a duration"),
        (["train", "--device", "tpu"], "error: --device must be auto, cpu, cuda or mps"),
    ]
    for args, message in cases:
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith(message), (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_train_help_groups_its_options(tmp_path: Path) -> None:
    out = _cli("train", "--help", cwd=tmp_path).stdout
    for group in (
        "what to train:",
        "data:",
        "optimisation:",
        "preprocessing and augmentation:",
        "speed:",
        "run:",
    ):
        assert group in out, group


def test_a_setting_that_cannot_act_is_an_error_not_ignored() -> None:
    with pytest.raises(SettingError, match=r"^momentum has no effect here: .*optimizer adam"):
        TrainConfig(model="simple_cnn", momentum=0.5).resolved()
    with pytest.raises(SettingError, match=r"^muon_lr has no effect here: .*optimizer muon"):
        make_config("fast", muon_lr=0.1)
    with pytest.raises(SettingError, match=r"^warmup has no effect here"):
        make_config("original", warmup=0.1)
    assert make_config("fast-muon", muon_lr=0.1).muon_lr == 0.1  # acts there
    assert make_config("original", optimizer="sgd", momentum=0.5).momentum == 0.5


# --------------------------------------------------------------------------- every value checked

OUT_OF_RANGE = [
    ({"augment": {"translate": "2"}}, "translate", r"must be a whole number 0\.\.16 pixels"),
    ({"augment": 2.5}, "augment", r"must be a JSON object"),
    ({"translate": 2.5}, "translate", r"must be a whole number"),
    ({"model_args": {"num_classes": 5}}, "model_args", r"cannot set num_classes: the dataset"),
    ({"model_args": []}, "model_args", r"must be a JSON object"),
    ({"seed": 2**70}, "seed", r"must be at most 9223372036854775807 \(2\*\*63 - 1\)"),
    ({"seed": -1}, "seed", r"must be 0\.\.9223372036854775807"),
    ({"lr": float("inf")}, "lr", r"must be a finite number, got inf"),
    ({"weight_decay": float("nan")}, "weight_decay", r"must be a finite number, got nan"),
    ({"threads": 10**9}, "threads", r"must be 1\.\.1024"),
    ({"batch_size": 2**40}, "batch_size", r"must be at most"),
    ({"eval_batch_size": 0}, "eval_batch_size", r"must be 1\.\."),
    ({"epochs": 10**7}, "epochs", r"must be at most 1,000,000"),
    ({"steps": 2**50}, "steps", r"must be at most"),
    ({"val_size": 10**30}, "val_size", r"must be at most"),
    ({"train_size": 2**40}, "train_size", r"must be at most"),
    ({"budget": 1e300}, "budget", r"must be at most"),
    ({"lookahead_every": -1}, "lookahead_every", r"must be 0\.\."),
    ({"whiten_bias_epochs": 10**9}, "whiten_bias_epochs", r"must be 0\.\."),
    ({"whiten_eps": 0}, "whiten_eps", r"must be above 0 and at most 1000, got 0"),
    ({"whiten_eps": 1e4}, "whiten_eps", r"must be above 0 and at most 1000"),
    ({"dataset": "mnist"}, "dataset", r"must be one of cifar10, cifar100"),
    ({"labels": "medium"}, "labels", r"must be fine or coarse"),
    ({"device": ""}, "device", r"must be auto, cpu, cuda or mps"),
    ({"model": ""}, "model", r"must name a model"),
    ({"epochs": 2.5}, "epochs", r"must be an integer, got 2\.5"),
    ({"channels_last": "yes"}, "channels_last", r"must be true or false"),
]


@pytest.mark.parametrize("changes,name,problem", OUT_OF_RANGE,
                         ids=[f"{n}-{i}" for i, (_, n, _) in enumerate(OUT_OF_RANGE)])  # fmt: skip
def test_every_value_is_range_and_type_checked_where_it_enters(
    changes: dict, name: str, problem: str
) -> None:
    with pytest.raises(SettingError, match=f"^{name} {problem}") as e:
        make_config("quick", **changes)
    assert e.value.names == [name] and "\n" not in str(e.value)


def test_a_value_of_the_wrong_type_is_refused_for_every_field() -> None:
    from cifarlab.train.config import FIELDS

    base = get_recipe("quick").config
    for name in FIELDS:
        with pytest.raises(SettingError) as e:
            apply_changes(base, {name: [1]}).resolved()
        assert e.value.names == [name], (name, str(e.value))


def test_the_largest_seed_the_generators_take_trains() -> None:
    assert make_config("quick", seed=2**63 - 1).seed == 2**63 - 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", 'augment={"translate":"2"}'], "error: --translate must be a whole number"),
        (["--set", "augment=2.5"], "error: --set augment must be a JSON object"),
        (["--set", 'model_args={"num_classes":5}'], "error: --set model_args cannot set num_"),
        (["--seed", str(2**70)], "error: --seed must be at most 9223372036854775807"),
        (["--set", "lr=Infinity"], "error: --lr must be a finite number, got inf"),
        (["--threads", str(10**9)], "error: --threads must be 1..1024"),
        (
            ["--set", 'model_args={"widths":[1000000,1000000,1000000]}', "--model", "fastnet_s"],
            "error: --set model_args {'widths': [1000000, 1000000, 1000000]} give model",
        ),
    ],
)
def test_the_cli_refuses_bad_values_in_one_line(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    from cifarlab.cli import main
    from fakedata import write_cifar10_python

    monkeypatch.chdir(tmp_path)
    write_cifar10_python(tmp_path / "data", per_batch=20, test=20)
    rc = main(["train", "--root", str(tmp_path / "data"), "--val-size", "20", "--no-progress",
               "--out", str(tmp_path / "r"), *args])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
