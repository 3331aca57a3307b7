"""Fast training: FastNet, the recipes, schedules, lookahead, test-time augmentation, and
CIFAR-100 through the same path. Real data (small subsets) and real generated files."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from cifarlab import load_dataset
from cifarlab.data.augment import normalize
from cifarlab.errors import CifarlabError
from cifarlab.evaluate.inference import eval_loader, predict_logits
from cifarlab.evaluate.run import evaluate_run, load_model
from cifarlab.models import create_model
from cifarlab.train import TrainConfig, train
from cifarlab.train.device import autocast_dtype
from cifarlab.train.recipe_data import measured_accuracy
from cifarlab.train.recipes import RECIPES, get_recipe, recipe_config
from conftest import run_cli
from fakedata import write_cifar100_learnable

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore")


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- pieces


def test_whitening_stem_decorrelates_patches(cifar10_root: Path) -> None:
    ds = load_dataset("cifar10", cifar10_root, val_size=0)
    x = normalize(ds.train.images[:2000].permute(0, 3, 1, 2), ds.mean, ds.std)
    model = create_model("fastnet_s")
    model.init_whitening(x)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, model.whiten.weight)  # no bias, no activation
    half = out.shape[1] // 2
    feats = out[:, :half].permute(0, 2, 3, 1).reshape(-1, half).double()
    cov = feats.T @ feats / len(feats)
    # Along each eigen-direction the variance is λ / (λ + eps): 1 for the strong directions,
    # damped for the faint ones (eps keeps noise from being blown up); no correlations.
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    eigenvalues = torch.linalg.eigvalsh(patches.double().T @ patches.double() / len(patches))
    expected = (eigenvalues / (eigenvalues + 5e-4)).flip(0)
    assert torch.allclose(cov.diagonal(), expected, atol=0.01)
    assert (cov.diagonal()[:6] > 0.99).all()
    off = cov - torch.diag(cov.diagonal())
    assert off.abs().max() < 1e-3
    assert torch.equal(model.whiten.weight[half:], -model.whiten.weight[:half])


def _stem_noise_to_signal(model: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor) -> float:
    """Energy of the stem's response to Gaussian pixel noise (``sigma`` per channel, in the
    normalized units of ``x``) against its response to the images: the stem is linear."""
    with torch.no_grad():
        signal = torch.nn.functional.conv2d(x, model.whiten.weight).pow(2).mean()
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * sigma
        return float(torch.nn.functional.conv2d(noise, model.whiten.weight).pow(2).mean() / signal)


def test_whitening_floor_damps_pixel_noise(cifar10_root: Path) -> None:
    """CIFAR-10-C's mildest Gaussian noise (σ = 0.04 of the pixel range) through the stem: with
    airbench's floor (5e-4) the faint patch directions of this JPEG-rebuilt copy are scaled up
    so far that the noise outweighs the images; the recipes' floor (3) keeps it far below."""
    ds = load_dataset("cifar10", cifar10_root, val_size=0)
    x = normalize(ds.train.images[:2000].permute(0, 3, 1, 2), ds.mean, ds.std)
    sigma = 0.04 / torch.tensor(ds.std).view(1, 3, 1, 1)
    ratios = {}
    for eps in (5e-4, RECIPES["fast"].config.whiten_eps):
        model = create_model("fastnet_s")
        model.init_whitening(x, eps=eps)
        ratios[eps] = _stem_noise_to_signal(model, x, sigma)
    assert RECIPES["fast"].config.whiten_eps == 3.0
    assert ratios[5e-4] > 1 > ratios[3.0]  # noise above the images' own response, then below
    assert ratios[3.0] < ratios[5e-4] / 10


def test_training_sets_the_stem_with_the_recipes_floor(trained_run: Path) -> None:
    """A real run of the `quick` recipe: its config records the floor, the per-image
    standardization and the recipe's version, and no stem filter is longer than
    1/sqrt(λ + floor) (airbench's 5e-4 allows 45)."""
    config = json.loads((trained_run / "config.json").read_text())
    assert config["whiten_eps"] == 3.0 and config["recipe_version"] == 2
    assert config["model_args"] == {"standardize": True}
    state = torch.load(trained_run / "best.pt", map_location="cpu", weights_only=True)
    weights = state["model"] if "model" in state else state
    stem = next(v for k, v in weights.items() if k.endswith("whiten.weight"))
    norms = stem.flatten(1).norm(dim=1)
    assert norms.max() <= 3.0**-0.5 + 1e-4  # the faint directions: capped


