"""The ``cifarlab`` command line: parse options, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from cifarlab.errors import CifarlabError, SettingError, one_line
from cifarlab.robustness.cli import add_parser as _robustness_parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {one_line(message, None)}", file=sys.stderr)


def _add_data_options(p: argparse.ArgumentParser, *, labels: bool = True) -> None:
    p.add_argument(
        "--dataset",
        default="cifar10",
        choices=["cifar10", "cifar100"],
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
    g = p.add_argument_group("what to train")
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
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset", choices=["cifar10", "cifar100"], help="which dataset (default: cifar10)"
    )
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
        "--split val) into the run folder.",
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
    from cifarlab.serve import TOKEN_ENV  # no FastAPI, no torch: the names only

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
    g = p.add_argument_group("network")
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
    g = p.add_argument_group("requests")
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
        default=512.0,
        help="most bytes of request bodies held at once, all clients together; past it a "
        "request gets 503 (default: 512)",
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
    g = p.add_argument_group("speed")
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
        help="one side-by-side report of several evaluated runs",
        description="Compare evaluated runs: accuracy, macro F1, parameters, training "
        "time, per-class F1.",
    )
    p.add_argument("runs", type=Path, nargs="+", help="run folders (each evaluated first)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/compare.html"),
        help="HTML file to write (default: runs/compare.html)",
    )


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


def _load(args: argparse.Namespace):  # noqa: ANN202
    from cifarlab.data.dataset import load_dataset

    if args.val_size < 0:
        raise CifarlabError(f"--val-size must be at least 0, got {args.val_size}")
    return load_dataset(
        args.dataset, args.root, val_size=args.val_size, labels=args.labels, download=args.download
    )


def cmd_data_info(args: argparse.Namespace) -> int:
    ds = _load(args)
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


# The sample grid's limits: beyond them the PNG is too large to look at (CIFAR-100 at 10 per
# class is already 100 rows, 15,500 pixels tall) and slow to draw.
MAX_PER_CLASS, MAX_THUMBNAILS = 50, 1000
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed and numpy take


def cmd_data_show(args: argparse.Namespace) -> int:
    from cifarlab.report.samples import save_sample_grid

    if args.per_class < 1:
        raise CifarlabError(f"--per-class must be at least 1, got {args.per_class}")
    if not 0 <= args.seed <= MAX_SEED:
        raise CifarlabError(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")
    if args.out.suffix.lower() != ".png":
        raise CifarlabError(f"--out must name a .png file, got {args.out}")
    ds = _load(args)
    most = max(1, min(MAX_PER_CLASS, MAX_THUMBNAILS // len(ds.class_names)))
    if args.per_class > most:
        raise CifarlabError(
            f"--per-class must be at most {most} for {len(ds.class_names)} classes (a bigger "
            f"grid is too large to look at), got {args.per_class}"
        )
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


# Options of `train` that set the TrainConfig field of the same name (translate, flip and
# cutout: that key of `augment`).
_TRAIN_FIELDS = (
    "model",
    "dataset",
    "labels",
    "root",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "label_smoothing",
    "normalize",
    "schedule",
    "precision",
    "channels_last",
    "compile",
    "tta",
    "threads",
    "seed",
    "device",
    "train_size",
    "val_size",
    "translate",
    "flip",
    "cutout",
    "corrupt",
)


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line: each option given, then each --set."""
    from cifarlab.train.config import parse_setting

    given = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
    if "root" in given:
        given["root"] = str(given["root"])
    for text in args.settings:
        key, value = parse_setting(text)
        given[key] = value
    return given


def train_config_from_args(args: argparse.Namespace):  # noqa: ANN201
    """The TrainConfig that `cifarlab train` options describe: the recipe (or the model's
    default recipe), then every option given, then every --set."""
    from cifarlab.train.config import make_config

    changes = _changes(args)
    if "recipe" in changes:  # --set recipe=NAME: as --recipe NAME
        if args.recipe is not None:
            raise SettingError("recipe", "is given twice (--recipe and --set recipe=)")
        recipe = changes.pop("recipe")
        if not isinstance(recipe, str) or not recipe:
            raise SettingError("recipe", f"must be a recipe's name, got {recipe!r}")
        return make_config(recipe, **changes)
    return make_config(args.recipe, **changes)


