"""The ``cifarlab`` command line: parse options, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from cifarlab.data.sources import DATASETS  # the names only: no torch
from cifarlab.errors import CifarlabError, SettingError, one_line, say_warning


def _add_data_options(p: argparse.ArgumentParser, *, labels: bool = True) -> None:
    p.add_argument(
        "--dataset",
        default="cifar10",
        choices=list(DATASETS),
        help="which dataset (default: cifar10)",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="folder or .tar.gz holding the data (default: $CIFARLAB_DATA, else the "
        "user cache directory)",
    )
    if labels:
        p.add_argument(
            "--labels",
            default="fine",
            choices=["fine", "coarse"],
            help="CIFAR-100 label set: fine (100 classes) or coarse (20)",
        )
        p.add_argument(
            "--val-size",
            type=int,
            default=5000,
            help="images held out of train for validation (default: 5000)",
        )
        p.add_argument(
            "--download",
            action="store_true",
            help="download the official archive if the data is not found",
        )


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error (exit code 2, the
    convention for a command line that cannot be parsed)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _option_names(p: argparse.ArgumentParser) -> dict[str, str]:
    """dest → the option that sets it (``epochs`` → ``--epochs``), for error messages."""
    names = {}
    for action in p._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            names[action.dest] = longs[0]
    return names


def _option_namer(args: argparse.Namespace) -> Callable[[str], str]:
    """How an error names a setting: by its option in the command that ran (``--epochs``);
    a train setting without one, by ``--set NAME``; anything else by its own name."""
    options = {**_option_names(args.parser), "set": "--set"}
    is_train = getattr(args, "func", None) is cmd_train

    def name_of(name: str) -> str:
        if name in options:
            return options[name]
        return f"--set {name}" if is_train else name

    return name_of


def _command(sub: argparse._SubParsersAction, name: str, func: Callable, **kw: Any):  # noqa: ANN202
    p = sub.add_parser(name, **kw)
    p.set_defaults(func=func, parser=p)
    return p


def _download_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "download",
        cmd_download,
        help="download and unpack an official archive",
        description="Download an official CIFAR archive (resumable, md5-checked) "
        "and unpack it into the data folder.",
    )
    _add_data_options(p, labels=False)
    p.add_argument(
        "--format",
        default="python",
        choices=["python", "binary"],
        help="which official archive (default: python)",
    )
    p.add_argument(
        "--url",
        default=None,
        help="base URL of a mirror (default: $CIFARLAB_MIRROR, else the official site)",
    )


def _data_parser(sub: argparse._SubParsersAction) -> None:
    data = _command(
        sub,
        "data",
        lambda args: data.print_help() or 0,
        help="inspect the data (info, show)",
        description="Inspect a dataset.",
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    p = _command(
        data_sub,
        "info",
        cmd_data_info,
        help="counts per class per split, source, checksums",
        description="Show where the data came from, its checksum status and images "
        "per class in each split.",
    )
    _add_data_options(p)
    p = _command(
        data_sub,
        "show",
        cmd_data_show,
        help="write a PNG grid of sample images",
        description="Write a PNG grid of sample images, N per class, titled with "
        "their class names.",
    )
    _add_data_options(p)
    p.add_argument(
        "--split",
        default="train",
        choices=["train", "val", "test"],
        help="which split to sample (default: train)",
    )
    p.add_argument(
        "--per-class",
        type=int,
        default=8,
        help="images per class, up to 50 (10 for CIFAR-100 fine labels; default: 8)",
    )
    p.add_argument("--seed", type=int, default=0, help="which samples (default: 0)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/samples.png"),
        help="PNG file to write (default: runs/samples.png)",
    )


def _models_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "models",
        cmd_models,
        help="list the models with their parameter counts and default recipes",
        description="List the registered models: parameters, the recipe each trains "
        "with when none is named, and a description. Models of your own: --model "
        "package.module:callable (see the README).",
    )
    p.add_argument(
        "--num-classes", type=int, default=10, help="count parameters for this many classes"
    )


def _recipes_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "recipes",
        cmd_recipes,
        help="list the training recipes with their measured accuracy and time",
        description="List the named training recipes (cifarlab train --recipe NAME) "
        "with the test accuracy and CPU training time measured for each "
        "(BENCHMARKS.md).",
    )
    p.add_argument("--show", metavar="NAME", help="print every setting of one recipe")


def _doctor_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "doctor",
        cmd_doctor,
        help="this machine: CPU, measured training speeds, what each recipe and budget takes",
        description="Describe this machine (CPU model, family/model, the flags that "
        "matter, threads, torch), time each FastNet's training step in float32 and "
        "bf16 (channels-last; cached in the cache directory, --fresh to measure "
        "again), show which precision `auto` picks, the expected training time of each "
        "recipe here, and what --budget would train for a few budgets.",
    )
    p.add_argument("--fresh", action="store_true", help="measure again, ignoring the cache")
    p.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[256], metavar="N", help="default: 256"
    )
    p.add_argument("--matmul", action="store_true", help="also measure torch.mm's peak FLOP/s")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "train",
        cmd_train,
        help="train a model into a run folder",
        description="Train a model. Start from a recipe (--recipe NAME, see `cifarlab "
        "recipes`) or a model (--model NAME: it trains with its default recipe, see "
        "`cifarlab models`; mlp and simple_cnn with the original study's). Every "
        "option given overrides the recipe's value; --set FIELD=VALUE reaches any "
        "field of the configuration (`cifarlab recipes --show NAME` lists them).",
    )
    for add in (
        _train_what_options,
        _train_data_options,
        _train_optimisation_options,
        _train_augmentation_options,
        _train_speed_options,
        _train_run_options,
    ):
        add(p)


# `train`'s options, one function per group of its --help. An option whose dest is a TrainConfig
# field (or translate, flip, cutout, corrupt: augment's) sets that field (`_train_fields`).


def _train_what_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="start from the settings in FILE: a TOML file of configuration fields "
        '(recipe = "quick", lr = 0.2, ...), or a run\'s config.json to train that run '
        "again; options given here override the file's",
    )
    g.add_argument("--recipe", help="start from this recipe (see `cifarlab recipes`)")
    g.add_argument(
        "--model",
        help="a model name (see `cifarlab models`; default: simple_cnn) or your own, "
        "as an import path package.module:callable taking num_classes",
    )
    g.add_argument(
        "--budget",
        metavar="TIME",
        help="train for this long (90s, 5m, 1h; data loading and measuring "
        "included): cifarlab times this machine, then picks the network, precision "
        "and number of steps with the best expected accuracy; --model limits the "
        "choice to one network",
    )


def _train_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=list(DATASETS), help="which dataset (default: cifar10)")
    g.add_argument(
        "--root",
        type=Path,
        help="folder or .tar.gz holding the data (default: $CIFARLAB_DATA, else the "
        "user cache directory)",
    )
    g.add_argument(
        "--labels",
        choices=["fine", "coarse"],
        help="CIFAR-100 label set: fine (100 classes, default) or coarse (20)",
    )
    g.add_argument(
        "--val-size", type=int, help="images held out of train for validation (default: 5000)"
    )
    g.add_argument(
        "--train-size", type=int, help="train on a class-balanced subset of N training images"
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="download the official archive if the data is not found",
    )


def _train_optimisation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="epochs to train")
    g.add_argument("--batch-size", type=int, help="images per step")
    g.add_argument("--lr", type=float, help="learning rate (PyTorch's, for the mean loss)")
    g.add_argument(
        "--optimizer",
        choices=["adam", "sgd", "muon"],
        help="adam; sgd with Nesterov momentum; muon: Muon on the conv filters (lr: "
        "muon_lr, set with --set muon_lr=...), Nesterov SGD on the rest",
    )
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, help="L2 weight decay")
    g.add_argument("--label-smoothing", type=float, help="label smoothing of the loss")
    g.add_argument(
        "--schedule", choices=["constant", "triangle", "cosine"], help="learning-rate schedule"
    )


def _train_augmentation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing and augmentation")
    g.add_argument(
        "--normalize",
        choices=["unit", "standard"],
        help="unit: pixels / 255; standard: subtract the dataset mean, divide by std",
    )
    g.add_argument("--translate", type=int, help="random shift ±N px, reflect padding")
    g.add_argument("--flip", choices=["none", "random", "alternate"], help="horizontal flips")
    g.add_argument("--cutout", type=int, help="zero a random N×N square")
    g.add_argument(
        "--corrupt",
        type=float,
        metavar="SHARE",
        help="training for robustness: replace this share (0..1) of each batch by copies "
        "with a random CIFAR-10-C corruption at a random severity (see cifarlab robustness)",
    )


def _train_speed_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed")
    g.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        help="auto: on a CPU, time this model's training step in float32 and bf16 "
        "here (cached per machine) and take the faster; on CUDA bf16 from compute "
        "capability 8",
    )
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="NHWC memory format for model and batches",
    )
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile")
    g.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    g.add_argument("--device", help="auto, cpu, cuda or mps (default: auto)")


def _train_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, help="run folder (default: runs/MODEL-DATASET-TIME)")
    g.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue the interrupted run in RUN with its own settings; --epochs "
        "may extend it, --device, --root and --threads may differ",
    )
    g.add_argument("--seed", type=int, help="random seed (default: 0)")
    g.add_argument(
        "--seeds",
        metavar="SEEDS",
        help="train once per seed (0-4, or 0,3,7) into a group folder: --out/seed-K/ for "
        "each, and group.json; `cifarlab evaluate` and `compare` take the group",
    )
    g.add_argument(
        "--parallel",
        type=int,
        metavar="K",
        help="with --seeds: train K seeds at once, in K processes (for a GPU; on a CPU they "
        "share the cores: no faster)",
    )
    g.add_argument(
        "--tta",
        type=int,
        choices=[0, 1, 2],
        help="test-time augmentation used by evaluate: 0 none, 1 mirror, 2 mirror + shifts",
    )
    g.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set any configuration field (e.g. --set lookahead_every=0 --set "
        "augment='{\"translate\": 4}'); VALUE is read as JSON, else as text",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument(
        "--no-tensorboard",
        action="store_true",
        help="no TensorBoard event files in the run folder (written when the tensorboard "
        "package is installed, unless $CIFARLAB_TENSORBOARD=0)",
    )


def _add_run_argument(p: argparse.ArgumentParser) -> None:
    """The trained run a command works on, and which of its checkpoints."""
    p.add_argument("run", type=Path, help="the run folder (runs/NAME)")
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "last"],
        help="best on validation (default) or last",
    )


def _add_tta_argument(p: argparse._ActionsContainer, default: str) -> None:
    p.add_argument(
        "--tta",
        type=int,
        choices=[0, 1, 2],
        help=f"test-time augmentation: 0 none, 1 mirror, 2 mirror + 1-px shifts (default: "
        f"{default})",
    )


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "evaluate",
        cmd_evaluate,
        help="evaluate a run: metrics, tables, JSON and report.html",
        description="Evaluate a trained run on the test (or val) split: accuracy, "
        "top-5, log-loss, per-class precision/recall/F1, confusion matrix, predicted "
        "vs true counts; writes eval_SPLIT.json and report.html (report_val.html for "
        "--split val) into the run folder. Given a group (cifarlab train --seeds), evaluates "
        "every run of it in turn and prints the group's mean ± sd and 95% CI of accuracy, "
        "macro F1, log-loss and ECE with each run's numbers.",
    )
    _add_run_argument(p)
    p.add_argument("--split", default="test", choices=["test", "val"], help="default: test")
    p.add_argument("--root", type=Path, help="data folder, if not the one the run used")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    _add_tta_argument(p, "the run's setting")
    p.add_argument("--no-report", action="store_true", help="skip report.html")


def _predict_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "predict",
        cmd_predict,
        help="predict the class of your own images with a trained run",
        description="Predict image files (PNG, JPEG, BMP, WebP, GIF, TIFF; any size; "
        "folders are searched recursively) with a trained run. Each image is brought "
        "to 32×32 RGB (transparency onto white, shorter side to 32, centre crop), "
        "normalized as in training, and run with the run's test-time augmentation. The "
        "probabilities are calibrated by the temperature fitted on the validation split "
        "(--no-calibration: the model's own). A "
        "file that cannot be read is reported and skipped; the exit code is 1 if any "
        "failed.",
    )
    _add_run_argument(p)
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default: 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default: 256)")
    p.add_argument(
        "--resize",
        choices=["crop", "stretch"],
        default="crop",
        help="crop: shorter side to 32, centre square (default); stretch: both sides to 32",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    _add_calibration_argument(p)


def _add_calibration_argument(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--no-calibration",
        dest="calibrated",
        action="store_false",
        help="the model's own probabilities, without the temperature fitted on the validation "
        "split (calibration.json; used by default)",
    )


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "export",
        cmd_export,
        help="export a trained run to ONNX or TorchScript",
        description="Export a run's model, with its preprocessing, to one file. Input "
        "'images': uint8 N×32×32×3 RGB 0..255 (--input uint8, default) or float32 "
        "N×3×32×32 RGB 0..1 (--input float); outputs 'logits' and 'probabilities' "
        "(calibrated: the logits divided by the run's fitted temperature, unless "
        "--no-calibration); dynamic batch size; class names, preprocessing and the "
        "temperature in the file's metadata.",
    )
    _add_run_argument(p)
    p.add_argument(
        "--format", choices=["onnx", "torchscript"], default="onnx", help="default: onnx"
    )
    p.add_argument(
        "--input",
        dest="input_kind",
        choices=["uint8", "float"],
        default="uint8",
        help="uint8: N×32×32×3 pixels 0..255 (default); float: N×3×32×32 in 0..1",
    )
    p.add_argument(
        "--out", type=Path, help="file to write (default: RUN/model.onnx or RUN/model.pt)"
    )
    _add_calibration_argument(p)


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "serve",
        cmd_serve,
        help="a web page and an HTTP API for trained runs (needs cifarlab[serve])",
        description="Serve trained runs: a page at / (drop, pick or paste images; top-k "
        "bars; the 32×32 image the model saw), the API at /v1/predict, /v1/models and "
        "/healthz, described at /docs and /openapi.json. The same decoding and probabilities "
        "as `cifarlab predict`. Listens on 127.0.0.1 unless --host says otherwise. Needs "
        "pip install 'cifarlab[serve]'.",
    )
    p.add_argument(
        "runs",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="run folders (runs/NAME); a request picks one by NAME (default: the first)",
    )
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "last"],
        help="best on validation (default) or last",
    )
    _serve_network_options(p.add_argument_group("network"))
    _serve_request_options(p.add_argument_group("requests"))
    _serve_client_options(p.add_argument_group("clients (SECURITY.md: what each bounds)"))
    _serve_speed_options(p.add_argument_group("speed"))


# `serve`'s options, one function per group of its --help.


def _serve_network_options(g: argparse._ArgumentGroup) -> None:
    from cifarlab.serve.settings import TOKEN_ENV  # lazy start: no FastAPI, no torch

    g.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every network)",
    )
    g.add_argument("--port", type=int, default=8000, help="default: 8000 (0: any free port)")
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, each with its own copy of the models (default: 1)",
    )
    g.add_argument(
        "--token",
        help=f"API calls need 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV} if set)",
    )
    g.add_argument("--access-log", action="store_true", help="log every request")


def _serve_request_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--max-upload-mb",
        type=float,
        default=10.0,
        help="largest request body, refused while it streams (default: 10)",
    )
    g.add_argument(
        "--max-files", type=int, default=128, help="most images in one request (default: 128)"
    )
    g.add_argument(
        "--max-pending-mb",
        type=float,
        default=1024.0,
        help="most memory held for requests at once, all clients together: bodies from their "
        "first byte until decoded, and each image's decoding by its decoded size; past it a "
        "request gets 503 (default: 1024)",
    )
    g.add_argument(
        "--max-request-megapixels",
        type=float,
        default=64.0,
        help="most pixels of all the images of one request together, read from their headers "
        "before any is decoded (default: 64)",
    )
    g.add_argument(
        "--uncertain-below",
        type=float,
        default=0.5,
        help="a top-1 probability under this is marked uncertain (default: 0.5)",
    )


def _serve_client_options(g: argparse._ArgumentGroup) -> None:
    for flag, kind, default, text in (
        ("--max-request-line-kb", float, 8.0, "longest request line (414 past it)"),
        ("--max-header-kb", float, 32.0, "largest request head, line and headers (431)"),
        ("--max-headers", int, 100, "most header fields in one request (431)"),
        ("--header-timeout-s", float, 10.0, "time for a request's head to arrive (408)"),
        ("--body-timeout-s", float, 60.0, "time for a request's body to arrive (408)"),
        ("--idle-timeout-s", float, 5.0, "time a connection may wait without a request"),
        (
            "--max-connections",
            int,
            512,
            "open connections of each worker; past it the longest idle one is closed, or "
            "the new one gets 503",
        ),
        ("--max-connections-per-client", int, 64, "the same, per client address"),
        (
            "--grace-s",
            float,
            10.0,
            "on Ctrl-C or SIGTERM, time for requests in flight to finish (then 503)",
        ),
    ):
        unit = "KB" if flag.endswith("-kb") else "S" if flag.endswith("-s") else "N"
        g.add_argument(
            flag, type=kind, default=default, metavar=unit, help=f"{text} (default: {default:g})"
        )


def _serve_speed_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="auto (default): ONNX Runtime if installed, exact and faster here, else PyTorch",
    )
    g.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        help="how long a request waits for others to share a batch (default: 2)",
    )
    g.add_argument(
        "--threads",
        type=int,
        help="threads of each worker's model (default: the cores divided among the workers)",
    )
    g.add_argument(
        "--max-batch", type=int, default=64, help="most images per model batch (default: 64)"
    )
    g.add_argument("--no-batching", action="store_true", help="run every request alone")
    _add_tta_argument(g, "each run's own, as cifarlab predict")
    _add_calibration_argument(g)


def _compare_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "compare",
        cmd_compare,
        help="one side-by-side report of several evaluated runs or groups of seeds",
        description="Compare evaluated runs and groups of runs (cifarlab train --seeds): "
        "accuracy, macro F1, log-loss, ECE, parameters, training time, per-class F1. For a "
        "group: mean ± sd and the 95% CI of each, every run's numbers; for each pair the "
        "difference with its 95% CI, the test (Welch's t-test, or a bootstrap), whether it "
        "stands out from seed noise and about how many runs per side would show it.",
    )
    p.add_argument("runs", type=Path, nargs="+", help="run or group folders (each evaluated first)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument(
        "--stats-test",
        default="auto",
        choices=["auto", "welch", "bootstrap"],
        help="the test of a difference between groups (default auto: Welch's t-test; a "
        "bootstrap when each side has ≥ 15 runs and one is far from normal)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/compare.html"),
        help="HTML file to write (default: runs/compare.html)",
    )


def _robustness_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "robustness",
        cmd_robustness,
        help="accuracy on CIFAR-10-C-style corrupted test images (15 corruptions × 5 severities)",
        description="Evaluate a trained run on corrupted copies of its test split, made as "
        "CIFAR-10-C was (Hendrycks & Dietterich, ICLR 2019): 15 corruptions (noise, blur, "
        "weather, digital) at 5 severities. The corrupted sets are generated once and cached "
        "(about 2.3 GB for the whole test split). Prints the accuracy per corruption and "
        "severity, the means per corruption and family, and the mean corruption error beside "
        "the published ones; on the whole test split writes robustness.json and its figures "
        "into the run folder (a subset or the val split only with --out).",
    )
    _add_run_argument(p)
    p.add_argument(
        "--corruptions",
        default="all",
        metavar="all|NAME,...",
        help="all (default) or a comma-separated list, e.g. gaussian_noise,fog",
    )
    p.add_argument(
        "--severities",
        default="1-5",
        metavar="LEVELS",
        help="levels 1..5 as 1-5 (default), 1,3,5 or 2",
    )
    p.add_argument(
        "--tta",
        type=int,
        nargs="?",
        const=True,
        choices=[0, 1, 2],
        metavar="LEVEL",
        help="test-time augmentation: --tta alone uses the run's own level; or 0 none, "
        "1 mirror, 2 mirror + 1-px shifts (default: 0, as the published numbers)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="test (default), or val to compare training options without touching test",
    )
    p.add_argument(
        "--images",
        type=int,
        metavar="N",
        help="only N images of the split, class-stratified (a quick look: written only with --out)",
    )
    p.add_argument("--seed", type=int, default=0, help="the corruptions' random draws (default: 0)")
    p.add_argument("--root", type=Path, help="data folder, if not the one the run used")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder to write robustness.json and its figures into (default: the run folder, "
        "for the whole test split only)",
    )
    p.add_argument("--no-examples", action="store_true", help="skip the example-images figure")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "sweep",
        cmd_sweep,
        help="search training settings with Optuna (extra cifarlab[sweep])",
        description="Search training settings: SPACE.toml fixes some settings and gives "
        "ranges or choices for others ([space.FIELD] tables; see the README). Each trial "
        "trains into OUT/trial-NNN and is scored by its best validation accuracy (the test "
        "split is never evaluated); Optuna's TPE sampler picks the settings, a median pruner "
        "stops trials that fall behind. Writes the table of trials, trials.csv, sweep.html "
        "and best.toml (cifarlab train --config OUT/best.toml). Ctrl-C, then --resume OUT, "
        "loses nothing; --storage postgresql://... and --join let many machines share a sweep.",
    )
    p.add_argument("space", nargs="?", type=Path, help="the search space (a TOML file)")
    g = p.add_argument_group("the sweep")
    g.add_argument(
        "--trials", type=int, metavar="N", help="trials in all (with --resume: a new total)"
    )
    g.add_argument(
        "--epochs", type=int, metavar="E", help="each trial's epochs (default: its recipe's)"
    )
    g.add_argument(
        "--budget-per-trial",
        metavar="TIME",
        help="each trial trains for this long instead (90s, 5m: its steps fitted to the time)",
    )
    g.add_argument(
        "--train-size", type=int, metavar="N", help="train every trial on N training images"
    )
    g.add_argument(
        "--val-size",
        type=int,
        metavar="N",
        help="validation images every trial is scored on (default: 5000)",
    )
    g.add_argument(
        "--seed", type=int, metavar="S", help="every trial's seed, and the sampler's (default: 0)"
    )
    g.add_argument(
        "--no-pruning",
        dest="pruning",
        action="store_false",
        default=None,
        help="run every trial to its end",
    )
    g.add_argument(
        "--out",
        type=Path,
        help="the sweep folder (default: sweeps/SPACE-TIME; --join: sweeps/STUDY)",
    )
    g.add_argument(
        "--storage",
        metavar="URL",
        help="the study's database (default: OUT/study.db, SQLite): postgresql://USER@HOST/DB "
        "shares it with workers on other machines (--join)",
    )
    g.add_argument("--study", metavar="NAME", help="the study's name (default: OUT's name)")
    g.add_argument(
        "--resume", type=Path, metavar="OUT", help="go on with the sweep in OUT (after Ctrl-C)"
    )
    g.add_argument(
        "--join",
        metavar="URL",
        help="work on the study --study in the database URL, beside other workers",
    )
    m = p.add_argument_group("this machine")
    m.add_argument(
        "--root", type=Path, metavar="DIR", help="the data folder (default: $CIFARLAB_DATA)"
    )
    m.add_argument("--threads", type=int, metavar="N", help="CPU threads per trial")
    m.add_argument("--device", metavar="D", help="auto, cpu, cuda or mps (default: auto)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")


COMMANDS = (
    _download_parser,
    _data_parser,
    _models_parser,
    _recipes_parser,
    _doctor_parser,
    _train_parser,
    _evaluate_parser,
    _predict_parser,
    _export_parser,
    _compare_parser,
    _serve_parser,
    _robustness_parser,
    _sweep_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``cifarlab`` parser: one small function per command above."""
    from cifarlab import __version__

    parser = _Parser(
        prog="cifarlab", description="Train, evaluate and use CIFAR-10/100 image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


# --------------------------------------------------------------------------- commands


def cmd_download(args: argparse.Namespace) -> int:
    from cifarlab.data.dataset import data_root
    from cifarlab.data.download import download_dataset

    if args.url is not None:
        from cifarlab.data.download import check_url

        check_url(args.url, "--url")
    root, _ = data_root(args.root)
    if root.exists() and not root.is_dir():
        raise CifarlabError(f"--root {root} is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CifarlabError(f"cannot create the data folder {root}: {e.strerror or e}") from None
    folder = download_dataset(args.dataset, root, args.format, base_url=args.url)
    print(f"{args.dataset} ready in {folder}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from cifarlab.data.dataset import load_dataset

    ds = load_dataset(
        args.dataset, args.root, val_size=args.val_size, labels=args.labels, download=args.download
    )
    meta = ds.meta
    where = {"--root": "--root", "CIFARLAB_DATA": "$CIFARLAB_DATA", "cache": "user cache"}
    kind = f"{ds.labels_kind} labels, " if ds.info.num_coarse_classes else ""
    print(f"dataset   {ds.info.title} ({kind}{ds.num_classes} classes)")
    print(
        f"source    {meta['source']} ({meta['kind']} layout, found via {where[meta['root_from']]})"
    )
    print(f"checksum  {meta['checksum']['status']}: {meta['checksum']['detail']}")
    print(f"loaded    {'from the parsed cache' if meta['from_cache'] else 'parsed (now cached)'}")
    print()
    counts = {
        s: ds.split(s).labels.bincount(minlength=ds.num_classes).tolist()
        for s in ("train", "val", "test")
    }
    width = max(12, *(len(n) for n in ds.class_names))
    print(f"{'class':<{width}} {'train':>7} {'val':>7} {'test':>7}")
    for c, name in enumerate(ds.class_names):
        row = " ".join(f"{counts[s][c]:>7}" for s in counts)
        print(f"{name:<{width}} {row}")
    print(f"{'total':<{width}} " + " ".join(f"{sum(counts[s]):>7}" for s in counts))
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from cifarlab.data.dataset import load_dataset
    from cifarlab.report.samples import check_grid, save_sample_grid

    check_grid(args.per_class, args.seed)
    if args.out.suffix.lower() != ".png":
        raise CifarlabError(f"--out must name a .png file, got {args.out}")
    ds = load_dataset(
        args.dataset, args.root, val_size=args.val_size, labels=args.labels, download=args.download
    )
    check_grid(args.per_class, args.seed, len(ds.class_names))
    split = ds.split(args.split)
    if len(split) == 0:
        raise CifarlabError(f"the {args.split} split is empty (is --val-size 0?)")
    title = f"{ds.info.title} {args.split}: {args.per_class} per class"
    out = save_sample_grid(
        split.images,
        split.labels,
        ds.class_names,
        args.out,
        per_class=args.per_class,
        seed=args.seed,
        title=title,
    )
    print(f"wrote {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cifarlab.models import count_parameters, create_model, get_entry, model_names
    from cifarlab.models.registry import check_num_classes

    num_classes = check_num_classes(args.num_classes, "--num-classes")
    print(f"{'model':<12} {'parameters':>12}  {'default recipe':<15} description")
    for name in model_names():
        n = count_parameters(create_model(name, num_classes))
        entry = get_entry(name)
        print(f"{name:<12} {n:>12,}  {entry.recipe or 'original':<15} {entry.description}")
    print(
        "\nyour own model: cifarlab train --model package.module:callable (a callable taking "
        "num_classes); see the README"
    )
    return 0


# Options of `train` that are configuration fields but not changes to the recipe: --recipe
# names the recipe the changes apply to, --budget is a duration (for train()).
_APART = ("recipe", "budget")


def _train_fields(p: argparse.ArgumentParser, fields: Iterable[str]) -> list[str]:
    """The options of the train parser ``p`` that set the configuration field of the same
    name, group by group: every option whose dest is one of ``fields`` (TrainConfig's fields,
    and translate, flip, cutout and corrupt: that key of ``augment``), but those passed apart."""
    names = set(fields) - set(_APART)
    return [a.dest for g in p._action_groups for a in g._group_actions if a.dest in names]


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line: each option given, then each --set."""
    from cifarlab.train.config import AUGMENT_KEYS, FIELDS, parse_setting

    fields = _train_fields(args.parser, (*FIELDS, *AUGMENT_KEYS))
    given = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    if "root" in given:
        given["root"] = str(given["root"])
    for text in args.settings:
        key, value = parse_setting(text)
        given[key] = value
    return given


def train_config_from_args(args: argparse.Namespace):  # noqa: ANN201
    """The TrainConfig that `cifarlab train` options describe: the recipe (--recipe, or --set
    recipe=; else the model's default recipe; else --config's), then the --config file's
    settings, then every option given, then every --set."""
    from cifarlab.train.config import make_config, read_config_file

    changes = _changes(args)
    if args.config is None:
        return make_config(args.recipe, **changes)
    found = read_config_file(args.config)
    cfg = found.config(args.recipe, **changes)
    for note in found.notes:
        print(f"{args.config}: {note}")
    if found.recorded:
        changed = []
        if found.notes:
            changed.append("its budget is not re-planned")
        if changes:
            changed.append(f"{', '.join(sorted(changes))} set here")
        what = f"{' and '.join(changed)}: the weights will differ" if changed else None
        cfg = _as_recorded(args, found.records, cfg, what)
    return cfg


def _as_recorded(
    args: argparse.Namespace,
    records: dict[str, Any],
    cfg: Any,  # noqa: ANN401
    changed: str | None,
) -> Any:  # noqa: ANN401
    """A run's config.json trained again: say how this machine and these versions differ from
    the recording (and what ``changed`` from it here); on the same machine, ``precision
    auto`` takes the precision the run used (the probe's choice could differ between two
    timings)."""
    import dataclasses

    from cifarlab.train import device as devices
    from cifarlab.train.probe import describe_machine
    from cifarlab.train.provenance import recorded_difference, same_processor

    device = devices.resolve_device(cfg.device)
    recorded = records.get("provenance")
    if isinstance(recorded, dict):
        print(f"{args.config}: {recorded_difference(recorded, device, changed)}")
    used = records.get("precision_used")
    same_machine = same_processor(records.get("machine"), describe_machine())
    if cfg.precision == "auto" and used in ("fp32", "bf16") and same_machine:
        if str(records.get("device_used", "cpu")).split(":")[0] == device.type:
            cfg = dataclasses.replace(cfg, precision=used)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from cifarlab.train import train
    from cifarlab.train.config import budget_config
    from cifarlab.train.device import rank

    if args.download:
        from cifarlab.data.dataset import load_dataset

        load_dataset(args.dataset or "cifar10", args.root, download=True, val_size=0)
    progress = not args.no_progress
    if args.no_tensorboard:  # for this command and the processes it starts (a group's seeds)
        import os

        from cifarlab.train.tensorboard import ENV

        os.environ[ENV] = "0"
    if args.config is not None and (args.resume is not None or args.budget is not None):
        raise SettingError(
            "config", f"cannot be combined with {'--resume' if args.resume else '--budget'}"
        )
    if args.parallel is not None and args.seeds is None and not _is_group(args.resume):
        raise SettingError("parallel", "needs --seeds (or --resume of a group)")
    if args.seeds is not None or _is_group(args.resume):
        return _train_seeds(args, progress)
    if args.resume is not None:  # train() refuses a budget here: a resumed run keeps its own
        given = _changes(args)
        for key in ("recipe", "out"):
            if getattr(args, key) is not None:
                given[key] = getattr(args, key)
        run = train(resume=args.resume, changes=given, progress=progress, budget=args.budget)
    elif args.budget is not None:
        given = _changes(args)
        model = given.pop("model", None)
        if args.recipe is not None:
            given["recipe"] = args.recipe
        run = train(
            budget_config(given),
            out=args.out,
            progress=progress,
            budget=args.budget,
            budget_model=model,
        )
    else:
        run = train(train_config_from_args(args), out=args.out, progress=progress)
    if rank() == 0:
        print(f"run saved in {run}  (next: cifarlab evaluate {run})")
    return 0


def _is_group(path: Path | None) -> bool:
    from cifarlab.runs import GroupFolder

    return path is not None and GroupFolder.is_group(path)


def _train_seeds(args: argparse.Namespace, progress: bool) -> int:
    """`train --seeds` (a new group) and `train --resume GROUP`."""
    from cifarlab.train.group import train_group

    if args.budget is not None:
        raise SettingError(
            "seeds",
            "cannot be combined with --budget: a budget's plan follows the machine's pace "
            "of the moment, so the seeds would not share one set-up; train the set-up a budget "
            "run chose (cifarlab train --config RUN/config.json --seeds ...)",
        )
    if args.seed is not None and args.seeds is not None:
        raise SettingError("seed", "and --seeds: give one of them")
    parallel = args.parallel if args.parallel is not None else 1
    if args.resume is not None:
        given = _changes(args)
        for key in ("recipe", "out"):
            if getattr(args, key) is not None:
                given[key] = getattr(args, key)
        group = train_group(
            resume=args.resume, seeds=args.seeds, changes=given, parallel=parallel,
            progress=progress,
        )  # fmt: skip
    else:
        cfg = train_config_from_args(args)
        group = train_group(cfg, args.seeds, out=args.out, parallel=parallel, progress=progress)
    print(f"group saved in {group}  (next: cifarlab evaluate {group})")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    import json

    from cifarlab.train.recipe_data import VERSIONS, measured_accuracy, recipe_data
    from cifarlab.train.recipes import RECIPES, get_recipe

    if args.show:
        recipe = get_recipe(args.show)
        print(f"{recipe.name}: {recipe.description}")
        print(json.dumps(recipe.config.to_dict(), indent=2))
        return 0
    w = max(len(name) for name in RECIPES)
    print(
        f"{'recipe':<{w}} {'model':<11} {'epochs':>6}  {'test acc (TTA)':<16} {'CPU time':>9}  "
        "description"
    )
    older: set[int] = set()  # versions older than their recipe's that a figure was measured with
    # Each figure holds on the CPU that measured it: name the machine recipe by recipe.
    by_machine: dict[str, list[str]] = {}
    for r in RECIPES.values():
        m = r.measured
        if m:
            by_machine.setdefault(m["machine"], []).append(r.name)
        acc = measured_accuracy(m) if m else "not measured"
        measured_with = m.get("recipe_version", 1) if m else None
        if measured_with is not None and measured_with < recipe_data(r.name).version:
            acc = f"{acc} v{measured_with}"
            older.add(measured_with)
        secs = f"{m['train_seconds']:.0f} s" if m else "–"
        print(
            f"{r.name:<{w}} {r.config.model:<11} {r.config.epochs:>6}  {acc:<16} {secs:>9}  "
            f"{r.description}"
        )
    for v in sorted(older):
        later = "; ".join(f"version {n}: {VERSIONS[n]}" for n in sorted(VERSIONS) if n > v)
        print(
            f"\nv{v}: measured with version {v} of the recipe, before {later}; "
            "not measured again yet"
        )
    print("\nmeasured (CIFAR-10, JPEG copy; details and commands in BENCHMARKS.md):")
    for machine, names in by_machine.items():
        print(f"  {', '.join(names)}: on {machine}")
    print(
        "Times differ on other CPUs: `cifarlab doctor` estimates them here, and "
        "`cifarlab train --budget 5m` fits a run to a time."
    )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    from cifarlab.train.doctor import doctor

    if any(b < 1 for b in args.batch_sizes):
        raise CifarlabError("--batch-sizes must be ≥ 1")
    report = doctor(
        fresh=args.fresh,
        batch_sizes=tuple(args.batch_sizes),
        matmul=args.matmul,
        log=None if args.json else print,
    )
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cifarlab.evaluate.metrics import (
        classification_report_text,
        confusion_matrix_text,
        counts_table_text,
    )
    from cifarlab.evaluate.run import evaluate_run
    from cifarlab.runs import GroupFolder, RunFolder

    if GroupFolder.is_group(args.run):
        return _evaluate_group(args)
    m = evaluate_run(args.run, args.split, **_evaluation_options(args))
    top5 = f"   top-5 {m['top5_accuracy']:.4f}" if m.get("top5_accuracy") is not None else ""
    print(
        f"{args.run} on {args.split} ({m['num_samples']} images, {args.checkpoint} checkpoint, "
        f"epoch {m['checkpoint_epoch']})"
    )
    tta = (
        f"   (test-time augmentation level {m['tta']}; without it {m['accuracy_without_tta']:.4f})"
        if m.get("tta")
        else ""
    )
    print(f"accuracy {m['accuracy']:.4f}{top5}   log-loss {m['log_loss']:.4f}{tta}")
    print(_calibration_lines(m.get("calibration")) + "\n")
    print(classification_report_text(m))
    print(counts_table_text(m))
    print(confusion_matrix_text(m))
    print(f"wrote {RunFolder(args.run).eval_path(args.split)}")
    if "report" in m:
        print(f"report: {m['report']}")
    return 0


def _evaluation_options(args: argparse.Namespace) -> dict[str, Any]:
    """``cifarlab evaluate``'s options as evaluate_run's and evaluate_group's arguments."""
    return {
        "checkpoint": args.checkpoint,
        "root": args.root,
        "device": args.device,
        "tta": args.tta,
        "report": not args.no_report,
    }


def _evaluate_group(args: argparse.Namespace) -> int:
    """``cifarlab evaluate GROUP``: every run of the group in turn, a line each, then the
    group's summary (the runs' numbers, mean ± sd and 95% CI)."""
    from cifarlab.evaluate.run import evaluate_group
    from cifarlab.report.compare import ece_note, member_line, side_lines

    started: list[bool] = []

    def each(seed: int, folder: Any, m: dict) -> None:
        if not started:  # the group was read and its first run evaluated
            print(f"every run of {args.run} on {args.split} ({args.checkpoint} checkpoint):")
            started.append(True)
        print(member_line(f"{folder.name} (epoch {m['checkpoint_epoch']})", m), flush=True)

    # the runs share their data: its warning is said once (say_warning)
    side = evaluate_group(args.run, args.split, each=each, **_evaluation_options(args))
    print(f"\n{ece_note(side.members)}")
    print("\n".join(side_lines(side)))
    written = "eval_" + args.split + ".json" + ("" if args.no_report else " and a report")
    print(f"wrote {written} in each of the {side.n} runs of {args.run}")
    return 0


def _calibration_lines(c: dict | None) -> str:
    """evaluate's calibration summary: ECE, MCE, Brier and NLL before and after scaling."""
    if not c:
        return ""

    def row(label: str, x: dict) -> str:
        ece, mce = f"ECE {x['ece']:7.2%}", f"MCE {x['mce']:7.2%}"
        return f"  {label:<28} {ece}   {mce}   Brier {x['brier']:.4f}   NLL {x['nll']:.4f}"

    lines = ["calibration (15 equal-width bins):", row("as trained", c["before"])]
    if c.get("after") is not None:
        lines.append(row(f"temperature {c['temperature']:.3f}", c["after"]))
    else:
        lines.append(f"  {c['note']}")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from cifarlab.predict import check_options, load_run, shown

    check_options(top_k=args.top_k, batch_size=args.batch_size)
    run = load_run(args.run, args.checkpoint, device=args.device, calibrated=args.calibrated)
    print(f"{run.name}: {run.calibration_note}", file=sys.stderr)
    results = run.predict_files(args.paths, batch_size=args.batch_size, resize=args.resize)
    if not results:
        raise CifarlabError("no image files found in " + ", ".join(shown(p) for p in args.paths))
    k = min(args.top_k, len(run.class_names))
    if args.top_k > k:
        print(
            f"warning: --top-k {args.top_k} is more than the run's {k} classes; showing {k}",
            file=sys.stderr,
        )
    if args.json:
        # allow_nan=False: never NaN or Infinity (not JSON); predict_files has made a file
        # whose probabilities are not finite an error already
        print(json.dumps([r.to_dict(k) for r in results], indent=1, allow_nan=False))
    elif any(r.prediction is not None for r in results):
        names = {r.path: shown(r.path) for r in results}
        width = min(60, max(len(n) for n in names.values()))
        cell = max(len(shown(n)) for n in run.class_names) + 9
        print(f"{'file':<{width}}  " + "".join(f"{'top ' + str(i + 1):<{cell}}" for i in range(k)))
        for r in results:
            if r.prediction is not None:
                top = r.prediction.top_k(k)[0]
                cells = "".join(f"{f'{shown(c)} ({p:.1%})':<{cell}}" for c, p in top)
                print(f"{names[r.path]:<{width}}  {cells.rstrip()}")
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"error: {r.error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} files could not be predicted", file=sys.stderr)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from cifarlab.export import export_run, read_metadata

    out = export_run(
        args.run,
        args.format,
        args.out,
        checkpoint=args.checkpoint,
        input_kind=args.input_kind,
        calibrated=args.calibrated,
    )
    print(f"wrote {out}")
    print(read_metadata(out).get("calibration", ""))  # what its probabilities are
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cifarlab.files import check_output
    from cifarlab.report.compare import compare, comparison_lines
    from cifarlab.report.html import write_comparison

    # the page's file: a folder gets comparison.html inside; a device or a FIFO is refused
    # (never replaced) before any run is read
    check_output(args.out / "comparison.html" if args.out.is_dir() else args.out)
    comparison = compare(args.runs, args.split, args.stats_test)  # runs and groups
    out = write_comparison(args.out, comparison)
    print("\n".join(comparison_lines(comparison)))
    print(f"wrote {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # each option checked as its settings object is built (SettingError: named by its option)
    from cifarlab.serve.settings import Launch, Settings, require, token_from

    launch = Launch(
        host=args.host,
        port=args.port,
        workers=args.workers,
        backend=args.backend,
        checkpoint=args.checkpoint,
        tta=args.tta,
        calibrated=args.calibrated,
        access_log=args.access_log,
    )
    settings = Settings(
        max_upload_mb=args.max_upload_mb,
        max_files=args.max_files,
        token=token_from(args.token),
        batching=not args.no_batching,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        uncertain_below=args.uncertain_below,
        threads=args.threads,
        max_request_megapixels=args.max_request_megapixels,
        max_pending_mb=args.max_pending_mb,
        body_timeout_s=args.body_timeout_s,
        max_request_line_kb=args.max_request_line_kb,
        max_header_kb=args.max_header_kb,
        max_headers=args.max_headers,
        header_timeout_s=args.header_timeout_s,
        idle_timeout_s=args.idle_timeout_s,
        max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client,
        grace_s=args.grace_s,
    )
    require()  # before the runs are read: a missing extra is the first thing to say
    from cifarlab.serve.server import serve  # FastAPI, uvicorn, torch: once require() passed

    return serve(args.runs, settings, launch)


def cmd_robustness(args: argparse.Namespace) -> int:
    import json

    from cifarlab.robustness.evaluate import run_robustness

    result = run_robustness(
        args.run,
        corruptions=args.corruptions,  # names and levels are checked before anything is loaded
        severities=args.severities,
        tta=False if args.tta is None else args.tta,
        split=args.split,
        images=args.images,
        seed=args.seed,
        checkpoint=args.checkpoint,
        root=args.root,
        device=args.device,
        out=args.out,
        progress=not args.no_progress,
        examples=not args.no_examples,
    )
    if args.json:
        print(json.dumps(result, indent=1, allow_nan=False))
    else:
        print(_robustness_text(result, str(args.run)))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from cifarlab.sweep.study import run_sweep  # one line if Optuna is not installed

    result = run_sweep(
        args.space,
        trials=args.trials,
        out=args.out,
        epochs=args.epochs,
        budget_per_trial=args.budget_per_trial,
        train_size=args.train_size,
        val_size=args.val_size,
        seed=args.seed,
        storage=args.storage,
        study=args.study,
        resume=args.resume,
        join=args.join,
        root=args.root,
        threads=args.threads,
        device=args.device,
        pruning=args.pruning,
        progress=not args.no_progress,
        log=lambda line: print(line, flush=True),
    )
    print(f"\n{result.table}\n")
    for path in result.files:
        print(f"wrote {path}")
    if result.unfinished:
        print(f"{result.unfinished} trial(s) still to run in other workers")
    if result.best is None:
        raise CifarlabError("no trial of the sweep finished (see the table)")
    best = result.best
    print(
        f"best: trial {best['number']}, validation accuracy {100 * best['value']:.2f}% "
        f"(next: cifarlab train --config {result.folder / 'best.toml'})"
    )
    return 0


def _pct_cell(x: Any) -> str:
    return f"{100 * x:5.1f}" if isinstance(x, (int, float)) else "    –"


def _robustness_table(r: dict[str, Any]) -> list[str]:
    """robustness's table: accuracy (%) per corruption (grouped by family) and severity."""
    from cifarlab.report.plots import grouped

    per, levels = r["per_corruption"], r["severities"]
    width = max(20, *(len(n) + 2 for n in per))
    lines = [f"{'accuracy (%)':<{width}}" + "".join(f"{s:>7}" for s in levels) + "   mean"]
    lines.append(f"{'clean':<{width + 7 * len(levels)}}  {_pct_cell(r['clean_accuracy'])}")
    family = None
    for name in grouped(r):
        p = per[name]
        if p["family"] != family:
            family = p["family"]
            lines.append(family)
        cells = "".join(f"  {_pct_cell(p['accuracy_by_severity'][str(s)])}" for s in levels)
        lines.append(f"  {name:<{width - 2}}{cells}  {_pct_cell(p['mean_accuracy'])}")
    return lines


def _robustness_text(r: dict[str, Any], run: str) -> str:
    """robustness's result as printed: scope, table, family means, headline, notes, files."""
    from cifarlab.report.html import PUBLISHED_ERROR
    from cifarlab.report.plots import scope

    epoch = f", epoch {r['checkpoint_epoch']}" if r.get("checkpoint_epoch") is not None else ""
    tta = f"test-time augmentation {r['tta']}" if r.get("tta") else "no test-time augmentation"
    lines = [f"{run}: {scope(r)}, {r['checkpoint']} checkpoint{epoch}, {tta}, seed {r['seed']}"]
    if r.get("trained_with"):
        lines.append(f"trained with {r['trained_with']}")
    lines += ["", *_robustness_table(r)]
    means = "   ".join(f"{f} {100 * v['mean_accuracy']:.1f}%" for f, v in r["per_family"].items())
    lines += ["", f"family means: {means}", f"worst: {', '.join(r['worst'])}"]
    drop = r.get("relative_drop")
    drop_text = f"{drop:.1%}" if isinstance(drop, (int, float)) else "–"
    lines.append(
        f"clean {r['clean_accuracy']:.1%}   mean corruption accuracy "
        f"{r['mean_corruption_accuracy']:.1%}   relative drop {drop_text}   mean corruption "
        f"error {r['mean_corruption_error']:.1%} (published, standard training: WRN-40-2 "
        f"{PUBLISHED_ERROR['WRN-40-2']:.1%})"
    )
    if not r.get("comparable"):
        lines.append(
            "not the published protocol (all 15 corruptions × 5 severities on the whole test "
            "split, no test-time augmentation): compare with care"
        )
    per = r["per_corruption"]
    notes = [(n, per[n]["note"]) for n in r["corruptions"] if per[n].get("note")]
    if notes:
        lines += ["", "where these corruptions differ from CIFAR-10-C:"]
        lines += [f"  {n}: {t}" for n, t in notes]
    t, c = r["timing"], r["cache"]
    gen = sum(t[n]["generate_s"] for n in r["corruptions"])
    ev = sum(t[n]["evaluate_s"] for n in r["corruptions"]) + t.get("clean_evaluate_s", 0.0)
    lines += [
        "",
        f"{t['total_s']:.1f} s: corrupting {gen:.1f} s ({c['generated']} sets made, "
        f"{c['loaded']} from the cache {c['folder']}), evaluating {ev:.1f} s",
    ]
    if r.get("written"):
        lines.append("wrote " + ", ".join(r["written"]))
    else:
        lines.append(
            "nothing written (a subset or the val split is not the run's robustness record): "
            "--out DIR keeps it"
        )
    return "\n".join(lines)


DEBUG_ENV = "CIFARLAB_DEBUG"  # set to 1: an unexpected error shows its traceback


def _say(line: str) -> None:
    """One line on stderr, whatever state the streams are in."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed or gone: nothing left to tell
        pass


def _printable_streams() -> None:
    """stdout and stderr print any text: a character the terminal's encoding cannot show
    (a file name that is not UTF-8, kept by Python as a lone surrogate) as an escape, never
    an error (PYTHONIOENCODING=utf-8:strict included)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (OSError, ValueError):
                pass


def _debug() -> bool:
    import os

    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


class _CtrlC:
    """main()'s SIGINT handler: Ctrl-C raises KeyboardInterrupt as Python's own handler does,
    and is remembered (``seen``). While ``deferred`` (start-up: importing torch, whose C++
    code aborts the process, or leaves a half-imported module behind, when interrupted in the
    middle) the first Ctrl-C is only noted and raised when the deferral ends; a second one
    raises at once."""

    def __init__(self) -> None:
        self.seen = False
        self.deferred = False

    def __call__(self, signum: int, frame: object) -> None:
        again = self.seen
        self.seen = True
        if not self.deferred or again:
            raise KeyboardInterrupt

    @contextmanager
    def defer(self) -> Iterator[None]:
        self.deferred = True
        try:
            yield
        finally:
            self.deferred = False
        if self.seen:
            raise KeyboardInterrupt


def _interrupted() -> int:
    import signal

    try:  # a second Ctrl-C while we say so must not print a traceback either
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # not the main thread
        pass
    _say("interrupted")
    # CPython marks a KeyboardInterrupt raised inside exec() of a string (dataclasses do that
    # while torch imports) as "unhandled", even once caught, and then ends the process by
    # SIGINT, not with our exit code; running a string clears the mark.
    exec("")  # noqa: S102
    return 130


def _before_torch(argv: Sequence[str]) -> None:
    """What must be set before torch is imported. ``serve``: OpenMP threads sleep as soon as
    a parallel region ends (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning for the next
    one: a server's cores are shared with the event loop and the decoders (spinning threads
    halved the images/s of 64-image requests on 2 cores; libgomp's default spins briefly and
    cost less), while a batch itself runs as fast (BENCHMARKS.md). A value the user set wins."""
    import os

    command = next((a for a in argv if not a.startswith("-")), None)
    if command == "serve":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Whatever happens, the user gets the command's output, or one
    ``error:`` line and exit code 1 (2: a command line that cannot be parsed; 130: Ctrl-C,
    at any moment, start-up included), never a traceback (unless $CIFARLAB_DEBUG=1)."""
    import signal

    ctrl_c = _CtrlC()
    previous = original = None
    try:
        original = signal.getsignal(signal.SIGINT)
        if original is signal.default_int_handler:  # not if ignored
            previous = signal.signal(signal.SIGINT, ctrl_c)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        _before_torch(sys.argv[1:] if argv is None else argv)
        return _main(argv, ctrl_c)
    except KeyboardInterrupt:  # outside training (which saves and raises its own error)
        return _interrupted()
    except MemoryError as e:
        if _debug():
            raise
        detail = one_line(e, None)
        _say(
            f"error: ran out of memory{f' ({detail})' if detail else ''}; free some memory, "
            "or give the command less to do (a smaller --batch-size, fewer files)"
        )
        return 1
    except RecursionError as e:
        if _debug():
            raise
        _say(f"error: ran out of stack: something is nested too deeply ({one_line(e, None)})")
        return 1
    except Exception as e:  # noqa: BLE001 - the last resort: one line, not a traceback
        if _debug():
            raise
        if ctrl_c.seen:  # what a Ctrl-C left behind (a module it stopped half-imported)
            return _interrupted()
        detail = one_line(e, None)
        what = f"{type(e).__name__}: {detail}" if detail else type(e).__name__
        _say(
            f"error: internal error ({what}); please report it — set {DEBUG_ENV}=1 for the "
            "traceback"
        )
        return 1
    finally:
        if previous is not None and argv is None:
            # the program's own run, about to exit: a Ctrl-C now (while Python shuts down its
            # threads) would only print a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        elif argv is not None and original is not None:  # called from Python: put it back
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, original)


def _main(argv: Sequence[str] | None, ctrl_c: _CtrlC) -> int:
    with ctrl_c.defer():  # start-up: parse, import torch
        _printable_streams()
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the command that got them (argparse would blame the top level)
            getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        warnings.showwarning = say_warning
        from cifarlab.train.device import rank

        if rank() > 0:
            warnings.simplefilter("ignore")  # rank 0 has said it already
        from cifarlab.train.engine import TrainingInterrupted

    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as e:
        if rank() == 0:  # every rank stops at the same step; one says so
            print(str(e), file=sys.stderr)
        return 130
    except SettingError as e:  # name the option the user typed, not the library's parameter
        print(f"error: {one_line(e.render(_option_namer(args)), None)}", file=sys.stderr)
        return 1
    except CifarlabError as e:
        print(f"error: {one_line(e, None)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `cifarlab models | head`: the reader left; so do we, quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        print(f"error: {one_line(e, None)}", file=sys.stderr)
        return 1
