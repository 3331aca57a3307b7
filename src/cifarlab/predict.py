"""Use a trained run on your own images: :func:`load_run` and :meth:`Run.predict`.

Images of any size and common format are brought to the 32×32 RGB that CIFAR models take, the
same way for every input path (files, PIL images, arrays, tensors):

1. decode: the first frame of animated files; palette, grayscale and CMYK images become RGB;
   transparent pixels (RGBA, LA, palette with transparency) are composited onto white;
2. resize: the shorter side to 32 pixels with PIL's Lanczos filter (antialiased), then the
   central 32×32 square — the method and filter that kept the most accuracy on enlarged CIFAR
   test images (``benchmarks/resize_choice.py``, ``BENCHMARKS.md``);
3. normalize exactly as the run was trained (its ``normalize`` setting), and run the model with
   the run's test-time augmentation.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarlab.errors import CifarlabError

SIZE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
RESIZE_METHODS = ("crop", "stretch")
DEFAULT_RESIZE = "crop"
RESAMPLE = Image.Resampling.LANCZOS


class ImageError(CifarlabError):
    """A file that cannot be read as an image."""


# --------------------------------------------------------------------------- images


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: first frame, EXIF orientation applied, transparency
    composited onto white."""
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    im = ImageOps.exif_transpose(im) or im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    keyed = im.mode in ("RGB", "L") and "transparency" in im.info  # one colour marked (tRNS)
    if im.mode in ("RGBA", "LA", "PA") or keyed:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grayscale: to 8 bits
        arr = np.asarray(im, dtype=np.float64)
        return Image.fromarray(_gray_to_uint8(arr, im.mode)).convert("RGB")
    return im.convert("RGB")


