"""Vector column names: ``<pooling>@<layer>``, and features that concatenate columns with '+'."""

from __future__ import annotations

from ..errors import ConfigError


LOGPROB = "logprob"  # a causal encoder's log-likelihood of each response: three stored scalars per text
LOGPROB_FIELDS = ("logprob_mean", "logprob_min", "logprob_sum")  # over the response's tokens (natural log)
LOGPROB_TOKENS = "logprob_tokens"  # how many tokens they are over (0: none could be scored; the three are 0)


def feature_column(pooling: str, layer: int) -> str:
    return f"{pooling}@{layer}"


def encoder_parts(feature: str) -> list[tuple[str | None, str]]:
    """``(model, column)`` of each part of a feature that may read several encoders' stores:
    ``"mean@-4+bundled-smollm2:mean@-16"`` -> ``[(None, "mean@-4"), ("bundled-smollm2",
    "mean@-16")]`` (None: the head's first encoder, ``--model``). The model is everything before
    the part's last ':' (a hub id, a local path or a bundled name); each column is checked as in
    :func:`feature_parts`, and no (model, column) may repeat."""
    out = []
    for part in str(feature).split("+"):
        model, colon, column = part.rpartition(":")
        if colon and not model:
            raise ConfigError(f"feature {feature!r}: {part!r} has ':' but no model before it "
                              "(write MODEL:COLUMN, e.g. bundled-smollm2:mean@-16)")
        feature_parts(column)
        out.append((model or None, column))
    if len(set(out)) != len(out):
        raise ConfigError(f"feature {feature!r} names a column twice")
    return out


def canonical_feature(feature: str) -> str:
    """A feature with its first encoder's columns first and each other encoder's after, grouped
    in the order they first appear (the order the head's weights follow); a feature that reads
    only other encoders is refused (the first encoder, ``--model``, must read at least one)."""
    parts = encoder_parts(feature)
    if all(m is not None for m, _ in parts):
        raise ConfigError(f"feature {feature!r}: every column names another encoder; name at least one column of "
                          "--model's without a prefix (or make that encoder --model)")
    models = list(dict.fromkeys(m for m, _ in parts))
    models.sort(key=lambda m: m is not None)
    return "+".join(c if m is None else f"{m}:{c}" for m in models for mm, c in parts if mm == m)


def feature_parts(feature: str) -> tuple[str, ...]:
    """The stored columns a feature concatenates: ``"mean@-4+mean@-1"`` -> ``("mean@-4",
    "mean@-1")``; each must look like ``<pooling>@<layer>``. ValueError says what is wrong
    (whether the columns exist is the store's to say)."""
    parts = tuple(str(feature).split("+"))
    for p in parts:
        if p == LOGPROB:
            continue
        if p.startswith(LOGPROB + "@"):
            raise ConfigError(f"feature {feature!r}: {LOGPROB} takes no layer (it is the LM's likelihood, from its "
                              f"output); write {LOGPROB}")
        if p != p.strip():
            raise ConfigError(f"feature {feature!r}: {p!r} has spaces around it (write e.g. mean@-4+mean@-1)")
        pooling, at, layer = p.partition("@")
        try:
            ok = bool(at and pooling and int(layer) is not None)
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"feature {feature!r}: {p!r} is not a column name like mean@-1 or logprob (concatenate "
                              "columns with '+', e.g. mean@-4+mean@-1)")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"feature {feature!r} names a column twice")
    return parts
