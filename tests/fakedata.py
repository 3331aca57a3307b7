"""Write tiny CIFAR datasets in every official layout, for the tests.

Images are random but seeded; labels cycle through the classes so every class is present.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from cifarlab.data.sources import (
    CIFAR10_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    DatasetInfo,
)


def arrays(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random NHWC uint8 images and cycling labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % num_classes
    return x, y


def planes(x: np.ndarray) -> np.ndarray:
    """NHWC -> the official (N, 3072) R, G, B planes."""
    return x.transpose(0, 3, 1, 2).reshape(len(x), 3072)


def _key(name: str, str_keys: bool) -> str | bytes:
    return name if str_keys else name.encode()


def _dump(path: Path, d: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def write_cifar10_python(
    root: Path, per_batch: int = 20, test: int = 20, *, str_keys: bool = False, seed: int = 0
) -> dict:
    """``root/cifar-10-batches-py`` with five train batches and a test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def k(s: str) -> str | bytes:
        return _key(s, str_keys)

    xs, ys = [], []
    for i in range(1, 6):
        x, y = arrays(per_batch, 10, seed + i)
        y = (y + i) % 10
        _dump(folder / f"data_batch_{i}", {k("data"): planes(x), k("labels"): y.tolist(),
                                           k("batch_label"): k(f"batch {i}")})  # fmt: skip
        xs.append(x)
        ys.append(y)
    tx, ty = arrays(test, 10, seed + 100)
    _dump(folder / "test_batch", {k("data"): planes(tx), k("labels"): ty.tolist()})
    _dump(folder / "batches.meta", {k("label_names"): [k(n) for n in CIFAR10_CLASSES]})
    return {"train_x": np.concatenate(xs), "train_y": np.concatenate(ys), "test_x": tx,
            "test_y": ty, "folder": folder}  # fmt: skip


def _cifar100_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, fine = arrays(n, 100, seed)
    coarse = fine % 20  # any fixed mapping will do for the tests
    return x, fine, coarse


def write_cifar100_python(
    root: Path, train: int = 200, test: int = 100, *, str_keys: bool = False, seed: int = 0
) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)

    def k(s: str) -> str | bytes:
        return _key(s, str_keys)

    out: dict = {"folder": folder}
    for split, n in (("train", train), ("test", test)):
        x, fine, coarse = _cifar100_arrays(n, seed + (split == "test"))
        _dump(folder / split, {k("data"): planes(x), k("fine_labels"): fine.tolist(),
                               k("coarse_labels"): coarse.tolist()})  # fmt: skip
        out.update({f"{split}_x": x, f"{split}_y": fine, f"{split}_coarse": coarse})
    names = {k("fine_label_names"): [k(n) for n in CIFAR100_FINE_CLASSES],
             k("coarse_label_names"): [k(n) for n in CIFAR100_COARSE_CLASSES]}  # fmt: skip
    _dump(folder / "meta", names)
    return out


