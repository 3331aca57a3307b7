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

Files are anyone's (images from the web): only regular files are opened (a FIFO or device is
refused without blocking), within the limits of :mod:`cifarlab.limits` (file size, pixels and
aspect ratio read from the header before decoding), in PNG, JPEG, BMP, WebP, GIF or TIFF; any
failure of the decoder is that file's one-line :class:`ImageError`, and
:meth:`Run.predict_files` goes on with the other files. Folders are walked without recursion,
within a depth and a number of entries; a folder that cannot be listed is reported.
"""

from __future__ import annotations

import numbers
import os
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarlab import limits
from cifarlab.data.augment import normalize

# The suffixes and formats (Pillow's names) an image may have: no others. Pillow reads many
# more (EPS through Ghostscript, among them), none of which a photo for a CIFAR model needs.
from cifarlab.data.formats import IMAGE_SUFFIXES, PIL_FORMATS, open_image
from cifarlab.errors import CifarlabError, SettingError, one_line, printable
from cifarlab.evaluate.inference import tta_logits
from cifarlab.files import open_input
from cifarlab.trained import open_run

SIZE = 32
RESIZE_METHODS = ("crop", "stretch")
DEFAULT_RESIZE = "crop"
RESAMPLE = Image.Resampling.LANCZOS
# ``crop`` scales the shorter side to 32: an image longer than this many times its width (or
# the reverse) would be scaled to a strip of up to 32 × (32 × this) pixels before its centre
# is cut out. Beyond it only the centre is scaled (the same numbers within ±1 grey level): a
# 1 × 3,000,000 image is never scaled to 32 × 96,000,000.
_CROP_FIRST_ASPECT = 16


class ImageError(CifarlabError):
    """A file that cannot be read as an image."""


def shown(text: str | os.PathLike) -> str:
    """A file name (or a message holding one) as text that any output can print and JSON can
    hold: bytes that are not UTF-8 (kept by Python as lone surrogates) as ``\\xff``, and on
    one line."""
    return one_line(printable(os.fspath(text)), None)


# --------------------------------------------------------------------------- images


ORIENTATION = 0x0112  # the EXIF tag
# Big images are converted in blocks of this many pixels: their float64 or RGBA copies never
# exist whole (a 64-megapixel image: 512 MB of float64).
BLOCK_PIXELS = 1 << 20


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: first frame, EXIF orientation applied, transparency
    composited onto white."""
    if im.tell() != 0:  # never n_frames: it walks every frame (and a broken one can raise)
        im.seek(0)
    # only with an orientation tag: exif_transpose copies the image even without one (a
    # 64-megapixel photo: 256 MB more; the server's memory budget counts every copy)
    if im.getexif().get(ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im) or im
    keyed = im.mode in ("RGB", "L", "P") and "transparency" in im.info  # a colour marked
    if im.mode in ("RGBA", "LA", "PA") or keyed:
        return _on_white(im)
    if im.mode == "P":
        return im.convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grayscale: to 8 bits
        return Image.fromarray(_gray_to_uint8(np.asarray(im), im.mode)).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")  # convert("RGB") of RGB: a copy


