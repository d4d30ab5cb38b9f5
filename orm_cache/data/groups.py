"""Group ids (the problem a candidate trace answers): one rule for every command.

A group id is a string or an integer (a JSON number without a fraction, a Parquet integer), and
every id of one column has the same one of those two types; null (or absent) means "no group".
Floats, booleans, lists and objects are refused, and so is a column that mixes strings and
integers: ``1`` and ``"1"`` would be one problem where ids are compared as text (rank, eval's
best-of-N) and two where they are compared as values (pairs built from pointwise rows). With one
type per column both comparisons agree, so every command groups the same rows together.
"""

from __future__ import annotations

from ..errors import DataError

_KINDS = {str: "string", int: "integer"}


class GroupIds:
    """Checks the group ids of one column, row by row (``check``), remembering the first id's type."""

    def __init__(self, column: str):
        self.column = column
        self.kind: str | None = None
        self.first_where: str | None = None

    def check(self, value, where: str):
        """``value`` if it is a valid group id of this column (None stays None); else DataError."""
        if value is None:
            return None
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # a NumPy scalar
            value = value.item()
        kind = _KINDS.get(type(value))
        if kind is None:
            raise DataError(f"{where}: group column {self.column!r} holds {_shown(value)}; a group id (the problem "
                            "id) must be a string or an integer")
        if self.kind is None:
            self.kind, self.first_where = kind, where
        elif kind != self.kind:
            raise DataError(f"{where}: group column {self.column!r} holds the {kind} {value!r}, but {self.first_where} "
                            f"holds a {self.kind}; one column must use one type of id (write them all as strings "
                            "or all as integers), else 1 and \"1\" would be one problem in one command and two in "
                            "another")
        return value


def _shown(value) -> str:
    name = {bool: "a boolean", float: "a floating-point number", list: "a list", dict: "an object"}.get(
        type(value), f"a {type(value).__name__}")
    return f"{name} ({str(value)[:40]})"