def test_a_recipes_model_args_go_with_its_own_model() -> None:
    assert recipe_config("fast").model_args == {"standardize": True}
    assert recipe_config("fast", model="fastnet_m").model_args == {"standardize": True}
    assert recipe_config("fast", model="resnet18").model_args == {}  # not the recipe's model
    given = recipe_config("fast", model_args={"widths": [8, 16, 16]})
    assert given.model_args == {"widths": [8, 16, 16]}  # a dict replaces the recipe's
    assert TrainConfig(model="fastnet_m").resolved().model_args == {"standardize": True}
    old = TrainConfig.from_saved({"model": "fastnet_m", "recipe": "fast", "model_args": {}})
    assert old.model_args == {}  # a run trained before version 2 is rebuilt as it was


def test_standardized_fastnet_ignores_contrast_and_brightness(cifar10_root: Path) -> None:
    """Per-image standardization: a brighter copy of an image gives the same logits, one with a
    quarter of its contrast (CIFAR-10-C's contrast scales by 0.4 to 0.2) nearly the same (the
    floor under each image's scale, 1e-2, is 4 % of this one's); without it both move the
    logits by about their own size."""
    ds = load_dataset("cifar10", cifar10_root, val_size=0)
    x = normalize(ds.train.images[:64].permute(0, 3, 1, 2), ds.mean, ds.std)
    torch.manual_seed(0)
    model = create_model("fastnet_s", standardize=True).eval()
    model.init_whitening(x, eps=3.0)
    plain = create_model("fastnet_s").eval()
    plain.load_state_dict(model.state_dict())
    mean = x.mean(dim=(1, 2, 3), keepdim=True)

    def moved(net: torch.nn.Module, changed: torch.Tensor) -> float:
        with torch.no_grad():
            a, b = net(x), net(changed)
        return float((b - a).abs().max() / a.abs().max())

    assert moved(model, x + 0.5) < 1e-4 and moved(plain, x + 0.5) > 0.3
    assert (
        moved(model, 0.25 * (x - mean) + mean) < 0.15 < 0.5 < moved(plain, 0.25 * (x - mean) + mean)
    )


def test_measured_accuracy_gives_the_spread_or_says_one_seed() -> None:
    three = {"test_acc": 0.8839, "test_acc_std": 0.003}
    assert measured_accuracy(three) == "0.884 ± 0.003"
    assert measured_accuracy({"test_acc": 0.9081, "test_acc_std": None}) == "0.908 (1 seed)"
    assert measured_accuracy({"test_acc": 0.9081}) == "0.908 (1 seed)"


def test_recipe_versions_are_recorded_and_described() -> None:
    from cifarlab.train.recipe_data import RECIPE_DATA, VERSIONS, describe_version, recorded_version

    assert recorded_version({"recipe": "fast", "recipe_version": 2}) == 2
    assert recorded_version({"recipe": "fast"}) == 1  # written before versions were recorded
    assert recorded_version({"recipe": None}) is None
    text = describe_version({"recipe": "max-cpu-muon", "recipe_version": 2})
    assert text.startswith("max-cpu-muon version 2 (") and "whiten_eps" in text
    assert describe_version({"recipe": "fast", "recipe_version": 99}).endswith(
        "(a version this cifarlab does not know)"
    )
    fastnet = ("quick", "fast", "max-cpu", "fast-muon", "max-cpu-muon", "long")
    assert {RECIPES[n].config.whiten_eps for n in fastnet} == {3.0}
    assert all(RECIPES[n].config.model_args == {"standardize": True} for n in fastnet)
    assert all(RECIPE_DATA[n].version == 2 for n in fastnet)  # what their runs record
    assert RECIPES["resnet18"].config.model_args == {}
    assert RECIPES["original"].config.whiten_eps == 5e-4 and set(VERSIONS) == {1, 2}


