"""Typed errors for people: the CLI prints them as one line and exits with code 2.

Library code raises a subclass of :class:`VlmoError` whenever the *input* is wrong (a recipe key, a file, a
sample). Internal bugs stay ordinary exceptions and keep their traceback.
"""


class VlmoError(Exception):
    """Base class of every user-facing error."""


class RecipeError(VlmoError):
    """A recipe file or a command-line override is invalid."""


class ConfigError(VlmoError):
    """A model configuration is inconsistent."""


class CheckpointError(VlmoError):
    """A checkpoint or model directory cannot be read or does not match the architecture."""


class DataError(VlmoError):
    """A data source or a prepared dataset is unusable."""


class RunFolderError(VlmoError):
    """A run folder cannot be used as asked (foreign content, a changed recipe on resume)."""


class OutputError(VlmoError):
    """An output file or folder cannot be written: it holds something else, overlaps an input, or the disk is full."""


class MissingExtraError(VlmoError):
    """An optional dependency (a ``pip install "vlmo-cli[EXTRA]"``) that a command needs is not installed."""
