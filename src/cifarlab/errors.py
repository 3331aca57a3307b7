"""Exceptions that carry a message meant for the user.

The CLI prints ``str(error)`` on one line and exits non-zero; library users can catch
:class:`CifarlabError` to handle every expected failure at once.
"""


class CifarlabError(Exception):
    """Base class for every error cifarlab reports to the user."""


class DataError(CifarlabError):
    """A data file is missing, corrupt, unsafe, or not what the dataset needs."""


class DownloadError(CifarlabError):
    """A download failed (network, HTTP status, checksum)."""


class WriteError(CifarlabError, OSError):
    """An output file cannot be written (its folder is read-only, the name is a folder...).
    Also an :class:`OSError`, so code that handles file-system failures still catches it."""