def test_recipes_are_complete_and_overridable() -> None:
    for name, recipe in RECIPES.items():
        cfg = recipe.config.resolved()
        assert cfg.recipe == name and cfg.epochs and cfg.lr and cfg.batch_size
    cfg = recipe_config("fast", epochs=2, lr=0.5)
    assert cfg.epochs == 2 and cfg.lr == 0.5 and cfg.model == get_recipe("fast").config.model
    with pytest.raises(CifarlabError, match="recipe 'turbo' is unknown"):
        get_recipe("turbo")
    with pytest.raises(CifarlabError, match="warp_speed is not a setting"):
        recipe_config("fast", warp_speed=9)


def test_measured_figures_match_benchmarks_md() -> None:
    """`cifarlab recipes` shows what BENCHMARKS.md records, not numbers of its own."""
    text = (REPO / "BENCHMARKS.md").read_text()
    for name, recipe in RECIPES.items():
        m = recipe.measured
        if not m:
            continue
        row = re.search(rf"^\| `{re.escape(name)}` \|.*$", text, re.MULTILINE)
        assert row, f"no row for recipe {name} in BENCHMARKS.md"
        cells = row.group(0)
        assert measured_accuracy(m) in cells, cells
        assert f"{m['train_seconds']:.0f} s" in cells, cells


# --------------------------------------------------------------------------- training


def _small(root: Path, recipe: str, **kw) -> TrainConfig:
    base = dict(root=str(root), train_size=4000, val_size=1000, device="cpu")
    return recipe_config(recipe, **{**base, **kw})


