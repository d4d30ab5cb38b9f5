"""Every error a user can cause, in one leaf module (no imports from the package).

:class:`UserError` is the base of the errors whose message is the whole story: bad input, a
missing vector, a checkpoint that does not fit. The CLI prints them as one line; anything else
is a bug and keeps its traceback. Each subclass says which part of the pipeline refused.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix; the message says what and how, in one line."""


class DataError(UserError):
    """Bad input data: the message names the source, the row and the problem, in one line."""


class RecipeError(UserError):
    """A text recipe given explicitly that differs from the one a head was trained with, or one
    that cannot build a row's text."""


__all__ = ["UserError", "DataError", "RecipeError"]
