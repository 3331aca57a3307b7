"""Readers for every form CIFAR comes in: official python pickles, official binary records,
and image folders. Each reader returns a :class:`RawData` of NHWC uint8 numpy arrays.

The pickles are read with a restricted unpickler: ``pickle.load`` runs whatever code a file
names, so only the handful of numpy constructors a CIFAR batch needs are admitted.
"""

from __future__ import annotations

import codecs
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.data.sources import IMAGE_BYTES, BinaryLayout, DatasetInfo, PythonLayout
from cifarlab.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass
class RawData:
    """Arrays as read from disk, before any split: images are (N, 32, 32, 3) uint8."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    train_coarse: np.ndarray | None = None
    test_coarse: np.ndarray | None = None
    coarse_names: list[str] | None = None
    files: list[Path] = field(default_factory=list)  # the source files, for checksums


# --------------------------------------------------------------------------- pickles


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar() -> Any:
    """numpy's scalar rebuilder (a dtype and raw bytes): labels saved as ``list(array)``."""
    try:  # numpy >= 2
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


# Everything a CIFAR pickle may name. Files written by numpy 1.x say numpy.core, by 2.x
# numpy._core; _codecs.encode appears when Python 3 writes bytes at protocol 2.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something outside the CIFAR format."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise UnsafePickleError(f"{module}.{name}")
        return factory()


