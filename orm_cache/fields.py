"""Helpers every spec uses: choice checks, comma-separated values, and the help text written
under each dataclass field (the CLI's --help and ``orm-cache help TOPIC`` read it)."""

from __future__ import annotations

import functools

from .errors import ConfigError


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(map(str, allowed))}")


def parse_csv(value: str | tuple | list, cast=str) -> tuple:
    """``"last,mean"`` -> ``("last", "mean")``; tuples and lists pass through (cast per item)."""
    if isinstance(value, (tuple, list)):
        return tuple(cast(v) for v in value)
    return tuple(cast(v.strip()) for v in str(value).split(",") if v.strip())


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name (for --help)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split()).replace("``", "'")
    return docs
