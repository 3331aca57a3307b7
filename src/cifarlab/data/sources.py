"""Facts about the CIFAR datasets: one place for names, URLs, checksums, statistics and the
layout of their files.

The readers (:mod:`cifarlab.data.formats`), the locator (:mod:`cifarlab.data.dataset`) and the
downloader (:mod:`cifarlab.data.download`) hold no fact about any one dataset: file names,
pickle keys, record sizes and label offsets all come from a :class:`DatasetInfo`. A dataset in
the same shapes (32×32 RGB images in the official python or binary layout) is supported by
describing it here, as torchvision's ``CIFAR100`` subclasses ``CIFAR10`` overriding only data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cifarlab.errors import CifarlabError

BASE_URL = "https://www.cs.toronto.edu/~kriz/"
DEFAULT_DATASET = "cifar10"  # what load_dataset reads when no name is given

# One image in the official files: the R, G and B planes of 32×32 pixels, each row-major.
IMAGE_BYTES = 3 * 32 * 32

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

CIFAR100_FINE_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

CIFAR100_COARSE_CLASSES: tuple[str, ...] = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip


@dataclass(frozen=True)
class Archive:
    """One official archive: where it is, what it unpacks to, and its checksum."""

    filename: str
    md5: str
    folder: str  # the folder the archive extracts to
    size: int | None = None  # bytes, where known

    @property
    def url(self) -> str:
        return BASE_URL + self.filename


@dataclass(frozen=True)
class PythonLayout:
    """The official python layout: pickled dicts, one per file, under the archive's folder.

    Each batch file holds ``data_key`` (N × 3072 uint8, the R, G, B planes) and the labels
    under ``label_key`` (and ``coarse_label_key`` where there are two label sets); the meta
    file holds the class names under ``names_key`` (and ``coarse_names_key``).
    """

    train_files: tuple[str, ...]  # read in this order and concatenated
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    coarse_label_key: str | None = None
    coarse_names_key: str | None = None
    data_key: str = "data"
    # Files whose presence says a folder holds this layout; () means the first train file and
    # the first test file.
    markers: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of the layout: train files, test files, meta file."""
        return (*self.train_files, *self.test_files, self.meta_file)

    @property
    def marker_files(self) -> tuple[str, ...]:
        return self.markers or (self.train_files[0], self.test_files[0])


@dataclass(frozen=True)
class BinaryLayout:
    """The official binary layout: fixed-size records of label bytes then image bytes.

    Each record is ``label_bytes`` bytes of labels followed by :data:`IMAGE_BYTES` of pixels;
    the (fine) label is the byte at ``label_offset``, the coarse one (if any) the byte at
    ``coarse_label_offset``. Class names are text files, one name a line.
    """

    train_files: tuple[str, ...]  # read in this order and concatenated
    test_files: tuple[str, ...]
    names_file: str
    coarse_names_file: str | None = None
    label_bytes: int = 1
    label_offset: int = 0
    coarse_label_offset: int | None = None
    markers: tuple[str, ...] = ()  # as for PythonLayout

    def __post_init__(self) -> None:
        offsets = [self.label_offset]
        if self.coarse_label_offset is not None:
            offsets.append(self.coarse_label_offset)
        if not all(0 <= o < self.label_bytes for o in offsets):
            raise ValueError(f"label offsets {offsets} outside a {self.label_bytes}-byte label")
        if (self.coarse_names_file is None) != (self.coarse_label_offset is None):
            raise ValueError("coarse_names_file and coarse_label_offset go together")

    @property
    def record_size(self) -> int:
        """Bytes per record: the label bytes and one image."""
        return self.label_bytes + IMAGE_BYTES

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of the layout: train records, test records, names file(s)."""
        coarse = (self.coarse_names_file,) if self.coarse_names_file else ()
        return (*self.train_files, *self.test_files, self.names_file, *coarse)

    @property
    def marker_files(self) -> tuple[str, ...]:
        return self.markers or (self.train_files[0], self.test_files[0])


@dataclass(frozen=True)
class DatasetInfo:
    """Everything cifarlab knows about one dataset before reading any file."""

    name: str
    title: str
    num_classes: int
    num_coarse_classes: int | None
    class_names: tuple[str, ...]
    coarse_class_names: tuple[str, ...] | None
    train_size: int
    test_size: int
    mean: tuple[float, float, float]  # per channel, 0-1 scale
    std: tuple[float, float, float]
    archives: dict[str, Archive]  # format ("python" | "binary") -> archive
    python_layout: PythonLayout  # the files inside archives["python"].folder
    binary_layout: BinaryLayout  # the files inside archives["binary"].folder
    # md5 of each file of the extracted official python layout (names relative to its folder)
    python_md5: dict[str, str] = field(default_factory=dict)

    @property
    def train_per_class(self) -> int:
        return self.train_size // self.num_classes

    @property
    def test_per_class(self) -> int:
        return self.test_size // self.num_classes

    def binary_file_sizes(self) -> dict[str, int]:
        """The exact size in bytes of each record file of the complete official binary layout
        (each split's images are spread evenly over its files)."""
        layout = self.binary_layout
        sizes = {}
        splits = ((layout.train_files, self.train_size), (layout.test_files, self.test_size))
        for files, n in splits:
            for name in files:
                sizes[name] = n // len(files) * layout.record_size
        return sizes


CIFAR10 = DatasetInfo(
    name="cifar10",
    title="CIFAR-10",
    num_classes=10,
    num_coarse_classes=None,
    class_names=CIFAR10_CLASSES,
    coarse_class_names=None,
    train_size=50_000,
    test_size=10_000,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    archives={
        "python": Archive(
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            "cifar-10-batches-py",
            170_498_071,
        ),
        "binary": Archive(
            "cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
            "cifar-10-batches-bin",
            170_052_171,
        ),
    },
    python_layout=PythonLayout(
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    binary_layout=BinaryLayout(
        train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        test_files=("test_batch.bin",),
        names_file="batches.meta.txt",
        label_bytes=1,
        label_offset=0,
    ),
    python_md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
)

CIFAR100 = DatasetInfo(
    name="cifar100",
    title="CIFAR-100",
    num_classes=100,
    num_coarse_classes=20,
    class_names=CIFAR100_FINE_CLASSES,
    coarse_class_names=CIFAR100_COARSE_CLASSES,
    train_size=50_000,
    test_size=10_000,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    archives={
        "python": Archive(
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            "cifar-100-python",
        ),
        "binary": Archive(
            "cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
            "cifar-100-binary",
            168_513_733,
        ),
    },
    python_layout=PythonLayout(
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        coarse_label_key="coarse_labels",
        coarse_names_key="coarse_label_names",
        # "train" and "test" are common names: the meta file too marks the layout
        markers=("train", "test", "meta"),
    ),
    binary_layout=BinaryLayout(
        train_files=("train.bin",),
        test_files=("test.bin",),
        names_file="fine_label_names.txt",
        coarse_names_file="coarse_label_names.txt",
        # Each record starts with the coarse label byte, then the fine one.
        label_bytes=2,
        label_offset=1,
        coarse_label_offset=0,
    ),
    python_md5={
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
)

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (CIFAR10, CIFAR100)}


def get_info(name: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` for ``name`` ("cifar10" or "cifar100"; case, ``-`` and
    ``_`` do not matter)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise CifarlabError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[key]