@pytest.mark.parametrize(
    "recipe,epochs,floor",
    [("quick", 3, 0.30), ("fast", 2, 0.30), ("max-cpu", 2, 0.30), ("resnet18", 1, 0.18)],
)
@pytest.mark.slow
def test_every_recipe_learns(
    cifar10_root: Path, tmp_path: Path, recipe: str, epochs: int, floor: float,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    # tta=0: the calibration at the end fits on one view of val, not six; training and each
    # epoch's val_acc are the same either way (validation during training takes no TTA)
    kw: dict = {"epochs": epochs, "tta": 0}
    if recipe == "resnet18":  # 11M parameters: a smaller bite on a CPU
        kw.update(train_size=1500, batch_size=64, lr=0.05)
    if recipe == "quick":  # the session's shared run is this recipe's, on 10,000 images
        run = request.getfixturevalue("trained_run")
        assert json.loads((run / "config.json").read_text())["epochs"] == epochs
    else:
        run = train(_small(cifar10_root, recipe, **kw), out=tmp_path / "r", progress=False)
    rows = _history(run)
    assert rows[-1]["val_acc"] > floor, rows  # chance is 0.10
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == recipe and config["model"] == get_recipe(recipe).config.model


@pytest.mark.slow
def test_tta_shifts_are_translates_pixels_for_any_batch() -> None:
    """The TTA shift (reflect-pad and crop, so that an exported graph takes any batch) moves
    exactly the pixels `translate` moves, in every layout and dtype."""
    from cifarlab.data.augment import translate
    from cifarlab.evaluate.inference import _shift

    gen = torch.Generator().manual_seed(0)
    for n, dtype, cl in ((1, torch.float32, False), (7, torch.bfloat16, False),
                         (64, torch.float32, True)):  # fmt: skip
        x = torch.randn(n, 3, 32, 32, generator=gen).to(dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        for d in (-2, -1, 1, 2):
            shift = torch.full((n,), d)
            assert torch.equal(_shift(x, d), translate(x, shift, shift)), (n, dtype, cl, d)


def test_tta_does_not_lower_accuracy(cifar10_root: Path, trained_run: Path) -> None:
    run = trained_run  # the shared `quick` run: 10,000 training images, 1,000 held out
    config = json.loads((run / "config.json").read_text())
    model, _ = load_model(run, config)
    model = model.to(memory_format=torch.channels_last)
    ds = load_dataset("cifar10", cifar10_root, val_size=config["val_size"])  # as training held out
    loader = eval_loader(ds.val.images, ds.val.labels, mean=ds.mean, std=ds.std,
                         channels_last=True)  # fmt: skip
    acc = {}
    autocast = autocast_dtype(config["precision"], torch.device("cpu"))  # as evaluate_run does
    for level in (0, 1, 2):
        logits, labels = predict_logits(model, loader, tta=level, autocast=autocast)
        acc[level] = (logits.argmax(1) == labels).float().mean().item()
    assert acc[0] > 0.4, acc
    # 1,000 images: one standard error of a paired difference is under a point
    assert acc[1] >= acc[0] - 0.01 and acc[2] >= acc[0] - 0.01, acc
    m = evaluate_run(run, "val", report=False, tta=2)
    assert m["tta"] == 2 and m["accuracy"] == pytest.approx(acc[2], abs=0.002)
    assert m["accuracy_without_tta"] == pytest.approx(acc[0], abs=0.002)


@pytest.mark.parametrize("labels,classes", [("fine", 100), ("coarse", 20)])
@pytest.mark.slow
def test_cifar100_trains_with_a_recipe(tmp_path: Path, labels: str, classes: int) -> None:
    write_cifar100_learnable(tmp_path / "data", per_class=30, test_per_class=5)
    cfg = recipe_config(
        "quick", dataset="cifar100", labels=labels, root=str(tmp_path / "data"),
        val_size=500, epochs=4, batch_size=64, lr=0.1, device="cpu",
    )  # fmt: skip
    run = train(cfg, out=tmp_path / "r", progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["num_classes"] == classes and len(config["class_names"]) == classes
    assert _history(run)[-1]["val_acc"] > 5 / classes  # chance is 1/classes
    m = evaluate_run(run, "test", report=False)
    assert len(m["per_class"]) == classes and m["top5_accuracy"] is not None


# --------------------------------------------------------------------------- CLI


_cli = run_cli


@pytest.mark.slow
def test_cli_recipes_lists_every_recipe() -> None:
    r = _cli("recipes")
    assert r.returncode == 0, r.stderr
    for name in RECIPES:
        assert re.search(rf"^{re.escape(name)}\s", r.stdout, re.MULTILINE), r.stdout
        if RECIPES[name].measured:  # each figure names the CPU that measured it
            machine = re.escape(RECIPES[name].measured["machine"])
            line = rf"^  (.*, )?{re.escape(name)}(, .*)?: on {machine}$"
            assert re.search(line, r.stdout, re.MULTILINE), r.stdout
    r = _cli("recipes", "--show", "fast")
    assert r.returncode == 0 and '"lookahead_every"' in r.stdout
    r = _cli("recipes", "--show", "nope")
    assert r.returncode == 1 and "error: recipe 'nope' is unknown" in r.stderr


@pytest.mark.slow
def test_cli_train_recipe_with_overrides(cifar10_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    r = _cli(
        "train", "--recipe", "quick", "--root", str(cifar10_root), "--train-size", "1000",
        "--val-size", "500", "--epochs", "1", "--lr", "0.2", "--set", "lookahead_every=0",
        "--set", 'augment={"translate": 3}', "--no-channels-last", "--out", str(run),
        "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == "quick" and config["lr"] == 0.2 and config["epochs"] == 1
    assert config["lookahead_every"] == 0 and config["augment"] == {"translate": 3}
    assert config["channels_last"] is False
    assert config["label_smoothing"] == get_recipe("quick").config.label_smoothing
    r = _cli("train", "--recipe", "quick", "--set", "warp=9", "--root", str(cifar10_root))
    assert r.returncode == 1 and "error: --set warp is not a setting" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "setting,message",
    [
        ("epochs=abc", "epochs must be an integer, got 'abc'"),
        ("seed=1.5", "seed must be an integer, got 1.5"),
        ("lr=abc", "lr must be a number, got 'abc'"),
        ("channels_last=1", "channels_last must be true or false"),
        ("augment=[1]", "augment must be a JSON object"),
        ("augment={bad", "augment must be a JSON object"),
        ("momentum=1.5", "momentum must be in [0, 1)"),
        ("lr_start=-1", "lr_start must be ≥ 0"),
    ],
)
def test_set_values_of_the_wrong_type_are_clear_errors(setting: str, message: str) -> None:
    from cifarlab.cli import _option_namer, build_parser, train_config_from_args
    from cifarlab.errors import SettingError

    args = build_parser().parse_args(["train", "--recipe", "quick", "--set", setting])
    with pytest.raises(SettingError) as e:
        train_config_from_args(args).resolved()
    assert str(e.value).startswith(message)
    name = setting.split("=")[0]
    flag = {"epochs": "--epochs", "seed": "--seed", "lr": "--lr", "momentum": "--momentum",
            "channels_last": "--channels-last"}.get(name, f"--set {name}")  # fmt: skip
    assert e.value.render(_option_namer(args)).startswith(flag + message[len(name) :])