def write_cifar10_binary(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> dict:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{j}.bin" for j in range(1, 6)] + ["test_batch.bin"]):
        x, y = arrays(per_batch if i < 5 else test, 10, seed + i)
        records = np.concatenate([y[:, None].astype(np.uint8), planes(x)], axis=1)
        records.tofile(folder / name)
        xs.append(x)
        ys.append(y)
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    return {"train_x": np.concatenate(xs[:5]), "train_y": np.concatenate(ys[:5]),
            "test_x": xs[5], "test_y": ys[5], "folder": folder}  # fmt: skip


def write_cifar100_binary(root: Path, train: int = 200, test: int = 100, seed: int = 0) -> dict:
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {"folder": folder}
    for split, n in (("train", train), ("test", test)):
        x, fine, coarse = _cifar100_arrays(n, seed + (split == "test"))
        records = np.concatenate(
            [coarse[:, None].astype(np.uint8), fine[:, None].astype(np.uint8), planes(x)], axis=1
        )
        records.tofile(folder / f"{split}.bin")
        out.update({f"{split}_x": x, f"{split}_y": fine, f"{split}_coarse": coarse})
    (folder / "fine_label_names.txt").write_text("\n".join(CIFAR100_FINE_CLASSES) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(CIFAR100_COARSE_CLASSES) + "\n")
    return out


def write_image_folder(root: Path, per_class: int = 3, seed: int = 0, ext: str = ".png") -> dict:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` for CIFAR-10, lossless PNGs."""
    out: dict = {"folder": root}
    for split in ("train", "test"):
        x, y = arrays(per_class * 10, 10, seed + (split == "test"))
        order = np.argsort(y, kind="stable")  # the reader lists class by class
        x, y = x[order], y[order]
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            d = root / split / CIFAR10_CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}{ext}")
        out.update({f"{split}_x": x, f"{split}_y": y})
    return out


def make_tar_gz(folder: Path, archive: Path) -> Path:
    """Pack ``folder`` as the official archives do: one top-level folder."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def write_cifar100_learnable(
    root: Path, per_class: int = 20, test_per_class: int = 5, seed: int = 0
) -> dict:
    """``root/cifar-100-python`` whose images a model can learn: each fine class is a fixed
    random 4×4 colour pattern, upsampled to 32×32, plus noise. Coarse label = fine // 5."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(100, 4, 4, 3)).repeat(8, 1).repeat(8, 2)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {"folder": folder}
    for split, n in (("train", per_class), ("test", test_per_class)):
        fine = np.tile(np.arange(100), n)
        noise = rng.normal(0, 40, size=(len(fine), 32, 32, 3))
        x = np.clip(prototypes[fine] + noise, 0, 255).astype(np.uint8)
        coarse = fine // 5
        _dump(folder / split, {b"data": planes(x), b"fine_labels": fine.tolist(),
                               b"coarse_labels": coarse.tolist()})  # fmt: skip
        out.update({f"{split}_x": x, f"{split}_y": fine, f"{split}_coarse": coarse})
    names = {
        b"fine_label_names": [n.encode() for n in CIFAR100_FINE_CLASSES],
        b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_CLASSES],
    }
    _dump(folder / "meta", names)
    return out


def write_layout(
    root: Path, info: DatasetInfo, fmt: str, train: int, test: int, *, seed: int = 0
) -> dict:
    """``root/<info.archives[fmt].folder>`` in ``info``'s python or binary layout, written from
    the info's fields alone (unlike the writers above, which spell out the official names).

    Each split's images are spread evenly over its files; coarse labels (fine % the number
    of coarse classes) are written where the layout has them. In binary records the label
    bytes that hold neither label are 255, so reading the wrong offset shows.
    """
    folder = root / info.archives[fmt].folder
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {"folder": folder}
    coarse_k = info.num_coarse_classes
    files_of = info.python_layout if fmt == "python" else info.binary_layout
    for split, n, files in (
        ("train", train, files_of.train_files),
        ("test", test, files_of.test_files),
    ):
        x, y = arrays(n, info.num_classes, seed + (split == "test"))
        coarse = y % coarse_k if coarse_k else None
        out.update({f"{split}_x": x, f"{split}_y": y, f"{split}_coarse": coarse})
        for name, part in zip(files, np.array_split(np.arange(n), len(files)), strict=True):
            if fmt == "python":
                layout = info.python_layout
                d = {layout.data_key: planes(x[part]), layout.label_key: y[part].tolist()}
                if layout.coarse_label_key and coarse is not None:
                    d[layout.coarse_label_key] = coarse[part].tolist()
                _dump(folder / name, d)
            else:
                b = info.binary_layout
                labels = np.full((len(part), b.label_bytes), 255, np.uint8)
                labels[:, b.label_offset] = y[part]
                if b.coarse_label_offset is not None and coarse is not None:
                    labels[:, b.coarse_label_offset] = coarse[part]
                np.concatenate([labels, planes(x[part])], axis=1).tofile(folder / name)
    if fmt == "python":
        layout = info.python_layout
        meta = {layout.names_key: list(info.class_names)}
        if layout.coarse_names_key and info.coarse_class_names:
            meta[layout.coarse_names_key] = list(info.coarse_class_names)
        _dump(folder / layout.meta_file, meta)
    else:
        b = info.binary_layout
        (folder / b.names_file).write_text("\n".join(info.class_names) + "\n")
        if b.coarse_names_file and info.coarse_class_names:
            (folder / b.coarse_names_file).write_text("\n".join(info.coarse_class_names) + "\n")
    return out
