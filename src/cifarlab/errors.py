"""Exceptions that carry a message meant for the user.

The CLI prints ``str(error)`` on one line and exits non-zero; library users can catch
:class:`CifarlabError` to handle every expected failure at once.
"""

import sys
from collections.abc import Callable, Iterable


def printable(text: object) -> str:
    """``text`` as any UTF-8 output (a terminal, JSON, HTML, a plot) can hold it: bytes of a
    file name that were not UTF-8 (kept by Python as lone surrogates) shown as ``\\xff``."""
    s = str(text)
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: object, limit: int | None = 200) -> str:
    """``text`` on one line (whitespace runs, newlines included, become one space; other
    control characters are escaped), cut to about ``limit`` characters (None: not cut):
    messages built from a server's, an archive's, Pillow's or the OS's text stay one line."""
    s = " ".join(str(text).split())
    if not s.isprintable():
        s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if limit is None or len(s) <= limit else s[: limit - 3].rstrip() + "..."


_WARNED: set[str] = set()


def say_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """``warnings.showwarning`` for users (the CLI, and the processes a group trains seeds in):
    ``warning: TEXT`` on one line of stderr, each text once per process (a group's seeds and a
    sweep's trials load the same data again and again: its warning is said once)."""
    text = one_line(message, None)
    if text not in _WARNED:
        _WARNED.add(text)
        print(f"warning: {text}", file=sys.stderr)


class CifarlabError(Exception):
    """Base class for every error cifarlab reports to the user."""


class SettingError(CifarlabError):
    """A setting has a value it cannot have. ``names`` are TrainConfig fields (or another
    function's parameters); :meth:`render` lets the CLI name its options instead."""

    def __init__(
        self, names: str | Iterable[str], problem: str, others: Iterable[str] = ()
    ) -> None:
        self.names = [names] if isinstance(names, str) else list(names)
        self.problem = problem  # may say "{others}": more settings named in the message
        self.others = list(others)
        super().__init__(self.render())

    def render(self, name_of: Callable[[str], str] = str) -> str:
        problem = self.problem
        if self.others:
            problem = problem.replace("{others}", ", ".join(name_of(n) for n in self.others))
        return one_line(f"{', '.join(name_of(n) for n in self.names)} {problem}", None)


class DataError(CifarlabError):
    """A data file is missing, corrupt, unsafe, or not what the dataset needs."""


class DownloadError(CifarlabError):
    """A download failed (network, HTTP status, checksum)."""


class WriteError(CifarlabError, OSError):
    """An output file cannot be written (its folder is read-only, the name is a folder...).
    Also an :class:`OSError`, so code that handles file-system failures still catches it."""
