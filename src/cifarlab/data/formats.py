"""Readers for every form CIFAR comes in: official python pickles, official binary records,
and image folders. Each reader returns a :class:`RawData` of NHWC uint8 numpy arrays.

Every file is opened with :func:`cifarlab.files.open_input`: a FIFO, a device or a folder
where a data file should be is an error naming it (never a hang), and so is a file over its
size limit (``CIFARLAB_MAX_DATA_FILE_MB``, ``CIFARLAB_MAX_IMAGE_FILE_MB``).

The pickles are read with a restricted unpickler: ``pickle.load`` runs whatever code a file
names, so only the handful of numpy constructors a CIFAR batch needs are admitted, and those
only through stand-ins that check what they are asked for (a plain numeric dtype; an array
whose data is all there, so that a few bytes cannot ask numpy for gigabytes) before numpy
allocates anything. Lists are checked too before they become arrays (a pickle can repeat one
list by reference many times over).
"""

from __future__ import annotations

import codecs
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cifarlab import limits
from cifarlab.data.sources import IMAGE_BYTES, BinaryLayout, DatasetInfo, PythonLayout
from cifarlab.errors import DataError, one_line
from cifarlab.files import open_input, read_input

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
# The decoders an image folder may use (what the suffixes above name): a file is never handed
# to another of Pillow's plugins, whatever its content says it is (EPS would run Ghostscript).
PIL_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF")


def open_image(file: Any) -> Any:
    """``PIL.Image.open`` limited to :data:`PIL_FORMATS`. Their plugins are imported here
    first: otherwise Pillow imports all of its ~45 plugins on the first file of a format it has
    not loaded yet (0.1 s, once per process)."""
    from PIL import (  # noqa: F401 - imported to register the decoders
        BmpImagePlugin,
        GifImagePlugin,
        Image,
        JpegImagePlugin,
        PngImagePlugin,
        TiffImagePlugin,
        WebPImagePlugin,
    )

    return Image.open(file, formats=PIL_FORMATS)


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


def _data_limit() -> int:
    return limits.megabytes(limits.MAX_DATA_FILE)


def _open_data(path: Path):  # noqa: ANN202 - a binary file object
    """A dataset file, opened only if it is a regular file within the size limit."""
    return open_input(path, _data_limit(), DataError, f"{limits.MAX_DATA_FILE.env}=MB")


# --------------------------------------------------------------------------- pickles


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something outside the CIFAR format."""


class _BadArray(pickle.UnpicklingError):
    """An array in the pickle does not hold what it claims (a shape its data cannot fill)."""


# The dtypes a CIFAR array may have: plain numbers. No objects (arbitrary Python values), no
# structured or sub-array dtypes (whose item size the header alone could make huge).
_DTYPES = frozenset(["b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"])
_MAX_DIMS = 8
# ...and fixed-width text (file names saved as a numpy array by a re-saved copy): S or U of at
# most 9,999 characters, its size known from the name alone.
_TEXT_DTYPE = re.compile(r"[SU][1-9][0-9]{0,3}")


def _text(value: Any) -> Any:
    """bytes (what Python 2 pickles hold under encoding="bytes") as str."""
    return value.decode("latin1") if isinstance(value, bytes) else value


class _StandIn:
    """What ``find_class`` hands out instead of numpy's own callables: an instance without
    attributes (``__slots__``) whose ``__setstate__`` refuses, so that a pickle cannot alter it
    (BUILD on a function would set its attributes) nor reach numpy except through ``__call__``."""

    __slots__ = ()
    name = "?"

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"{self.name} with a state")

    def __reduce__(self) -> Any:  # pragma: no cover - never pickled
        raise TypeError("not picklable")


class _DtypeState:
    """A dtype as the pickle describes it; becomes a numpy dtype only if it is a plain number."""

    __slots__ = ("spec", "order")

    def __init__(self, spec: str) -> None:
        self.spec, self.order = spec, "="

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 5:
            raise UnsafePickleError("a numpy dtype with an unknown state")
        order = _text(state[1] if isinstance(state[0], int) else state[0])
        if any(x is not None for x in state[2:5]):
            raise UnsafePickleError("a structured or sub-array numpy dtype")
        if order not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"a numpy dtype with byte order {order!r}")
        self.order = order

    def dtype(self) -> np.dtype:
        return np.dtype(self.spec if self.order in ("=", "|") else self.order + self.spec)


class _ArrayState:
    """An array as the pickle describes it (``_reconstruct`` then BUILD); checked and made
    into a numpy array when its state arrives."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, rawdata), or the same without the version
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _BadArray("an array with an unknown state")
        shape, dtype, fortran, data = state[-4:]
        self.array = _array(data, dtype, shape, "F" if fortran else "C")


