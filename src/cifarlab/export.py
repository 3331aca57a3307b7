"""Export a trained model to ONNX or TorchScript, preprocessing included.

The exported graph takes raw pixels and does the normalization the run was trained with, so a
user of the file needs nothing from cifarlab:

- ``input="uint8"`` (default): ``images``, uint8, N×32×32×3 (NHWC, RGB, 0..255) — the layout
  images are decoded into;
- ``input="float"``: ``images``, float32, N×3×32×32 (NCHW, RGB, 0..1) — torchvision's
  ``ToTensor`` convention.

Outputs: ``logits`` (float32, N×classes; divided by the run's fitted temperature, so the
probabilities are calibrated, unless exported with ``calibrated=False``) and ``probabilities``
(their softmax). The batch dimension is dynamic. The class names and the preprocessing are
stored in the file: ONNX ``metadata_props`` (keys ``class_names`` as JSON, ``preprocessing``,
``input_format``, ``mean``, ``std``, ``temperature``, ``calibration``, ``model``,
``cifarlab_version``), TorchScript ``_extra_files`` (``cifarlab.json``); :func:`read_metadata`
reads either. The export is of the single-view model: the run's test-time augmentation,
if any, is not in the file. Images of other sizes must be brought to 32×32 first (see
:mod:`cifarlab.predict` for how cifarlab does it).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cifarlab import __version__
from cifarlab.errors import CifarlabError, SettingError
from cifarlab.files import atomic_write, check_output
from cifarlab.predict import load_run

FORMATS = ("onnx", "torchscript")
INPUTS = ("uint8", "float")
OPSET = 18


class Preprocessed(nn.Module):
    """``model`` behind the run's preprocessing; returns (logits, probabilities). The logits
    are divided by ``temperature`` (the run's calibration; 1.0: none) before the softmax."""

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        input_kind: str = "uint8",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
        self.uint8_input = input_kind == "uint8"
        # (x/255 - mean) / std as one multiply-add on 0..255 values; unit scaling: x/255.
        m = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0), dtype=torch.float32)
        s = torch.tensor(std if std is not None else (1.0, 1.0, 1.0), dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * s)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-m / s).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.uint8_input:
            x = images.permute(0, 3, 1, 2).to(torch.float32)
        else:
            x = images * 255.0
        logits = self.model(x * self.scale + self.shift)
        if self.temperature != 1.0:
            logits = logits * (1.0 / self.temperature)
        return logits, torch.softmax(logits, dim=1)


def metadata(
    config: dict[str, Any],
    class_names: list[str],
    input_kind: str,
    mean: Any,
    std: Any,
    temperature: float = 1.0,
    calibration: str = "probabilities not calibrated",
) -> dict[str, str]:
    if input_kind == "uint8":
        layout = "uint8 N×32×32×3 (NHWC), RGB, 0..255"
    else:
        layout = "float32 N×3×32×32 (NCHW), RGB, 0..1"
    norm = (
        f"x/255, minus mean {list(mean)}, divided by std {list(std)} (per channel, in the graph)"
        if mean is not None
        else "x/255 (in the graph)"
    )
    return {
        "class_names": json.dumps(class_names),
        "input_format": layout,
        "preprocessing": f"input {layout}; resize other images to 32×32 first "
        f"(cifarlab: shorter side to 32, centre crop); normalization: {norm}",
        "mean": json.dumps(list(mean) if mean is not None else None),
        "std": json.dumps(list(std) if std is not None else None),
        "outputs": "logits (float32 N×classes, divided by the temperature), probabilities "
        "(softmax of logits)",
        "temperature": json.dumps(float(temperature)),
        "calibration": calibration,
        "model": str(config.get("model")),
        "recipe": str(config.get("recipe")),
        "dataset": str(config.get("dataset")),
        "cifarlab_version": __version__,
    }


def _example(input_kind: str, batch: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(0)
    if input_kind == "uint8":
        return torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, generator=g)
    return torch.rand(batch, 3, 32, 32, generator=g)


