"""Every error a user can cause, in one leaf module (no imports from the package).

:class:`UserError` is the base of the errors whose message is the whole story: bad input, a
missing vector, a checkpoint that does not fit. The CLI prints them as one line; anything else
is a bug and keeps its traceback. Each subclass says which part of the pipeline refused.
The older import locations (``orm_cache.store.StoreError``, ``orm_cache.head.CheckpointError``,
…) re-export these classes.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix; the message says what and how, in one line."""


class DataError(UserError):
    """Bad input data: the message names the source, the row and the problem, in one line."""


class RecipeError(UserError):
    """A text recipe given explicitly that differs from the one a head was trained with, or one
    that cannot build a row's text."""


class ConfigError(UserError):
    """A configuration or option value that is not allowed; the message names the option."""


class ConfigConflict(ConfigError):
    """Field values each valid that cannot train together (head=mlp with solver=lbfgs); a sweep
    grid skips such combinations."""


class StoreError(UserError):
    """A store that cannot be used as asked (wrong fingerprint, missing vectors, corrupt or
    unreadable shards)."""


class EncoderError(UserError):
    """The encoder cannot be found or loaded; the message says what to do."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded or does not fit the vectors it is used with."""


class OutputError(UserError):
    """An output that cannot be written; the message names the file and says the previous one is intact."""


class ExportError(UserError):
    """A head or model that cannot become the other kind; the message says why, in one line."""


__all__ = ["UserError", "DataError", "RecipeError", "ConfigError", "ConfigConflict", "StoreError", "EncoderError",
           "CheckpointError", "OutputError", "ExportError"]
