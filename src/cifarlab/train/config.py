"""TrainConfig: every setting of a training run, saved as ``config.json`` in the run folder."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from cifarlab.data.augment import Augment
from cifarlab.errors import CifarlabError
from cifarlab.models import get_entry

OPTIMIZERS = ("adam", "sgd", "muon")
NORMALIZE = ("unit", "standard")
SCHEDULES = ("constant", "triangle", "cosine")
PRECISIONS = ("fp32", "bf16", "auto")
_WANT = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


@dataclass
class TrainConfig:
    """A complete training set-up. Fields left ``None`` take the model's own defaults (its
    registered recipe), then the values below."""

    model: str = "simple_cnn"
    model_args: dict[str, Any] = field(default_factory=dict)  # builder options (e.g. widths)
    recipe: str | None = None  # the named recipe this config started from, if any
    dataset: str = "cifar10"
    labels: str = "fine"  # CIFAR-100: fine (100) or coarse (20)
    root: str | None = None  # data folder; None: $CIFARLAB_DATA, then the user cache
    epochs: int | None = None
    # Total training steps (the schedule's length); None: epochs × steps per epoch. Set by
    # --budget, where the last epoch may stop part-way.
    steps: int | None = None
    budget: float | None = None  # seconds of training wall time this run may take (--budget)
    batch_size: int | None = None
    lr: float | None = None  # PyTorch's lr, for the mean loss of a batch
    optimizer: str | None = None  # adam | sgd (Nesterov momentum) | muon (Muon on conv filters)
    momentum: float = 0.9
    muon_lr: float = 0.24  # optimizer muon: the conv filters' lr (the rest use lr, momentum)
    muon_momentum: float = 0.6
    weight_decay: float = 0.0  # PyTorch's (coupled) weight decay
    label_smoothing: float = 0.0
    normalize: str | None = None  # unit: pixels / 255 | standard: dataset mean/std
    augment: dict[str, Any] = field(default_factory=dict)  # Augment fields
    # Progressive resizing: {"SIZE": UNTIL, ...} trains on SIZE×SIZE images (the augmented
    # batch, resized with antialiasing) until that share of the steps, then on the next size,
    # and on full-size images for the rest: a CPU pays per pixel. {} is off.
    progressive: dict[str, Any] = field(default_factory=dict)
    # learning-rate schedule over all steps: constant | triangle | cosine
    schedule: str = "constant"
    warmup: float = 0.0  # share of the steps spent rising from lr_start·lr to lr
    lr_start: float = 0.0  # first multiplier of lr (triangle, cosine)
    lr_end: float = 0.0  # last multiplier of lr (triangle, cosine)
    bias_lr_scale: float = 1.0  # lr multiplier for normalization-layer biases
    lookahead_every: int = 0  # average the weights every N steps (0: off)
    lookahead_start: float = 0.0  # ...from this share of training on
    whiten_bias_epochs: int | None = None  # FastNet: train the whitening bias this many epochs
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where the device runs it fast)
    channels_last: bool = False  # NHWC memory format for model and batches
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # distributed on CUDA: synchronize BatchNorm statistics across GPUs
    tta: int = 0  # test-time augmentation: 0 none, 1 + mirror, 2 + mirror and 1-px shifts
    threads: int | None = None  # CPU threads (None: PyTorch's default)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    train_size: int | None = None  # a stratified subset of the training split
    val_size: int = 5000
    eval_batch_size: int = 1000

    _BASE = {"epochs": 10, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "normalize": "unit"}

    def check_types(self) -> None:
        """Every field holds a value of its declared type (``--set`` values come from JSON)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = [k.strip() for k in str(f.type).split("|")]
            if value is None and "None" in kinds:
                continue
            base = kinds[0]
            ok = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, int | float) and not isinstance(value, bool),
                "str": isinstance(value, str),
                "bool": isinstance(value, bool),
            }.get(base, isinstance(value, dict))
            if not ok:
                want = _WANT.get(base, 'a JSON object like {"key": 1}')
                raise CifarlabError(
                    f"setting {f.name} must be {want}, got {value!r} ({type(value).__name__})"
                )
            if base == "float":
                setattr(self, f.name, float(value))

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` filled from the model's defaults, validated."""
        self.check_types()
        entry = get_entry(self.model)
        values = asdict(self)
        for key, base in self._BASE.items():
            if values[key] is None:
                values[key] = entry.defaults.get(key, base)
        if not values["augment"] and isinstance(entry.defaults.get("augment"), dict):
            values["augment"] = dict(entry.defaults["augment"])
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        checks = [
            (
                self.epochs is not None and self.epochs >= 1,
                f"--epochs must be ≥ 1, got {self.epochs}",
            ),
            (
                self.batch_size is not None and self.batch_size >= 1,
                f"--batch-size must be ≥ 1, got {self.batch_size}",
            ),
            (self.steps is None or self.steps >= 1, f"steps must be ≥ 1, got {self.steps}"),
            (self.budget is None or self.budget > 0, f"--budget must be > 0, got {self.budget}"),
            (self.lr is not None and self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.normalize in NORMALIZE, f"--normalize must be one of {', '.join(NORMALIZE)}"),
            (
                self.train_size is None or self.train_size >= 1,
                f"--train-size must be ≥ 1, got {self.train_size}",
            ),
            (self.val_size >= 0, f"--val-size must be ≥ 0, got {self.val_size}"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.warmup < 1, f"--warmup must be in [0, 1), got {self.warmup}"),
            (self.lr_start >= 0 and self.lr_end >= 0, "lr_start and lr_end must be ≥ 0"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be ≥ 0, got {self.weight_decay}"),
            (self.bias_lr_scale > 0, f"--bias-lr-scale must be > 0, got {self.bias_lr_scale}"),
            (self.lookahead_every >= 0, "--lookahead-every must be ≥ 0"),
            (0 <= self.lookahead_start < 1, "--lookahead-start must be in [0, 1)"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.tta in (0, 1, 2), f"--tta must be 0, 1 or 2, got {self.tta}"),
            (self.threads is None or self.threads >= 1, "--threads must be ≥ 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise CifarlabError(message)
        _check_progressive(self.progressive)
        unknown = set(self.augment) - {f.name for f in dataclasses.fields(Augment)}
        if unknown:
            raise CifarlabError(f"unknown augmentation setting(s): {', '.join(sorted(unknown))}")
        Augment(**self.augment)  # validates values

    def image_size(self, progress: float, full: int = 32) -> int:
        """The training image size at ``progress`` (0-1) of the steps (``progressive``)."""
        for size, until in sorted(self.progressive.items(), key=lambda kv: kv[1]):
            if progress < until:
                return int(size)
        return full

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check_progressive(stages: dict[str, Any]) -> None:
    for size, until in stages.items():
        ok_size = str(size).isdigit() and 8 <= int(size) <= 31
        ok_until = isinstance(until, int | float) and not isinstance(until, bool) and 0 < until <= 1
        if not (ok_size and ok_until):
            raise CifarlabError(
                f'progressive: each entry must be "SIZE": UNTIL with SIZE 8-31 pixels and UNTIL '
                f"a share of the steps in (0, 1], got {size!r}: {until!r}"
            )