def cmd_train(args: argparse.Namespace) -> int:
    from cifarlab.train import train
    from cifarlab.train.config import budget_config
    from cifarlab.train.device import rank

    if args.download:
        from cifarlab.data.dataset import load_dataset

        load_dataset(args.dataset or "cifar10", args.root, download=True, val_size=0)
    progress = not args.no_progress
    if args.resume is not None:
        if args.budget is not None:
            raise SettingError("budget", "starts a new run; a resumed run keeps its own budget")
        given = _changes(args)
        for key in ("recipe", "out"):
            if getattr(args, key) is not None:
                given[key] = getattr(args, key)
        run = train(resume=args.resume, changes=given, progress=progress)
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


def cmd_recipes(args: argparse.Namespace) -> int:
    import json

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
    for r in RECIPES.values():
        m = r.measured
        acc = f"{m['test_acc']:.3f} ± {m['test_acc_std']:.3f}" if m else "not measured"
        secs = f"{m['train_seconds']:.0f} s" if m else "–"
        print(
            f"{r.name:<{w}} {r.config.model:<11} {r.config.epochs:>6}  {acc:<16} {secs:>9}  "
            f"{r.description}"
        )
    machines = sorted({r.measured["machine"] for r in RECIPES.values() if r.measured})
    print(
        f"\nmeasured on {'; '.join(machines)}; CIFAR-10 (JPEG copy); details and commands in "
        "BENCHMARKS.md. Times differ on other CPUs: `cifarlab doctor` estimates them here, "
        "and `cifarlab train --budget 5m` fits a run to a time."
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
    from cifarlab.runs import RunFolder

    m = evaluate_run(
        args.run,
        args.split,
        checkpoint=args.checkpoint,
        root=args.root,
        device=args.device,
        tta=args.tta,
        report=not args.no_report,
    )
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


def _calibration_lines(c: dict | None) -> str:
    """evaluate's calibration summary: ECE, MCE, Brier and NLL before and after scaling."""
    if not c:
        return ""

    def row(label: str, x: dict) -> str:
        return (f"  {label:<28} ECE {x['ece']:7.2%}   MCE {x['mce']:7.2%}   "
                f"Brier {x['brier']:.4f}   NLL {x['nll']:.4f}")  # fmt: skip

    lines = ["calibration (15 equal-width bins):", row("as trained", c["before"])]
    if c.get("after") is not None:
        lines.append(row(f"temperature {c['temperature']:.3f}", c["after"]))
    else:
        lines.append(f"  {c['note']}")
    return "\n".join(lines)


MAX_PREDICT_BATCH = 65536  # images per forward pass; more only costs memory


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    if args.top_k < 1:
        raise CifarlabError(f"--top-k must be at least 1, got {args.top_k}")
    if not 1 <= args.batch_size <= MAX_PREDICT_BATCH:
        raise CifarlabError(
            f"--batch-size must be between 1 and {MAX_PREDICT_BATCH}, got {args.batch_size}"
        )
    from cifarlab.predict import load_run, shown

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
    from cifarlab.export import export_run

    out = export_run(args.run, args.format, args.out, checkpoint=args.checkpoint,
                     input_kind=args.input_kind, calibrated=args.calibrated)  # fmt: skip
    print(f"wrote {out}")
    print(_exported_note(out))
    return 0


def _exported_note(out: Path) -> str:
    """What the exported file's probabilities are (its metadata's calibration line)."""
    from cifarlab.export import read_metadata

    return read_metadata(out).get("calibration", "")


def cmd_compare(args: argparse.Namespace) -> int:
    from cifarlab.files import check_output
    from cifarlab.report.html import write_comparison
    from cifarlab.runs import RunFolder, read_run

    # the page's file: a folder gets comparison.html inside; a device or a FIFO is refused
    # (never replaced) before any run is read
    check_output(args.out / "comparison.html" if args.out.is_dir() else args.out)
    runs = []
    for run_dir in args.runs:
        run, config, history = read_run(run_dir)
        m = RunFolder(run).read_eval(args.split)
        runs.append((run.name, config, m, history))
    out = write_comparison(args.out, runs)
    for name, config, m, _ in runs:
        print(
            f"{name:<28} {config['model']:<12} acc {m['accuracy']:.4f}  "
            f"macro F1 {m['macro_avg']['f1']:.4f}  params {config.get('params', 0):,}"
        )
    print(f"wrote {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import math
    import os

    from cifarlab.serve import TOKEN_ENV, require, serve

    def check(flag: str, ok: bool, what: str) -> None:
        if not ok:
            raise CifarlabError(f"{flag} must be {what}")

    check("--port", 0 <= args.port <= 65535, f"0..65535, got {args.port}")
    check("--workers", 1 <= args.workers <= 64, f"1..64, got {args.workers}")
    check(
        "--max-upload-mb",
        math.isfinite(args.max_upload_mb) and 0 < args.max_upload_mb <= 1024,
        f"more than 0 and at most 1024, got {args.max_upload_mb:g}",
    )
    check("--max-files", 1 <= args.max_files <= 10_000, f"1..10000, got {args.max_files}")
    check(
        "--uncertain-below",
        0 <= args.uncertain_below <= 1,
        f"a probability 0..1, got {args.uncertain_below:g}",
    )
    check(
        "--batch-wait-ms",
        0 <= args.batch_wait_ms <= 1000,
        f"0..1000 ms, got {args.batch_wait_ms:g}",
    )
    if args.threads is not None:
        check("--threads", 1 <= args.threads <= 1024, f"1..1024, got {args.threads}")
    check("--max-batch", 1 <= args.max_batch <= 4096, f"1..4096, got {args.max_batch}")
    check(
        "--max-pending-mb",
        math.isfinite(args.max_pending_mb) and args.max_upload_mb <= args.max_pending_mb,
        f"at least --max-upload-mb ({args.max_upload_mb:g}), got {args.max_pending_mb:g}",
    )
    check(
        "--max-request-megapixels",
        0 < args.max_request_megapixels <= 10_000,
        f"more than 0 and at most 10000, got {args.max_request_megapixels:g}",
    )
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None:  # RFC 6750's token characters: what an HTTP header carries as is
        check(
            "--token",
            bool(re.fullmatch(r"[A-Za-z0-9._~+/=-]{1,512}", token)),
            "1 to 512 of A-Z a-z 0-9 - . _ ~ + / = (no spaces or other characters)",
        )
    require()  # before the runs are read: a missing extra is the first thing to say
    from cifarlab.serve.app import Settings

    settings = Settings(
        max_upload_mb=args.max_upload_mb,
        max_files=args.max_files,
        token=token,
        batching=not args.no_batching,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        uncertain_below=args.uncertain_below,
        max_request_pixels=args.max_request_megapixels * 1e6,
        max_pending_mb=args.max_pending_mb,
    )
    return serve(
        args.runs,
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        backend=args.backend,
        checkpoint=args.checkpoint,
        access_log=args.access_log,
        tta=args.tta,
        threads=args.threads,
        calibrated=args.calibrated,
    )


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
        _say(f"error: ran out of memory{f' ({detail})' if detail else ''}; free some memory, "
             "or give the command less to do (a smaller --batch-size, fewer files)")  # fmt: skip
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
        _say(f"error: internal error ({what}); please report it — set {DEBUG_ENV}=1 for the "
             "traceback")  # fmt: skip
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
        warnings.showwarning = _show_warning
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