def _gray_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit pixels map 0..65535 to 0..255 (as an 8-bit save of the same picture would);
    a float image in 0..1 maps to 0..255; values beyond 16 bits are scaled by their maximum."""
    hi = float(arr.max()) if arr.size else 0.0
    if mode.startswith("I;16") or (mode == "I" and 255 < hi <= 65535):
        scale = 255.0 / 65535.0
    elif mode == "F" and hi <= 1.0:
        scale = 255.0
    elif hi <= 255:
        scale = 1.0
    elif hi <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / hi
    return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)


def resize_to_32(im: Image.Image, method: str = DEFAULT_RESIZE) -> Image.Image:
    """An RGB image as 32×32: ``crop`` scales the shorter side to 32 and keeps the central
    square (no distortion); ``stretch`` scales both sides to 32 (the whole image, distorted)."""
    if method not in RESIZE_METHODS:
        raise CifarlabError(f"resize method must be one of {', '.join(RESIZE_METHODS)}")
    w, h = im.size
    if (w, h) == (SIZE, SIZE):
        return im
    if method == "stretch":
        target = (SIZE, SIZE)
    else:
        scale = SIZE / min(w, h)
        target = (max(SIZE, round(w * scale)), max(SIZE, round(h * scale)))
    # Lanczos kept the most accuracy on 4× enlarged test images (0.884; box 0.882, bicubic
    # 0.879, bilinear 0.862; BENCHMARKS.md). reducing_gap: a big photo is first shrunk by a
    # whole factor with a box filter (fast), leaving at least 3× for Lanczos.
    im = im.resize(target, RESAMPLE, reducing_gap=3.0)
    if method == "crop":
        left, top = (im.width - SIZE) // 2, (im.height - SIZE) // 2
        im = im.crop((left, top, left + SIZE, top + SIZE))
    return im


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB; :class:`ImageError` names the file if it cannot."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder")
    try:
        with warnings.catch_warnings():
            # 89-179 megapixels: Pillow only warns (without naming the file); such a photo
            # is fine to shrink. Above that it raises DecompressionBombError, reported below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused, too many pixels to open safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot read the image: truncated or corrupt ({e})") from None


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The files named, with folders expanded to the image files inside them (recursively,
    sorted). Missing paths are kept, so that they are reported as errors."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            out.append(p)
    return out


def as_uint8_batch(images: Any, method: str = DEFAULT_RESIZE) -> np.ndarray:
    """N×32×32×3 uint8 from a PIL image, an HWC uint8 array (or N×H×W×C), a tensor (uint8
    HWC/NHWC or CHW/NCHW, or float CHW/NCHW in 0..1), or a list of any of these."""
    if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        items: Sequence[Any] = _split_batch(images)
    else:
        items = list(images)
    if not items:
        raise CifarlabError("no images to predict")
    return np.stack([_one(x, method) for x in items])


def _split_batch(x: Any) -> Sequence[Any]:
    if isinstance(x, Image.Image):
        return [x]
    if isinstance(x, torch.Tensor):
        batched = x.ndim == 4
        return list(x) if batched else [x]
    return list(x) if x.ndim == 4 else [x]


def _one(x: Any, method: str) -> np.ndarray:
    if isinstance(x, Image.Image):
        im = to_rgb(x)
    else:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu()
            if t.is_floating_point():  # CHW in 0..1, torchvision's convention
                if t.ndim != 3 or t.shape[0] not in (1, 3):
                    raise CifarlabError(f"a float tensor image must be C×H×W, got {tuple(t.shape)}")
                t = (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
            elif t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[2] not in (1, 3, 4):
                t = t.permute(1, 2, 0)  # uint8 C×H×W, as torchvision.io.read_image gives
            x = t.numpy()
        arr = np.asarray(x)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise CifarlabError(f"an array image must be H×W×C (C = 1, 3 or 4), got {arr.shape}")
        if arr.dtype != np.uint8:
            raise CifarlabError(f"an array image must be uint8 (0..255), got {arr.dtype}")
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
        im = to_rgb(Image.fromarray(arr.squeeze(2) if mode == "L" else arr, mode))
    return np.asarray(resize_to_32(im, method), dtype=np.uint8)


# --------------------------------------------------------------------------- runs


@dataclass
class Prediction:
    """Predictions for N images: ``probs`` N×C, ``indices`` (arg-max class), ``labels``
    (its name) and the class names."""

    probs: np.ndarray
    class_names: list[str]

    @property
    def indices(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.indices]

    def top_k(self, k: int = 3) -> list[list[tuple[str, float]]]:
        """For each image, the ``k`` most likely classes with their probabilities."""
        k = max(1, min(k, self.probs.shape[1]))
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        return [
            [(self.class_names[c], float(row[c])) for c in cols]
            for row, cols in zip(self.probs, order, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.probs)


class Run:
    """A trained run loaded for inference (on the CPU unless told otherwise): the model, its
    normalization, precision and test-time augmentation come from the run folder
    (:func:`cifarlab.runs.open_run`)."""

    def __init__(
        self, path: str | os.PathLike, checkpoint: str = "best", device: str = "cpu"
    ) -> None:
        from cifarlab.runs import open_run

        opened = open_run(path, checkpoint, device)
        self.opened = opened
        self.path = opened.folder.path
        self.config = opened.config
        self.cfg = opened.cfg
        self.class_names: list[str] = opened.class_names
        self.device = opened.device
        self.model = opened.model
        self.checkpoint_epoch = opened.checkpoint_epoch
        self.mean, self.std = opened.mean, opened.std
        self.tta = opened.tta
        self.autocast = opened.autocast

    @property
    def name(self) -> str:
        return self.path.name

    def preprocess(self, batch: np.ndarray) -> torch.Tensor:
        """N×32×32×3 uint8 → the normalized float NCHW the model was trained on."""
        from cifarlab.data.augment import normalize

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).permute(0, 3, 1, 2)
        return normalize(x, self.mean, self.std, channels_last=self.cfg.channels_last)

    @torch.no_grad()
    def logits(self, batch: np.ndarray, batch_size: int = 256) -> torch.Tensor:
        from cifarlab.evaluate.inference import tta_logits

        out = []
        with self.opened.autocast_context():
            for start in range(0, len(batch), batch_size):
                x = self.preprocess(batch[start : start + batch_size])
                out.append(tta_logits(self.model, x, self.tta).float().cpu())
        return torch.cat(out)

    def predict(
        self, images: Any, *, batch_size: int = 256, resize: str = DEFAULT_RESIZE
    ) -> Prediction:
        """Predict PIL images, HWC uint8 arrays or tensors (one, a batch, or a list)."""
        batch = as_uint8_batch(images, resize)
        probs = torch.softmax(self.logits(batch, batch_size), dim=1).numpy()
        return Prediction(probs, self.class_names)

    def predict_files(
        self, paths: Iterable[str | os.PathLike], *, batch_size: int = 256,
        resize: str = DEFAULT_RESIZE,
    ) -> list[FileResult]:  # fmt: skip
        """Predict image files and folders (their image files, recursively), in order. A file
        that cannot be read gets its error message instead of a prediction."""
        results: list[FileResult] = []
        files = image_files(paths)
        for start in range(0, len(files), batch_size):
            chunk: list[FileResult] = []
            arrays = []
            for f in files[start : start + batch_size]:
                try:
                    arrays.append(np.asarray(resize_to_32(load_image(f), resize), np.uint8))
                    chunk.append(FileResult(f))
                except ImageError as e:
                    chunk.append(FileResult(f, error=str(e)))
            if arrays:
                probs = self.predict(np.stack(arrays), batch_size=batch_size).probs
                ok = [r for r in chunk if r.error is None]
                for r, p in zip(ok, probs, strict=True):
                    r.prediction = Prediction(p[None], self.class_names)
            results += chunk
        return results


@dataclass
class FileResult:
    """One file of :meth:`Run.predict_files`: its prediction, or why it has none."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None

    def to_dict(self, k: int = 3) -> dict[str, Any]:
        if self.prediction is None:
            return {"file": str(self.path), "error": self.error}
        top = self.prediction.top_k(k)[0]
        return {
            "file": str(self.path),
            "label": top[0][0],
            "top_k": [{"class": c, "probability": p} for c, p in top],
        }


def load_run(path: str | os.PathLike, checkpoint: str = "best", device: str = "cpu") -> Run:
    """Load the run in ``path`` for prediction: ``load_run("runs/fast").predict(images)``."""
    return Run(path, checkpoint, device)
