"""Find CIFAR on disk in whatever form it is, load it (through the cache), validate it, and
split it into train / val / test.

The public entry point is :func:`load_dataset`.
"""

from __future__ import annotations

import operator
import os
import shutil
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cifarlab.data import cache
from cifarlab.data.download import download_dataset, md5sum
from cifarlab.data.extract import new_folder, safe_extract
from cifarlab.data.formats import (
    RawData,
    image_files,
    read_binary,
    read_image_folder,
    read_python,
)
from cifarlab.data.sources import DATASETS, DEFAULT_DATASET, DatasetInfo, get_info
from cifarlab.errors import CifarlabError, DataError, SettingError
from cifarlab.files import file_kind

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class DataNotFound(DataError):
    """Nothing that looks like the dataset is at the given place."""


class DataWarning(UserWarning):
    """Something about the data is unusual but loadable (e.g. checksums differ)."""


# --------------------------------------------------------------------------- locating


def data_root(root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The folder to look in, and how it was chosen: the argument, ``$CIFARLAB_DATA``, or the
    user cache directory."""
    if root is not None:
        return Path(root).expanduser(), "--root"
    if env := os.environ.get("CIFARLAB_DATA"):
        return Path(env).expanduser(), "CIFARLAB_DATA"
    return cache.cache_dir() / "data", "cache"


@dataclass(frozen=True)
class Source:
    """One form of the dataset found on disk."""

    kind: str  # "python" | "binary" | "images" | "archive"
    path: Path
    archive_format: str | None = None  # for kind == "archive": "python" | "binary"


def _is_there(p: Path) -> bool:
    """Whether something that is not a folder is at ``p``: a file, or a FIFO, device or link
    where a file should be (which the reader then refuses, naming it, instead of the layout
    going unnoticed)."""
    return os.path.lexists(p) and not p.is_dir()


def _has_files(p: Path, names: tuple[str, ...]) -> bool:
    return all(_is_there(p / n) for n in names)


def _is_python_dir(p: Path, info: DatasetInfo) -> bool:
    return _has_files(p, info.python_layout.marker_files)


def _is_binary_dir(p: Path, info: DatasetInfo) -> bool:
    return _has_files(p, info.binary_layout.marker_files)


def _is_image_dir(p: Path) -> bool:
    return (p / "train").is_dir() and (p / "test").is_dir()


def _archive_format(p: Path, info: DatasetInfo) -> str | None:
    """Which official archive a file is, judged by its name ("binary" if it says so)."""
    for fmt, archive in info.archives.items():
        if p.name == archive.filename:
            return fmt
    if p.name.endswith(ARCHIVE_SUFFIXES):
        return "binary" if "bin" in p.name else "python"
    return None


def find_source(info: DatasetInfo, root: Path) -> Source:
    """Detect which form of ``info`` lives at ``root`` (a folder or an archive file)."""
    if _is_there(root):
        fmt = _archive_format(root, info)
        if fmt is None:
            try:
                kind = file_kind(os.stat(root).st_mode)
            except OSError:
                kind = "a broken link"
            raise DataError(
                f"{root}: not a folder nor a .tar.gz archive of {info.title} (it is {kind})"
            )
        return Source("archive", root, fmt)
    if not root.is_dir():
        raise DataNotFound(
            f"{root}: no such folder. Run `cifarlab download --dataset {info.name} --root {root}`, "
            "or point --root or "
            "CIFARLAB_DATA at a folder that holds the data"
        )
    py, binary = info.archives["python"], info.archives["binary"]
    for folder in (root, root / py.folder, root / binary.folder):
        if _is_python_dir(folder, info):
            return Source("python", folder)
        if _is_binary_dir(folder, info):
            return Source("binary", folder)
    for fmt, archive in info.archives.items():
        if _is_there(root / archive.filename):
            return Source("archive", root / archive.filename, fmt)
    for folder in (root, root / info.name):
        if _is_image_dir(folder):
            return Source("images", folder)
    raise DataNotFound(
        f"{info.title} not found in {root}: looked for {py.folder}/, {binary.folder}/, "
        f"{py.filename}, {binary.filename} and image folders train/<class>/, test/<class>/. "
        f"Run `cifarlab download --dataset {info.name}`, or point --root or CIFARLAB_DATA at a "
        "folder that holds one of them"
    )


# --------------------------------------------------------------------------- reading


def _extracted_dir(source: Source, info: DatasetInfo) -> Path:
    """Where an archive the user has is unpacked: in the cache (the data folder may be
    read-only), one folder per archive and version of it."""
    fp = cache.fingerprint([source.path])[:16]
    return cache.cache_dir() / "extracted" / f"{info.name}-{fp}"


def _extract_archive(source: Source, info: DatasetInfo) -> Source:
    """Unpack an archive the user has into the cache; an archive that turns out not to hold
    the dataset leaves nothing there."""
    target = _extracted_dir(source, info)
    folder = target / info.archives[source.archive_format or "python"].folder
    if not folder.is_dir():
        safe_extract(source.path, target)  # a refused archive leaves no folder behind
    for candidate in (folder, *[p for p in target.iterdir() if p.is_dir()]):
        if _is_python_dir(candidate, info):
            return Source("python", candidate)
        if _is_binary_dir(candidate, info):
            return Source("binary", candidate)
    shutil.rmtree(target, ignore_errors=True)
    raise DataError(
        f"{source.path}: the archive does not hold {info.title} in a known layout (what it "
        "held was removed again)"
    )


def _checksums(source: Source, info: DatasetInfo, files: list[Path]) -> dict[str, str]:
    """Compare with the official md5 sums where they are known."""
    if source.kind == "archive":
        official = {a.filename: a.md5 for a in info.archives.values()}.get(source.path.name)
        if official is None:
            return {"status": "unverified", "detail": "not an official archive name"}
        ok = md5sum(source.path, error=DataError) == official
        verdict = "matches" if ok else "differs from"
        return {
            "status": "official" if ok else "differs",
            "detail": f"md5 of {source.path.name} {verdict} the official sum",
        }
    if source.kind != "python" or not info.python_md5:
        return {
            "status": "unverified",
            "detail": f"no official per-file sums for the {source.kind} layout",
        }
    differ = [f.name for f in files if info.python_md5.get(f.name) != md5sum(f, error=DataError)]
    if not differ:
        return {"status": "official", "detail": "md5 of every file matches the official sums"}
    return {
        "status": "differs",
        "detail": f"md5 differs from the official files for {', '.join(differ)}",
    }


def _read(source: Source, info: DatasetInfo) -> RawData:
    readers = {"python": read_python, "binary": read_binary, "images": read_image_folder}
    return readers[source.kind](source.path, info)


def _validate(raw: RawData, info: DatasetInfo, where: Path) -> list[str]:
    """Raise on data that cannot be right; return warnings for data that is merely unusual."""
    notes = []
    if len(raw.class_names) != info.num_classes:
        raise DataError(f"{where}: {len(raw.class_names)} class names, expected {info.num_classes}")
    for split in ("train", "test"):
        x, y = getattr(raw, f"{split}_x"), getattr(raw, f"{split}_y")
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DataError(
                f"{where}: {split} images are {x.dtype} {x.shape}, expected uint8 (N, 32, 32, 3)"
            )
        if len(x) == 0 or len(y) != len(x):
            raise DataError(f"{where}: {split} has {len(x)} images and {len(y)} labels")
        label_sets = [("label", y, info.num_classes)]
        coarse = getattr(raw, f"{split}_coarse")
        if info.num_coarse_classes and coarse is not None:
            label_sets.append(("coarse label", coarse, info.num_coarse_classes))
        for what, labels, k in label_sets:
            if labels.min() < 0 or labels.max() >= k:
                raise DataError(
                    f"{where}: {split} {what}s range {labels.min()}..{labels.max()}, "
                    f"expected 0..{k - 1}"
                )
        counts = np.bincount(y, minlength=info.num_classes)
        if missing := [raw.class_names[k] for k in np.flatnonzero(counts == 0)]:
            listed = ", ".join(repr(m) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
            notes.append(f"{where}: {split} has no images of class {listed}")
        full = info.train_size if split == "train" else info.test_size
        if len(y) == full and not (counts == full // info.num_classes).all():
            notes.append(
                f"{where}: {split} class counts are uneven ({counts.min()}..{counts.max()}), "
                f"the official set has {full // info.num_classes} per class"
            )
    return notes


def read_raw(info: DatasetInfo, root: Path, *, use_cache: bool = True) -> tuple[RawData, dict]:
    """Read the dataset at ``root`` (through the cache) and return it with its metadata:
    ``source``, ``kind``, ``checksum`` and ``from_cache``."""
    source = find_source(info, root)
    files = [source.path] if source.kind == "archive" else None
    if files is None:
        files = _source_files(source, info)
    fp = cache.fingerprint(files)
    entry = cache.entry_dir(info.name, source.path, source.kind)
    hit = cache.load(entry, fp) if use_cache else None
    if hit is not None:
        arrays, meta = hit
        raw = RawData(
            class_names=meta["class_names"], coarse_names=meta.get("coarse_names"), **arrays
        )
        return raw, {**meta, "from_cache": True}
    if source.kind == "archive":
        readable = _extract_archive(source, info)
        try:
            raw = _read(readable, info)
            notes = _validate(raw, info, readable.path)
        except DataError as e:
            # what the archive held is of no use: do not leave it in the cache
            shutil.rmtree(_extracted_dir(source, info), ignore_errors=True)
            raise DataError(
                f"{e} (in the archive {source.path}; its extracted copy was removed)"
            ) from None
    else:
        readable = source
        raw = _read(readable, info)
        notes = _validate(raw, info, readable.path)
    meta = {
        "dataset": info.name,
        "source": str(source.path.resolve()),
        "kind": source.kind if source.kind != "archive" else f"{source.archive_format} archive",
        "fingerprint": fp,
        "checksum": _checksums(source, info, raw.files),
        "class_names": raw.class_names,
        "coarse_names": raw.coarse_names,
        "notes": notes,
    }
    if use_cache:
        cache.save(entry, {k: getattr(raw, k) for k in cache.ARRAY_KEYS}, meta)
    return raw, {**meta, "from_cache": False}


def _source_files(source: Source, info: DatasetInfo) -> list[Path]:
    """The files a reader will open, for the cache fingerprint (missing ones are the reader's
    job to report, so they are left out here)."""
    p = source.path
    if source.kind == "python":
        names = info.python_layout.files
    elif source.kind == "binary":
        names = info.binary_layout.files
    else:
        # one stat per file, in the fingerprint (a file that is not regular is the reader's
        # to refuse, naming it)
        return image_files(p)
    return [p / n for n in names if _is_regular(p / n)]


def _is_regular(p: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(p).st_mode)
    except OSError:
        return False


# --------------------------------------------------------------------------- splits


@dataclass
class Split(Dataset):
    """One split: uint8 NHWC images and int64 labels (both torch tensors).

    The tensors are the fast path: hand ``images`` and ``labels`` to
    :class:`cifarlab.data.loader.BatchLoader`, which keeps them on the device and batches,
    augments and normalizes them as tensor ops.

    A split is also a map-style :class:`torch.utils.data.Dataset`, for torchvision-style
    pipelines: ``split[i]`` is ``(image, label)`` with ``image`` a uint8 CHW tensor
    (3 × 32 × 32, values 0..255: not scaled, not normalized) and ``label`` an ``int`` from
    ``labels``; ``len(split)`` is the number of images. ``transform`` (applied to the image)
    and ``target_transform`` (applied to the label) are optional callables, given here or set
    later as attributes, e.g. ``torchvision.transforms.v2`` ones such as
    ``ToDtype(torch.float32, scale=True)``. So ``DataLoader(ds.train, batch_size=64,
    shuffle=True)`` yields ``(uint8 N×3×32×32, int64 N)`` batches without a transform.
    Unlike torchvision's ``CIFAR10`` no PIL image is made: transforms get a tensor.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor  # the chosen label set (CIFAR-100: fine or coarse)
    indices: torch.Tensor  # positions in the original train or test arrays
    # CIFAR-100 only: both label sets, whichever was chosen as ``labels``
    fine_labels: torch.Tensor | None = None
    coarse_labels: torch.Tensor | None = None
    # For ``split[i]`` only (BatchLoader does not use them)
    transform: Callable[[torch.Tensor], Any] | None = field(default=None, compare=False)
    target_transform: Callable[[int], Any] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """``(image, label)``: a uint8 CHW image tensor and an int label, each through its
        transform if one is set."""
        i = operator.index(index)  # ints, numpy and 0-d tensor integers; not slices
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {index} is out of range for the {self.name} split of {n}")
        image: Any = self.images[i].permute(2, 0, 1).contiguous()  # HWC -> CHW, its own copy
        label: Any = int(self.labels[i])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label


def stratified_holdout(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced hold-out of ``size`` items, deterministic for a seed.

    Each class gives its share of ``size`` (largest remainders settle the rounding); within
    a class the picks come from a seeded permutation. Returned sorted.
    """
    n = len(labels)
    if not 0 <= size < n:
        raise SettingError("val_size", f"must be between 0 and {n - 1}, got {size}")
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / n
    take = np.floor(exact).astype(int)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: size - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


@dataclass
class CifarDataset:
    """A loaded dataset: three splits, the class names of the chosen label kind, and where it
    came from."""

    info: DatasetInfo
    labels_kind: str  # "fine" | "coarse"
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    meta: dict = field(default_factory=dict)
    # CIFAR-100 only: both sets of names (``class_names`` is one of them)
    fine_names: list[str] | None = None
    coarse_names: list[str] | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.info.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.info.std

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise CifarlabError(f"unknown split {name!r}: choose train, val or test")
        return getattr(self, name)


def load_dataset(
    name: str = DEFAULT_DATASET,
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    val_size: int = 5000,
    labels: str = "fine",
    val_seed: int = 0,
    use_cache: bool = True,
) -> CifarDataset:
    """Load CIFAR-10 or CIFAR-100 as uint8 NHWC tensors split into train / val / test.

    ``root`` defaults to ``$CIFARLAB_DATA``, then the user cache directory. ``download=True``
    fetches the official archive when nothing is found. ``val_size`` images are held out of
    the training set, stratified by class and the same for every run (``val_seed``).
    ``labels`` picks CIFAR-100's "fine" (100) or "coarse" (20) labels.
    """
    if val_size < 0:  # before anything is looked for (its upper bound: stratified_holdout's)
        raise SettingError("val_size", f"must be at least 0, got {val_size}")
    info = get_info(name)
    _check_labels(info, labels)
    raw, meta = _read_or_download(info, root, download=download, use_cache=use_cache)
    _warn_unusual(info, meta)
    train_y, test_y, names = _chosen_labels(raw, labels, meta["source"])
    train_idx, val_idx = _holdout(raw, val_size, val_seed)
    both = raw.train_coarse is not None and raw.test_coarse is not None
    train, val, test = _splits(raw, train_y, test_y, train_idx if val_size else None, val_idx, both)
    return CifarDataset(
        info=info,
        labels_kind=labels,
        class_names=list(names),
        train=train,
        val=val,
        test=test,
        meta=meta,
        fine_names=list(raw.class_names) if both else None,
        coarse_names=list(raw.coarse_names or []) if both else None,
    )


def _check_labels(info: DatasetInfo, labels: str) -> None:
    """Refuse a label kind that is not "fine" or "coarse", or that ``info`` does not have."""
    if labels not in ("fine", "coarse"):
        raise SettingError("labels", f"must be fine or coarse, got {labels!r}")
    if labels == "coarse" and info.num_coarse_classes is None:
        having = " or ".join(d.title for d in DATASETS.values() if d.num_coarse_classes)
        raise CifarlabError(f"{info.title} has no coarse labels (only {having} does)")


def _read_or_download(
    info: DatasetInfo, root: str | os.PathLike | None, *, download: bool, use_cache: bool
) -> tuple[RawData, dict]:
    """Read the dataset from the folder :func:`data_root` picks for ``root``, downloading it
    there first if it is not found and ``download`` is set; ``meta["root_from"]`` says how the
    folder was picked."""
    folder, how = data_root(root)
    try:
        raw, meta = read_raw(info, folder, use_cache=use_cache)
    except DataNotFound:
        if not download:
            raise
        with new_folder(folder):  # a folder that cannot be made says why (full, read-only)
            pass
        download_dataset(info.name, folder)
        raw, meta = read_raw(info, folder, use_cache=use_cache)
    meta["root_from"] = how
    return raw, meta


def _warn_unusual(info: DatasetInfo, meta: dict) -> None:
    """A DataWarning for md5 sums that differ from the official ones and for every note of
    the validation; ``stacklevel=3`` names the caller of :func:`load_dataset`."""
    if meta["checksum"]["status"] == "differs":
        warnings.warn(
            f"{meta['source']}: md5 sums differ from the official {info.title} files; "
            "loading it anyway",
            DataWarning,
            stacklevel=3,
        )
    for note in meta.get("notes", []):
        warnings.warn(note, DataWarning, stacklevel=3)


def _chosen_labels(
    raw: RawData, labels: str, source: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The train labels, test labels and class names of the ``labels`` kind."""
    if labels == "coarse":
        if raw.train_coarse is None or raw.test_coarse is None:
            raise DataError(f"{source}: this copy has no coarse labels")
        return raw.train_coarse, raw.test_coarse, raw.coarse_names or []
    return raw.train_y, raw.test_y, raw.class_names


def _holdout(raw: RawData, val_size: int, val_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions in the training arrays that train, and those held out to validate."""
    # Stratify on the fine labels so the hold-out is the same whichever labels are trained on.
    val_idx = stratified_holdout(np.asarray(raw.train_y), val_size, val_seed)
    keep = np.ones(len(raw.train_y), dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep), val_idx


def _splits(
    raw: RawData,
    train_y: np.ndarray,
    test_y: np.ndarray,
    train_idx: np.ndarray | None,
    val_idx: np.ndarray,
    both: bool,
) -> tuple[Split, Split, Split]:
    """The train, val and test splits: ``train_idx`` (None: all) and ``val_idx`` of the
    training arrays, and the test arrays, labelled ``train_y`` / ``test_y``; with ``both``,
    each split also carries the fine and the coarse labels."""
    train_fine, train_coarse = (raw.train_y, raw.train_coarse) if both else (None, None)
    test_fine, test_coarse = (raw.test_y, raw.test_coarse) if both else (None, None)
    return (
        _make_split("train", raw.train_x, train_y, train_idx, train_fine, train_coarse),
        _make_split("val", raw.train_x, train_y, val_idx, train_fine, train_coarse),
        _make_split("test", raw.test_x, test_y, None, test_fine, test_coarse),
    )


def _make_split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    idx: np.ndarray | None,
    fine: np.ndarray | None,
    coarse: np.ndarray | None,
) -> Split:
    """The split ``name`` of the items ``idx`` (None: all) of images ``x`` and labels ``y``,
    with the ``fine`` and ``coarse`` label sets where given."""
    i = torch.arange(len(y)) if idx is None else torch.from_numpy(idx)
    rows = None if idx is None else i
    return Split(
        name,
        _tensor(x, rows, np.uint8),
        _tensor(y, rows),
        i,
        _tensor(fine, rows),
        _tensor(coarse, rows),
    )


def _tensor(
    a: np.ndarray | None, rows: torch.Tensor | None, dtype: type = np.int64
) -> torch.Tensor | None:
    """``a`` as a tensor of ``dtype``, only its ``rows`` (None: all); None for None."""
    if a is None:
        return None
    t = torch.from_numpy(np.asarray(a, dtype=dtype))
    return t if rows is None else t[rows]
