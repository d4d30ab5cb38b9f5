"""Vector column names: ``<pooling>@<layer>``, and features that concatenate columns with '+'."""

from __future__ import annotations

from ..errors import ConfigError


def feature_column(pooling: str, layer: int) -> str:
    return f"{pooling}@{layer}"


def feature_parts(feature: str) -> tuple[str, ...]:
    """The stored columns a feature concatenates: ``"mean@-4+mean@-1"`` -> ``("mean@-4",
    "mean@-1")``; each must look like ``<pooling>@<layer>``. ValueError says what is wrong
    (whether the columns exist is the store's to say)."""
    parts = tuple(str(feature).split("+"))
    for p in parts:
        if p != p.strip():
            raise ConfigError(f"feature {feature!r}: {p!r} has spaces around it (write e.g. mean@-4+mean@-1)")
        pooling, at, layer = p.partition("@")
        try:
            ok = bool(at and pooling and int(layer) is not None)
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"feature {feature!r}: {p!r} is not a column name like mean@-1 (concatenate columns "
                             "with '+', e.g. mean@-4+mean@-1)")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"feature {feature!r} names a column twice")
    return parts