def _on_white(im: Image.Image) -> Image.Image:
    """An image with transparency composited onto white, as RGB, in strips of
    :data:`BLOCK_PIXELS`."""
    w, h = im.size
    out = Image.new("RGB", im.size)
    step = max(1, BLOCK_PIXELS // w)
    for top in range(0, h, step):
        strip = im.crop((0, top, w, min(h, top + step))).convert("RGBA")
        background = Image.new("RGBA", strip.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(background, strip).convert("RGB"), (0, top))
    return out


def _gray_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit pixels map 0..65535 to 0..255 (as an 8-bit save of the same picture would);
    a float image in 0..1 maps to 0..255; values beyond 16 bits are scaled by their maximum."""
    hi = float(arr.max()) if arr.size else 0.0
    rows = max(1, BLOCK_PIXELS // max(1, arr[0].size if len(arr) else 1))
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
    out = np.empty(arr.shape, np.uint8)
    for top in range(0, len(arr), rows):
        block = arr[top : top + rows].astype(np.float64)
        out[top : top + rows] = np.clip(np.rint(block * scale), 0, 255)
    return out


def resize_to_32(im: Image.Image, method: str = DEFAULT_RESIZE) -> Image.Image:
    """An RGB image as 32×32: ``crop`` scales the shorter side to 32 and keeps the central
    square (no distortion); ``stretch`` scales both sides to 32 (the whole image, distorted)."""
    if method not in RESIZE_METHODS:
        raise CifarlabError(f"resize method must be one of {', '.join(RESIZE_METHODS)}")
    w, h = im.size
    if w < 1 or h < 1:
        raise CifarlabError(f"an image must have at least one pixel, got {w}×{h}")
    if (w, h) == (SIZE, SIZE):
        return im
    if method == "stretch":
        target = (SIZE, SIZE)
    else:
        scale = SIZE / min(w, h)
        target = (max(SIZE, round(w * scale)), max(SIZE, round(h * scale)))
        if max(target) > SIZE * _CROP_FIRST_ASPECT:
            # Only the central 32×32 of the scaled image is kept: scale the source region
            # that becomes it (Pillow's box), never allocating the whole scaled strip.
            left, top = (target[0] - SIZE) // 2, (target[1] - SIZE) // 2
            sx, sy = w / target[0], h / target[1]
            box = (left * sx, top * sy, (left + SIZE) * sx, (top + SIZE) * sy)
            return im.resize((SIZE, SIZE), RESAMPLE, box=box, reducing_gap=3.0)
    # Lanczos kept the most accuracy on 4× enlarged test images (0.884; box 0.882, bicubic
    # 0.879, bilinear 0.862; BENCHMARKS.md). reducing_gap: a big photo is first shrunk by a
    # whole factor with a box filter (fast), leaving at least 3× for Lanczos.
    im = im.resize(target, RESAMPLE, reducing_gap=3.0)
    if method == "crop":
        left, top = (im.width - SIZE) // 2, (im.height - SIZE) // 2
        im = im.crop((left, top, left + SIZE, top + SIZE))
    return im


def check_header(path: str | os.PathLike, size: tuple[int, int]) -> None:
    """Refuse an image whose header declares more pixels than ``CIFARLAB_MAX_IMAGE_PIXELS`` or
    a more extreme aspect ratio than ``CIFARLAB_MAX_ASPECT``, before a pixel is decoded."""
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"{shown(path)}: the header says {w}×{h} pixels: no image")
    most = limits.MAX_IMAGE_PIXELS.get()
    if w * h > most:
        raise ImageError(
            f"{shown(path)}: refused, too many pixels ({w:,}×{h:,} = {w * h:,}; the limit is "
            f"{int(most):,}, raise it with {limits.MAX_IMAGE_PIXELS.env})"
        )
    aspect = max(w, h) / min(w, h)
    if aspect > limits.MAX_ASPECT.get():
        raise ImageError(
            f"{shown(path)}: refused, {w:,}×{h:,} pixels is too long and thin for a photo "
            f"(aspect ratio {aspect:,.0f}:1; the limit is {limits.MAX_ASPECT.get():g}:1, raise "
            f"it with {limits.MAX_ASPECT.env})"
        )


def _reason(e: BaseException) -> str:
    text = one_line(str(e))
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextmanager
def _pillow_allows(pixels: float) -> Iterator[None]:
    """Pillow refuses more than 2 × ``Image.MAX_IMAGE_PIXELS`` (179 MP) on its own: when
    ``CIFARLAB_MAX_IMAGE_PIXELS`` is raised above that, lift Pillow's bound to it for this
    decode (the header check has enforced ours already); otherwise leave Pillow alone."""
    default = Image.MAX_IMAGE_PIXELS
    if default is None or pixels <= 2 * default:
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = int(pixels // 2) + 1
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB; :class:`ImageError` names the file if it cannot, whatever
    went wrong in the decoder. Only a regular file is opened (never blocks on a FIFO), of at
    most ``CIFARLAB_MAX_IMAGE_FILE_MB``, in one of ``PIL_FORMATS``; its size from the header is
    checked (:func:`check_header`) before it is decoded; only its first frame is read."""
    path = Path(path)
    max_bytes = limits.megabytes(limits.MAX_IMAGE_FILE)
    limits.MAX_IMAGE_PIXELS.get()  # a bad CIFARLAB_* setting raises here,
    limits.MAX_ASPECT.get()  # not as this file's error
    with open_input(path, max_bytes, ImageError, f"{limits.MAX_IMAGE_FILE.env}=MB") as f:
        return decode_image(f, path)


def decode_image(
    f: BinaryIO,
    name: str | os.PathLike,
    check_size: Callable[[Image.Image], None] | None = None,
) -> Image.Image:
    """Decode an open binary file (or ``io.BytesIO``) as RGB, exactly as :func:`load_image`
    does a file (the server decodes uploads with it): the header is checked before a pixel is
    decoded (and the opened image, its header read, passed to ``check_size``, which may
    raise: the server's pixel and memory budgets); any decoder failure is an
    :class:`ImageError` naming ``name``."""
    max_pixels = limits.MAX_IMAGE_PIXELS.get()
    name = shown(name)
    try:
        with warnings.catch_warnings(), _pillow_allows(max_pixels):
            # Pillow's warnings name no file: 89-179 megapixels (the header check decides;
            # above that Pillow raises DecompressionBombError, reported below), and the
            # tags it skips in a damaged file (what it cannot skip is an error below).
            warnings.simplefilter("ignore")
            with open_image(f) as im:
                check_header(name, im.size)
                if check_size is not None:
                    check_size(im)
                im.load()
                return to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        kinds = ", ".join(PIL_FORMATS)
        raise ImageError(f"{name}: not an image (or not one of {kinds})") from None
    except Image.DecompressionBombError as e:  # Pillow's own bound, above ours
        found = re.search(r"\((\d+) pixels\)", str(e))
        many = f"{int(found.group(1)):,} pixels; " if found else ""
        raise ImageError(
            f"{name}: refused, too many pixels ({many}the limit is {int(max_pixels):,}, "
            f"raise it with {limits.MAX_IMAGE_PIXELS.env})"
        ) from None
    except MemoryError:
        raise ImageError(f"{name}: ran out of memory decoding it") from None
    except RecursionError:
        raise ImageError(f"{name}: cannot read the image: nested too deeply") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(
            f"{name}: cannot read the image: truncated or corrupt ({one_line(str(e))})"
        ) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's, one line
        raise ImageError(f"{name}: cannot read the image: corrupt ({_reason(e)})") from None


def _listing_error(folder: Path, e: OSError) -> str:
    why = e.strerror or _reason(e)
    return f"{shown(folder)}: cannot list this folder ({why}); its images are skipped"


def find_images(paths: Iterable[str | os.PathLike]) -> list[FileResult]:
    """The files named, with folders expanded to the image files inside them (sorted, any
    depth up to ``CIFARLAB_MAX_FOLDER_DEPTH``, at most ``CIFARLAB_MAX_FOLDER_FILES`` entries
    listed). A folder is walked without recursion; a symbolic link to a folder inside it is
    not followed (one named in ``paths`` is), and no folder is listed twice, so no loop is
    walked. Missing paths are kept, so that they are reported; a folder that cannot be
    listed, or lies too deep, is a result with its error."""
    max_depth = int(limits.MAX_FOLDER_DEPTH.get())
    max_entries = int(limits.MAX_FOLDER_FILES.get())
    out: list[FileResult] = []
    for p in map(Path, paths):
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            out.append(FileResult(p))  # opened, or reported, by load_image
            continue
        out += _walk(p, st, max_depth, max_entries)
    return out


def _walk(top: Path, st: os.stat_result, max_depth: int, max_entries: int) -> list[FileResult]:
    found: list[FileResult] = []
    seen = {(st.st_dev, st.st_ino)}
    stack: list[tuple[Path, int]] = [(top, 0)]
    listed = 0
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            found.append(FileResult(folder, error=_listing_error(folder, e)))
            continue
        listed += len(entries)
        if listed > max_entries:
            found.append(
                FileResult(
                    top,
                    error=(
                        f"{shown(top)}: more than {max_entries:,} files and folders; stopped "
                        f"listing (raise the limit with {limits.MAX_FOLDER_FILES.env})"
                    ),
                )
            )
            break
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
                if is_dir and entry.is_symlink():
                    continue  # a linked folder is not searched (as rglob did): no loops
            except OSError:
                is_dir = False
            if not is_dir:
                # a FIFO or device named like an image is kept: load_image says what it is
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(FileResult(path))
                continue
            try:
                key = entry.stat()
            except OSError as e:
                found.append(FileResult(path, error=_listing_error(path, e)))
                continue
            if (key.st_dev, key.st_ino) in seen:  # a bind mount back up (a loop)
                continue
            seen.add((key.st_dev, key.st_ino))
            if depth + 1 > max_depth:
                found.append(
                    FileResult(
                        path,
                        error=(
                            f"{shown(path)}: more than {max_depth} folders deep; not searched "
                            f"(raise the limit with {limits.MAX_FOLDER_DEPTH.env})"
                        ),
                    )
                )
                continue
            stack.append((path, depth + 1))
    found.sort(key=lambda r: r.path.parts)
    return found


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The files named, with folders expanded to the image files inside them (see
    :func:`find_images`, which also says which folders could not be searched)."""
    return [r.path for r in find_images(paths) if r.error is None]


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
    (:func:`cifarlab.trained.open_run`). The logits are divided by the run's fitted temperature
    (calibrated probabilities) unless ``calibrated=False``; :attr:`calibration_note` says
    which."""

    def __init__(
        self,
        path: str | os.PathLike,
        checkpoint: str = "best",
        device: str = "cpu",
        calibrated: bool = True,
    ) -> None:
        opened = open_run(path, checkpoint, device, calibrated=calibrated)
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
        self.temperature = opened.temperature  # 1.0 when not calibrated
        self.calibrated = opened.calibrated
        self.calibration_note = opened.calibration_note

    @property
    def name(self) -> str:
        return self.path.name

    def preprocess(self, batch: np.ndarray) -> torch.Tensor:
        """N×32×32×3 uint8 → the normalized float NCHW the model was trained on."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).permute(0, 3, 1, 2)
        return normalize(x, self.mean, self.std, channels_last=self.cfg.channels_last)

    @torch.no_grad()
    def logits(self, batch: np.ndarray, batch_size: int = 256) -> torch.Tensor:
        out = []
        with self.opened.autocast_context():
            for start in range(0, len(batch), batch_size):
                x = self.preprocess(batch[start : start + batch_size])
                out.append(tta_logits(self.model, x, self.tta).float().cpu())
        logits = torch.cat(out)
        return logits / self.temperature if self.calibrated else logits

    def predict(
        self, images: Any, *, batch_size: int = 256, resize: str = DEFAULT_RESIZE
    ) -> Prediction:
        """Predict PIL images, HWC uint8 arrays or tensors (one, a batch, or a list)."""
        batch = as_uint8_batch(images, resize)
        probs = torch.softmax(self.logits(batch, batch_size), dim=1).numpy()
        return Prediction(probs, self.class_names)

    def predict_files(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        batch_size: int = 256,
        resize: str = DEFAULT_RESIZE,
    ) -> list[FileResult]:
        """Predict image files and folders (their image files, recursively), in order. A file
        that cannot be read (whatever its decoder raised) gets its error message instead of a
        prediction, and so does one whose probabilities are not finite numbers (a broken
        checkpoint); the others are predicted all the same."""
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1
        ):
            raise CifarlabError(f"batch_size must be a positive integer, got {batch_size!r}")
        if resize not in RESIZE_METHODS:
            raise CifarlabError(f"resize method must be one of {', '.join(RESIZE_METHODS)}")
        for limit in (limits.MAX_IMAGE_FILE, limits.MAX_IMAGE_PIXELS, limits.MAX_ASPECT):
            limit.get()  # a bad CIFARLAB_* setting stops here, not as an error per file
        results: list[FileResult] = []
        files = find_images(paths)
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            arrays, ok = [], []
            for r in chunk:
                if r.error is not None:
                    continue
                try:
                    arrays.append(np.asarray(resize_to_32(load_image(r.path), resize), np.uint8))
                    ok.append(r)
                except ImageError as e:
                    r.error = shown(str(e))
                except CifarlabError as e:  # e.g. an image of no pixels
                    r.error = shown(f"{r.path}: {e}")
                except Exception as e:  # noqa: BLE001 - this file's failure, whatever it is
                    r.error = shown(f"{r.path}: cannot read the image ({_reason(e)})")
            if arrays:
                probs = self.predict(np.stack(arrays), batch_size=batch_size).probs
                for r, p in zip(ok, probs, strict=True):
                    if np.isfinite(p).all():
                        r.prediction = Prediction(p[None], self.class_names)
                    else:
                        r.error = shown(
                            f"{r.path}: the model gave probabilities that are not numbers "
                            "(NaN or infinite): its checkpoint holds broken weights"
                        )
            results += chunk
        return results


@dataclass
class FileResult:
    """One file of :meth:`Run.predict_files`: its prediction, or why it has none."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None

    def to_dict(self, k: int = 3) -> dict[str, Any]:
        """JSON-ready: the file name as printable text (see :func:`shown`)."""
        if self.prediction is None:
            return {"file": shown(self.path), "error": self.error}
        top = self.prediction.top_k(k)[0]
        return {
            "file": shown(self.path),
            "label": top[0][0],
            "top_k": [{"class": c, "probability": p} for c, p in top],
        }


MAX_BATCH = 65536  # images per forward pass for `cifarlab predict`; more only costs memory


def check_options(*, top_k: int, batch_size: int) -> None:
    """The bounds of ``cifarlab predict``'s options, checked before a run is loaded:
    ``top_k`` classes shown per image, at least 1; ``batch_size`` images per forward pass,
    1 to :data:`MAX_BATCH`. A :class:`SettingError` names the parameter."""
    if top_k < 1:
        raise SettingError("top_k", f"must be at least 1, got {top_k}")
    if not 1 <= batch_size <= MAX_BATCH:
        raise SettingError("batch_size", f"must be between 1 and {MAX_BATCH}, got {batch_size}")


def load_run(
    path: str | os.PathLike,
    checkpoint: str = "best",
    device: str = "cpu",
    calibrated: bool = True,
) -> Run:
    """Load the run in ``path`` for prediction: ``load_run("runs/fast").predict(images)``.
    The probabilities are calibrated by the run's fitted temperature unless
    ``calibrated=False``."""
    return Run(path, checkpoint, device, calibrated)