def _str(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def load_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle safely; keys (bytes or str) come back as str."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnsafePickleError as e:
        raise DataError(
            f"{path}: refused to unpickle {e}: a CIFAR file holds only arrays, lists and "
            "strings, so this file is not one (it may be malicious)"
        ) from None
    except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
        raise DataError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {_str(k): v for k, v in obj.items()}


def _get(d: dict[str, Any], key: str, path: Path) -> Any:
    if key not in d:
        raise DataError(f"{path}: missing key {key!r} (has {', '.join(sorted(d))})")
    return d[key]


def _pixels(data: Any, path: Path, key: str = "data") -> np.ndarray:
    """(N, 3072) planes R, G, B row-major -> (N, 32, 32, 3)."""
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {key!r} is not an array of pixels ({e})") from None
    if arr.ndim != 2 or arr.shape[1] != IMAGE_BYTES:
        raise DataError(f"{path}: {key!r} has shape {arr.shape}, expected (N, {IMAGE_BYTES})")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iuf":
            raise DataError(f"{path}: {key!r} holds {arr.dtype} values, expected integers 0..255")
        if arr.size and not np.isfinite(arr).all():
            raise DataError(f"{path}: {key!r} holds NaN or infinite values")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{path}: {key!r} values outside 0..255")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _labels(values: Any, n: int, key: str, path: Path) -> np.ndarray:
    try:
        arr = np.asarray(values)
        whole_floats = arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr % 1 == 0).all()
        if (arr.dtype.kind not in "iub" and not whole_floats) or isinstance(values, dict):
            raise TypeError(f"{type(values).__name__} of {arr.dtype}")
        arr = arr.astype(np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {key!r} must be a list of class numbers ({e})") from None
    if arr.shape[0] != n:
        raise DataError(f"{path}: {arr.shape[0]} {key} for {n} images")
    return arr


def _names(values: Any) -> list[str]:
    return [_str(v) for v in values]


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """The parts of one split, concatenated (without a copy when there is one part)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _split_files(layout: PythonLayout | BinaryLayout) -> dict[str, tuple[str, ...]]:
    return {"train": layout.train_files, "test": layout.test_files}


def read_python(folder: Path, info: DatasetInfo) -> RawData:
    """Read the official python layout (``info.python_layout``: e.g. ``cifar-10-batches-py``).

    Every file name and pickle key comes from the layout; the train files are concatenated in
    their listed order, as are the test files.
    """
    layout = info.python_layout
    meta_file = folder / layout.meta_file
    meta = load_pickle(meta_file)
    names = _names(_get(meta, layout.names_key, meta_file))
    coarse_key = layout.coarse_label_key
    out: dict[str, np.ndarray | None] = {}
    for split, files in _split_files(layout).items():
        xs, ys, coarse = [], [], []
        for name in files:
            p = folder / name
            d = load_pickle(p)
            x = _pixels(_get(d, layout.data_key, p), p, layout.data_key)
            xs.append(x)
            ys.append(_labels(_get(d, layout.label_key, p), len(x), layout.label_key, p))
            if coarse_key is not None:
                coarse.append(_labels(_get(d, coarse_key, p), len(x), coarse_key, p))
        out[f"{split}_x"], out[f"{split}_y"] = _join(xs), _join(ys)
        out[f"{split}_coarse"] = _join(coarse) if coarse else None
    coarse_names = (
        _names(_get(meta, layout.coarse_names_key, meta_file))
        if layout.coarse_names_key is not None
        else None
    )
    return RawData(
        class_names=names,
        coarse_names=coarse_names,
        files=[folder / name for name in layout.files],
        **out,
    )


# --------------------------------------------------------------------------- binary


def _read_records(path: Path, layout: BinaryLayout) -> tuple[np.ndarray, np.ndarray]:
    """The images and the label bytes, (N, ``layout.label_bytes``), of one record file."""
    record = layout.record_size
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0 or size % record:
        raise DataError(
            f"{path}: truncated or corrupt: {size} bytes is not a whole number of "
            f"{record}-byte records"
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    labels = raw[:, : layout.label_bytes].astype(np.int64)
    return _pixels(raw[:, layout.label_bytes :], path), labels


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file of class names (not UTF-8)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_binary(folder: Path, info: DatasetInfo) -> RawData:
    """Read the official binary layout (``info.binary_layout``: e.g. ``cifar-10-batches-bin``).

    Record files, record size, the offsets of the label bytes and the names files all come
    from the layout.
    """
    layout = info.binary_layout
    out: dict[str, np.ndarray | None] = {}
    for split, files in _split_files(layout).items():
        parts = [_read_records(folder / name, layout) for name in files]
        labels = _join([lab for _, lab in parts])
        out[f"{split}_x"] = _join([x for x, _ in parts])
        out[f"{split}_y"] = labels[:, layout.label_offset]
        out[f"{split}_coarse"] = (
            labels[:, layout.coarse_label_offset]
            if layout.coarse_label_offset is not None
            else None
        )
    names = _read_names(folder / layout.names_file)
    coarse_names = (
        _read_names(folder / layout.coarse_names_file)
        if layout.coarse_names_file is not None
        else None
    )
    return RawData(
        class_names=names,
        coarse_names=coarse_names,
        files=[folder / name for name in layout.files],
        **out,
    )


# --------------------------------------------------------------------------- image folders


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.size != (32, 32):
                raise DataError(f"{path}: image is {im.size[0]}x{im.size[1]}, expected 32x32")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image_folder(root: Path, info: DatasetInfo) -> RawData:
    """Read ``root/train/<class>/*`` and ``root/test/<class>/*`` (32x32 images)."""
    names = _class_dirs(root / "train")
    if len(names) != info.num_classes:
        raise DataError(
            f"{root / 'train'}: found {len(names)} class folders, {info.title} has "
            f"{info.num_classes}"
        )
    # Folder order is alphabetical, which is also the official label order of both datasets.
    test_names = _class_dirs(root / "test")
    if test_names != names:
        raise DataError(f"{root / 'test'}: class folders differ from those in {root / 'train'}")
    arrays: dict[str, np.ndarray] = {}
    files: list[Path] = []
    for split in ("train", "test"):
        paths, labels = [], []
        for label, name in enumerate(names):
            found = sorted(
                p for p in (root / split / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
            paths += found
            labels += [label] * len(found)
        if not paths:
            raise DataError(f"{root / split}: no images found")
        with ThreadPoolExecutor(max_workers=4) as pool:
            images = list(pool.map(_load_image, paths))
        arrays[f"{split}_x"] = np.stack(images)
        arrays[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
        files += paths
    return RawData(class_names=names, files=files, **arrays)