def export_model(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    fmt: str = "onnx",
    class_names: list[str],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    config: dict[str, Any] | None = None,
    input_kind: str = "uint8",
    temperature: float = 1.0,
    calibration: str = "probabilities not calibrated",
) -> Path:
    """Write ``model`` (float32, CPU, eval mode) with its preprocessing to ``out``; the logits
    divided by ``temperature`` (``calibration`` says what it is, in the metadata)."""
    if fmt not in FORMATS:
        raise SettingError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if input_kind not in INPUTS:
        raise SettingError("input_kind", f"must be one of {', '.join(INPUTS)}, got {input_kind!r}")
    check_output(Path(out))  # not a device or a FIFO: refused before the work
    wrapped = Preprocessed(model.float().cpu().eval(), mean, std, input_kind, temperature).eval()
    example = _example(input_kind)
    _check_class_names(wrapped, example, class_names)
    meta = metadata(config or {}, class_names, input_kind, mean, std, temperature, calibration)
    if fmt == "onnx":
        return atomic_write(out, lambda tmp: _write_onnx(wrapped, example, meta, tmp))
    return atomic_write(out, lambda tmp: _write_torchscript(wrapped, example, meta, tmp))


def _check_class_names(wrapped: nn.Module, example: Tensor, class_names: Any) -> None:
    """The names stored in the file are a list of strings, one per output of the model: a
    file whose names do not match its outputs would label every prediction wrongly."""
    if not isinstance(class_names, list | tuple) or not all(
        isinstance(n, str) for n in class_names
    ):
        raise SettingError("class_names", f"must be a list of strings, got {class_names!r:.60}")
    try:
        with torch.no_grad():
            logits, _ = wrapped(example)
    except Exception as e:  # noqa: BLE001 - a model that cannot run on a CIFAR image
        raise CifarlabError(
            f"the model does not run on a 32×32 image ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})"
        ) from None
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise SettingError(
            "class_names",
            f"has {len(class_names)} names but the model gives {list(logits.shape)} outputs "
            "(one per class expected): refusing to store names that do not match",
        )


def _write_onnx(wrapped: nn.Module, example: Tensor, meta: dict[str, str], path: Path) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError:
        raise CifarlabError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'cifarlab[export]' "
            "(or use --format torchscript)"
        ) from None

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    quiet = logging.getLogger("torch.onnx")  # e.g. "torchvision is not installed" notes
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        program = _export(wrapped, example, batch)
    finally:
        quiet.setLevel(level)
    proto = program.model_proto
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata cifarlab stored in an exported file (ONNX or TorchScript)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in proto.metadata_props}
    extra = {"cifarlab.json": ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["cifarlab.json"] or "{}")


def _export(wrapped: nn.Module, example: Tensor, batch: Any) -> Any:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits", "probabilities"],
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )


def _write_torchscript(
    wrapped: nn.Module, example: Tensor, meta: dict[str, str], path: Path
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(wrapped, (example,), check_trace=False)
        torch.jit.save(scripted, str(path), _extra_files={"cifarlab.json": json.dumps(meta)})


def export_run(
    run_dir: str | os.PathLike,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    *,
    checkpoint: str = "best",
    input_kind: str = "uint8",
    calibrated: bool = True,
) -> Path:
    """Export a run's ``checkpoint`` to ``out`` (default ``runs/NAME/model.onnx`` or
    ``model.pt``), with the run's fitted temperature in the graph unless
    ``calibrated=False``. The run is opened through :func:`cifarlab.trained.open_run`: every file is
    checked against its schema and the class names must match the model's outputs; ``out``
    must be a regular file or nothing (a device or a FIFO is refused, never replaced)."""
    if out is not None:
        check_output(Path(out))  # /dev/null, a FIFO: refused before the run is opened
    run = load_run(run_dir, checkpoint, device="cpu", calibrated=calibrated)
    if out is None:
        out = run.opened.folder.export_path(fmt)
    return export_model(
        run.model,
        out,
        fmt=fmt,
        class_names=run.class_names,
        mean=run.mean,
        std=run.std,
        config=run.config,
        input_kind=input_kind,
        temperature=run.temperature,
        calibration=run.calibration_note,
    )
