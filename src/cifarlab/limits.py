"""Every bound cifarlab puts on what a user (or a stranger) can hand it: sizes, pixel counts,
times. One table, so that SECURITY.md, the error messages and the code agree.

Each limit has a default and an environment variable that raises (or lowers) it, e.g.
``CIFARLAB_MAX_IMAGE_PIXELS=200000000``. A value that is not a positive number is an error that
names the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cifarlab.errors import CifarlabError

MB = 1 << 20


@dataclass(frozen=True)
class Limit:
    name: str  # the suffix of the environment variable: CIFARLAB_<NAME>
    default: float
    unit: str
    what: str

    @property
    def env(self) -> str:
        return f"CIFARLAB_{self.name}"

    def get(self) -> float:
        raw = os.environ.get(self.env)
        if raw is None or raw.strip() == "":
            return self.default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value > 0 or value != value or value == float("inf"):
            raise CifarlabError(f"{self.env}={raw!r}: must be a positive number ({self.what})")
        return value

    def __int__(self) -> int:
        return int(self.get())

    def __float__(self) -> float:
        return float(self.get())


# fmt: off
MAX_IMAGE_FILE = Limit("MAX_IMAGE_FILE_MB", 64, "MB",
                       "the largest image file predict or an image folder reads")
MAX_IMAGE_PIXELS = Limit("MAX_IMAGE_PIXELS", 64_000_000, "pixels",
                         "the most pixels (width × height) an image may decode to")
MAX_ASPECT = Limit("MAX_ASPECT", 100, "",
                   "the most extreme width:height (or height:width) ratio of an image")
MAX_DATA_FILE = Limit("MAX_DATA_FILE_MB", 512, "MB",
                      "the largest dataset file (pickle, record file) read; official: 155 MB")
MAX_ARCHIVE_EXPANSION = Limit("MAX_EXTRACT_MB", 1024, "MB",
                              "the most an archive may expand to; official: 178 MB")
MAX_ARCHIVE_MEMBERS = Limit("MAX_EXTRACT_MEMBERS", 1000, "files",
                            "the most entries an archive may hold; official: 8")
MAX_RUN_FILE = Limit("MAX_RUN_FILE_MB", 2048, "MB",
                     "the largest file read from a run folder (checkpoint, config, metrics)")
MAX_JSON_FILE = Limit("MAX_JSON_FILE_MB", 64, "MB",
                      "the largest JSON file read from a run folder")
MAX_FOLDER_DEPTH = Limit("MAX_FOLDER_DEPTH", 64, "levels",
                         "how deep predict looks into nested folders")
MAX_FOLDER_FILES = Limit("MAX_FOLDER_FILES", 1_000_000, "files",
                         "the most files predict or an image folder lists")
DOWNLOAD_DEADLINE = Limit("DOWNLOAD_DEADLINE_S", 4 * 3600, "s",
                          "the longest one archive download may take, all attempts together")
DOWNLOAD_MIN_RATE = Limit("DOWNLOAD_MIN_RATE_KBS", 8, "KB/s",
                          "the slowest average rate over any 60 s before an attempt is dropped")
# fmt: on

ALL = (
    MAX_IMAGE_FILE,
    MAX_IMAGE_PIXELS,
    MAX_ASPECT,
    MAX_DATA_FILE,
    MAX_ARCHIVE_EXPANSION,
    MAX_ARCHIVE_MEMBERS,
    MAX_RUN_FILE,
    MAX_JSON_FILE,
    MAX_FOLDER_DEPTH,
    MAX_FOLDER_FILES,
    DOWNLOAD_DEADLINE,
    DOWNLOAD_MIN_RATE,
)


def megabytes(limit: Limit) -> int:
    """A limit given in MB, in bytes."""
    return int(limit.get() * MB)


def markdown_table() -> str:
    """The limits as a Markdown table (SECURITY.md holds this; a test keeps them equal)."""
    rows = ["| variable | default | what it bounds |", "|---|---|---|"]
    for lim in ALL:
        value = f"{lim.default:,g}" if lim.default < 1e6 else f"{int(lim.default):,}"
        rows.append(f"| `{lim.env}` | {value} {lim.unit} | {lim.what} |".replace("  |", " |"))
    return "\n".join(rows)