def _dtype_of(dtype: Any) -> np.dtype:
    if not isinstance(dtype, _DtypeState):
        raise UnsafePickleError(f"an array of {type(dtype).__name__}, not of a numpy dtype")
    return dtype.dtype()


def _array(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """The array of ``shape`` over ``data``, if the data is all there (no allocation before
    the sizes are known to agree)."""
    dt = _dtype_of(dtype)
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, tuple) or len(shape) > _MAX_DIMS:
        raise _BadArray(f"an array with shape {one_line(repr(shape), 60)}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _BadArray(f"an array with shape {one_line(repr(shape), 60)}")
    count = 1
    for d in shape:
        count *= d
    if not isinstance(data, (bytes, bytearray)):
        raise _BadArray(f"an array whose data is a {type(data).__name__}, not bytes")
    need = count * dt.itemsize
    if len(data) != need:
        raise _BadArray(
            f"an array of shape {shape} needs {need:,} bytes but holds {len(data):,} "
            "(damaged, or crafted to make numpy allocate what the file does not hold)"
        )
    order = _text(order)
    arr = np.frombuffer(data, dtype=dt, count=count)
    return arr.reshape(shape, order="F" if order == "F" else "C")


class _Ndarray(_StandIn):
    __slots__ = ()
    name = "numpy.ndarray"

    def __call__(self, *args: Any, **kw: Any) -> Any:
        raise UnsafePickleError("numpy.ndarray called directly")


class _Reconstruct(_StandIn):
    __slots__ = ()
    name = "numpy _reconstruct"

    def __call__(self, cls: Any = None, shape: Any = None, typecode: Any = None) -> _ArrayState:
        if not isinstance(cls, _Ndarray):
            raise UnsafePickleError(f"numpy _reconstruct of {type(cls).__name__}")
        return _ArrayState()


class _FromBuffer(_StandIn):
    """numpy's ``_frombuffer`` (arrays pickled with protocol 5)."""

    __slots__ = ()
    name = "numpy _frombuffer"

    def __call__(self, buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
        return _array(buf, dtype, shape, order)


class _Dtype(_StandIn):
    __slots__ = ()
    name = "numpy.dtype"

    def __call__(self, spec: Any, align: Any = False, copy: Any = False) -> _DtypeState:
        spec = _text(spec)
        if not isinstance(spec, str) or not (spec in _DTYPES or _TEXT_DTYPE.fullmatch(spec)):
            raise UnsafePickleError(f"numpy.dtype({one_line(repr(spec), 60)})")
        return _DtypeState(spec)


class _Scalar(_StandIn):
    """numpy's scalar rebuilder (a dtype and raw bytes): labels saved as ``list(array)``."""

    __slots__ = ()
    name = "numpy scalar"

    def __call__(self, dtype: Any, data: Any = None) -> Any:
        dt = _dtype_of(dtype)
        if not isinstance(data, (bytes, bytearray)) or len(data) != dt.itemsize:
            raise _BadArray(f"a numpy scalar of {dt} without its {dt.itemsize} bytes")
        return np.frombuffer(data, dtype=dt, count=1)[0]


class _Encode(_StandIn):
    """``_codecs.encode(str, "latin1")``: how Python 3 writes bytes at protocol 2.

    Each call makes new bytes, and a pickle may call it again and again on one (memoized)
    string: the bytes made in one load may not add up to more than the file's size, which is
    all a real file can need (the pickler memoizes the bytes it writes, not the calls)."""

    __slots__ = ("left",)
    name = "_codecs.encode"

    def __init__(self, budget: int) -> None:
        self.left = budget

    def __call__(self, obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        if not isinstance(obj, str) or not isinstance(encoding, str):
            raise UnsafePickleError("_codecs.encode of something other than text")
        if codecs.lookup(encoding).name != "iso8859-1":
            raise UnsafePickleError(f"_codecs.encode to {one_line(repr(encoding), 40)}")
        self.left -= len(obj)
        if self.left < 0:
            raise _BadArray("its strings, encoded, add up to more than the file holds")
        return obj.encode("latin1")


class _EmptyBytes(_StandIn):
    """``bytes()``: how Python 3 writes empty bytes at protocol 2 (an empty array's data)."""

    __slots__ = ()
    name = "bytes"

    def __call__(self, *args: Any) -> bytes:
        if args:
            raise UnsafePickleError("bytes called with arguments")
        return b""


# Everything a CIFAR pickle may name. Files written by numpy 1.x say numpy.core, by 2.x
# numpy._core; _codecs.encode (made per load, below) and bytes() (when they are empty) appear
# when Python 3 writes bytes at protocol 2.
_ALLOWED_GLOBALS: dict[tuple[str, str], _StandIn] = {
    ("numpy.core.multiarray", "_reconstruct"): _Reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _Reconstruct(),
    ("numpy.core.multiarray", "scalar"): _Scalar(),
    ("numpy._core.multiarray", "scalar"): _Scalar(),
    ("numpy.core.numeric", "_frombuffer"): _FromBuffer(),
    ("numpy._core.numeric", "_frombuffer"): _FromBuffer(),
    ("numpy", "ndarray"): _Ndarray(),
    ("numpy", "dtype"): _Dtype(),
    ("__builtin__", "bytes"): _EmptyBytes(),
    ("builtins", "bytes"): _EmptyBytes(),
}


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, size: int) -> None:
        super().__init__(file, encoding="bytes")
        self.encode = _Encode(size)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return self.encode
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UnsafePickleError(f"{module}.{name}")
        return found


def _array_of(value: Any, path: Path) -> Any:
    if isinstance(value, _ArrayState):
        if value.array is None:
            raise DataError(f"{path}: an array in the pickle has no data")
        return value.array
    return value


def _resolved(value: Any, path: Path, done: dict[int, Any]) -> Any:
    """An _ArrayState as its array (one level into lists too: that is all a CIFAR file
    nests); anything deeper stays what it is and fails the checks that follow. ``done``
    holds the lists already seen: a list the pickle references many times is gone through
    once."""
    if isinstance(value, _ArrayState):
        return _array_of(value, path)
    if not isinstance(value, (list, tuple)):
        return value
    if id(value) not in done:
        if any(isinstance(v, _ArrayState) for v in value):
            done[id(value)] = [_array_of(v, path) for v in value]
        else:
            done[id(value)] = value
    return done[id(value)]


def _load_pickle(path: Path) -> tuple[dict[str, Any], int]:
    """One CIFAR pickle (keys as str) and the size of its file."""
    f = open_input(path, _data_limit(), DataError, f"{limits.MAX_DATA_FILE.env}=MB")
    size = os.fstat(f.fileno()).st_size
    try:
        # Straight from the file (reading it into memory first cost a copy: +30 % parse time).
        # A length field larger than the file reserves address space that is never touched
        # (the read comes up short: "truncated"); the arrays are checked against `size`.
        with f:
            obj = _CifarUnpickler(f, size).load()
    except UnsafePickleError as e:
        raise DataError(
            f"{path}: refused to unpickle {one_line(e, 120)}: a CIFAR file holds only arrays, "
            "lists and strings, so this file is not one (it may be malicious)"
        ) from None
    except _BadArray as e:
        raise DataError(f"{path}: corrupt pickle: {one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
        raise DataError(
            f"{path}: truncated or corrupt pickle ({type(e).__name__}: {one_line(e, 120)})"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    done: dict[int, Any] = {}
    return {_text(k): _resolved(v, path, done) for k, v in obj.items()}, size


def load_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle safely; keys (bytes or str) come back as str."""
    return _load_pickle(path)[0]


def _get(d: dict[str, Any], key: str, path: Path) -> Any:
    if key not in d:
        keys = sorted(one_line(k, 40) for k in d)
        shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
        raise DataError(f"{path}: missing key {key!r} (has {shown or 'no keys'})")
    return d[key]


# What a value in a CIFAR list may be: a number (pixels, labels) of Python or numpy.
_NUMBER_TYPES = (int, float, np.integer, np.floating, np.bool_)
# Lists a pickle makes of shared references can expand to far more values than the file
# has bytes; up to this many values (or the file's size, if larger) are made into an array.
_MIN_LIST_VALUES = 1 << 24


def _kind_of(value: Any) -> str:
    """How a non-number value is named in a message ("<U1", "list", ...)."""
    if isinstance(value, (str, bytes)) and len(value) <= 1024:
        return str(np.asarray(value).dtype)
    return type(value).__name__


def _check_rows(rows: list | tuple, path: Path, key: str, max_values: int) -> None:
    """Before ``np.asarray``: ``rows`` must be at most ``max_values`` numbers in all, in rows
    of :data:`IMAGE_BYTES` numbers (each distinct row is checked once)."""
    n = len(rows)
    if n * IMAGE_BYTES > max_values:
        raise DataError(
            f"{path}: {key!r} lists {n:,} images, {n * IMAGE_BYTES:,} values: more than the "
            "file can hold (rows repeated by reference: a crafted or damaged pickle)"
        )
    seen: set[int] = set()
    for row in rows:
        if id(row) in seen:
            continue
        seen.add(id(row))
        if isinstance(row, np.ndarray):
            if row.shape != (IMAGE_BYTES,):
                raise DataError(
                    f"{path}: {key!r} has a row of shape {row.shape}, expected ({IMAGE_BYTES},)"
                )
            continue
        if not isinstance(row, (list, tuple)):
            raise DataError(
                f"{path}: {key!r} is a list of {_kind_of(row)}, expected rows of "
                f"{IMAGE_BYTES} pixel values"
            )
        if len(row) != IMAGE_BYTES:
            raise DataError(
                f"{path}: {key!r} has shape ({n}, {len(row)}), expected (N, {IMAGE_BYTES})"
            )
        for v in row:
            if not isinstance(v, _NUMBER_TYPES):
                raise DataError(
                    f"{path}: {key!r} holds {_kind_of(v)} values, expected integers 0..255"
                )


def _pixels(data: Any, path: Path, key: str = "data", file_size: int = 0) -> np.ndarray:
    """(N, 3072) planes R, G, B row-major -> (N, 32, 32, 3)."""
    if isinstance(data, np.ndarray):
        arr = data
    elif isinstance(data, (list, tuple)):
        _check_rows(data, path, key, max(file_size, _MIN_LIST_VALUES))
        try:
            arr = np.asarray(data)
        except (TypeError, ValueError, OverflowError) as e:
            raise DataError(f"{path}: {key!r} is not an array of pixels ({one_line(e)})") from None
    else:
        raise DataError(
            f"{path}: {key!r} is a {_kind_of(data)}, not an array of pixels (N, {IMAGE_BYTES})"
        )
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
    def bad(why: str) -> DataError:
        return DataError(f"{path}: {key!r} must be a list of class numbers ({why})")

    if isinstance(values, (list, tuple)):
        # the count first: a list of n references to one big list must not become an array
        if len(values) != n:
            raise DataError(f"{path}: {len(values)} {key} for {n} images")
        for v in values:
            if not isinstance(v, _NUMBER_TYPES):
                raise bad(f"{type(values).__name__} of {_kind_of(v)}")
    elif not isinstance(values, np.ndarray):
        raise bad(_kind_of(values))
    try:
        arr = np.asarray(values)
        whole_floats = arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr % 1 == 0).all()
        if arr.dtype.kind not in "iub" and not whole_floats:
            raise TypeError(f"{type(values).__name__} of {arr.dtype}")
        arr = arr.astype(np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as e:
        raise bad(one_line(e)) from None
    if arr.shape[0] != n:
        raise DataError(f"{path}: {arr.shape[0]} {key} for {n} images")
    return arr


_MAX_NAMES = 100_000


def _names(values: Any, key: str, path: Path) -> list[str]:
    """A list of class names (bytes or str); each distinct object is decoded once."""
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{path}: {key!r} must be a list of names, found {_kind_of(values)}")
    if len(values) > _MAX_NAMES:
        raise DataError(f"{path}: {key!r} lists {len(values):,} names, far too many")
    done: dict[int, str] = {}
    out = []
    for v in values:
        if id(v) not in done:
            if not isinstance(v, (str, bytes)):
                raise DataError(f"{path}: {key!r} holds a {_kind_of(v)}, not a name")
            done[id(v)] = _text(v)
        out.append(done[id(v)])
    return out


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
    names = _names(_get(meta, layout.names_key, meta_file), layout.names_key, meta_file)
    coarse_key = layout.coarse_label_key
    out: dict[str, np.ndarray | None] = {}
    for split, files in _split_files(layout).items():
        xs, ys, coarse = [], [], []
        for name in files:
            p = folder / name
            d, size = _load_pickle(p)
            x = _pixels(_get(d, layout.data_key, p), p, layout.data_key, size)
            xs.append(x)
            ys.append(_labels(_get(d, layout.label_key, p), len(x), layout.label_key, p))
            if coarse_key is not None:
                coarse.append(_labels(_get(d, coarse_key, p), len(x), coarse_key, p))
        out[f"{split}_x"], out[f"{split}_y"] = _join(xs), _join(ys)
        out[f"{split}_coarse"] = _join(coarse) if coarse else None
    coarse_names = (
        _names(_get(meta, layout.coarse_names_key, meta_file), layout.coarse_names_key, meta_file)
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
    with _open_data(path) as f:
        size = f.seek(0, 2)
        f.seek(0)
        if size == 0 or size % record:
            raise DataError(
                f"{path}: truncated or corrupt: {size} bytes is not a whole number of "
                f"{record}-byte records"
            )
        try:
            raw = np.fromfile(f, dtype=np.uint8, count=size)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read ({one_line(e)})") from None
    if raw.size != size:
        raise DataError(f"{path}: changed while it was read ({raw.size} of {size} bytes)")
    raw = raw.reshape(-1, record)
    labels = raw[:, : layout.label_bytes].astype(np.int64)
    return _pixels(raw[:, layout.label_bytes :], path), labels


def _read_names(path: Path) -> list[str]:
    data = read_input(path, _data_limit(), DataError, f"{limits.MAX_DATA_FILE.env}=MB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file of class names (not UTF-8)") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) > _MAX_NAMES:
        raise DataError(f"{path}: {len(names):,} class names, far too many")
    return names


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
    """One 32x32 image as (32, 32, 3) uint8. The size is checked from the header, before
    anything is decoded; any failure of the decoder is a DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    with open_input(
        path,
        limits.megabytes(limits.MAX_IMAGE_FILE),
        DataError,
        f"{limits.MAX_IMAGE_FILE.env}=MB",
    ) as f:
        try:
            with open_image(f) as im:
                size = im.size
                if size == (32, 32):
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except Image.DecompressionBombError as e:
            m = re.search(r"\((\d+) pixels\)", str(e))
            claims = f"{int(m.group(1)):,} pixels" if m else "a huge size"
            raise DataError(
                f"{path}: image header claims {claims}, expected 32x32; not decoded"
            ) from None
        except UnidentifiedImageError:
            raise DataError(
                f"{path}: not a readable image (not a {', '.join(PIL_FORMATS)} file)"
            ) from None
        except Exception as e:  # noqa: BLE001 - whatever a decoder raises on a bad file
            raise DataError(
                f"{path}: not a readable image ({type(e).__name__}: {one_line(e, 120)})"
            ) from None
    if size != (32, 32):
        raise DataError(f"{path}: image is {size[0]}x{size[1]}, expected 32x32")
    if arr.shape != (32, 32, 3):
        raise DataError(f"{path}: image decodes to shape {arr.shape}, expected (32, 32, 3)")
    return arr


class _Listing:
    """Lists folders for one read, at most ``CIFARLAB_MAX_FOLDER_FILES`` entries in all; a
    folder that cannot be listed is an error that says so (never skipped silently)."""

    def __init__(self) -> None:
        self.limit = int(limits.MAX_FOLDER_FILES)
        self.count = 0

    def entries(self, folder: Path) -> list[Path]:
        out = []
        try:
            for p in folder.iterdir():
                self.count += 1
                if self.count > self.limit:
                    raise DataError(
                        f"{folder}: more than {self.limit:,} files in the image folders; "
                        f"refusing to list more (raise the limit with "
                        f"{limits.MAX_FOLDER_FILES.env}=N)"
                    )
                out.append(p)
        except OSError as e:
            raise DataError(
                f"{folder}: cannot list this folder ({one_line(e.strerror or e)})"
            ) from None
        return out

    def class_dirs(self, split_dir: Path) -> list[str]:
        return sorted(
            p.name for p in self.entries(split_dir) if not p.name.startswith(".") and p.is_dir()
        )

    def images(self, class_dir: Path) -> list[Path]:
        return sorted(p for p in self.entries(class_dir) if p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(split_dir: Path) -> list[str]:
    return _Listing().class_dirs(split_dir)


def image_files(root: Path) -> list[Path]:
    """Every file an image-folder read of ``root`` would open (``train/<class>/*`` and
    ``test/<class>/*`` with an image suffix), listed within the same bounds."""
    listing = _Listing()
    files = []
    for split in ("train", "test"):
        for name in listing.class_dirs(root / split):
            files += listing.images(root / split / name)
    return files


def read_image_folder(root: Path, info: DatasetInfo) -> RawData:
    """Read ``root/train/<class>/*`` and ``root/test/<class>/*`` (32x32 images)."""
    listing = _Listing()
    names = listing.class_dirs(root / "train")
    if len(names) != info.num_classes:
        raise DataError(
            f"{root / 'train'}: found {len(names)} class folders, {info.title} has "
            f"{info.num_classes}"
        )
    # Folder order is alphabetical, which is also the official label order of both datasets.
    test_names = listing.class_dirs(root / "test")
    if test_names != names:
        raise DataError(f"{root / 'test'}: class folders differ from those in {root / 'train'}")
    arrays: dict[str, np.ndarray] = {}
    files: list[Path] = []
    for split in ("train", "test"):
        paths, labels = [], []
        for label, name in enumerate(names):
            found = listing.images(root / split / name)
            paths += found
            labels += [label] * len(found)
        if not paths:
            raise DataError(f"{root / split}: no images found")
        # One after the other: 32×32 files decode in microseconds, and handing them to a
        # thread pool cost 3× more than it saved (BENCHMARKS.md, issue 12).
        images = [_load_image(p) for p in paths]
        arrays[f"{split}_x"] = np.stack(images)
        arrays[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
        files += paths
    return RawData(class_names=names, files=files, **arrays)
