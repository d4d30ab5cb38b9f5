"""Heads over several frozen encoders: which stores a feature reads, and what a checkpoint records.

A feature may name columns of other encoders' stores, ``MODEL:COLUMN``:
``mean@-4+bundled-smollm2:mean@-16`` concatenates ``mean@-4`` of the head's encoder (``--model``)
with ``mean@-16`` of bundled-smollm2. Each encoder is embedded once into its own store (``embed
--model bundled-smollm2 …``); stage 2 reads them side by side (:class:`~orm_cache.store.joined.
JoinedStore`). One trace is one text, built once by the head's recipe, and every encoder embeds
that text, so one key names it in every store (a conversation is rendered by the first
encoder's chat template and read as text by the others). The checkpoint records every other
encoder's fingerprint, identity and spec under ``meta["encoders"]``; scoring doors open their
stores by fingerprint and, for misses and live scores, rebuild each encoder from its spec.
"""

from __future__ import annotations

from pathlib import Path

from ..encode.spec import EncoderSpec
from ..errors import ConfigError
from ..store import StoreError, VectorStore, find_store, short
from ..store.columns import canonical_feature, encoder_parts
from ..store.joined import JoinedStore


def primary_feature(feature: str | None) -> str | None:
    """The part of ``feature`` the first encoder's store holds (``mean@-4+m:x`` -> ``mean@-4``)."""
    if not feature or ":" not in feature:  # one encoder's: whoever reads it checks it (listing stored columns)
        return feature
    return "+".join(c for m, c in encoder_parts(feature) if m is None)


def other_columns(feature: str | None) -> dict[str, list[str]]:
    """model -> the columns ``feature`` reads from that (other) encoder's store, in order."""
    out: dict[str, list[str]] = {}
    for m, c in encoder_parts(feature) if feature and ":" in feature else ():
        if m is not None:
            out.setdefault(m, []).append(c)
    return out


def canonical(feature: str | None) -> str | None:
    """``feature`` with the first encoder's columns first (None stays None)."""
    return canonical_feature(feature) if feature and ":" in feature else feature


def stores_for_features(cache_dir, enc_spec: EncoderSpec, features, primary: VectorStore):
    """``primary`` joined with the store of every other encoder ``features`` name (found by model,
    with the first encoder's max length and truncation side), or ``primary`` alone when none do."""
    need: dict[str, set] = {}
    for f in features:
        for m, cols in other_columns(f).items():
            need.setdefault(m, set()).update(cols)
    if not need:
        return primary
    others = {}
    for m, cols in need.items():
        spec = EncoderSpec(model=m, max_length=enc_spec.max_length, truncation_side=enc_spec.truncation_side)
        feature = "+".join(sorted(cols))
        others[m] = find_store(cache_dir, spec, feature,
                               embed_hint=f"orm-cache embed --model {m} with --pooling/--layers giving {feature} "
                                          f"(and --max-length {enc_spec.max_length}) on the same data")
    return JoinedStore(primary, others)


def encoders_record(store, feature: str) -> list[dict]:
    """What a checkpoint records of each other encoder ``feature`` reads through ``store``."""
    from ..models import looks_like_path

    out = []
    for m in other_columns(feature):
        vs = store.others[m]
        spec = dict(vs.spec() or {})
        # the model as this head names it (its store's first writer may have used another path to the same files)
        spec["model"] = str(Path(m).expanduser().resolve()) if looks_like_path(m) else m
        out.append({"model": m, "fingerprint": vs.fp, "encoder_identity": vs.identity(), "encoder_spec": spec})
    return out


def store_with_others(head, primary: VectorStore, cache_dir, must_exist: bool = True):
    """A head's stores: ``primary`` and, for a head over several encoders, each other one's store
    (by the fingerprint its checkpoint records) joined to it; ``must_exist``: refuse one that
    holds no vectors yet (score and rank embed their misses into it instead)."""
    from ..store.resolve import encoder_store

    records = head.meta.get("encoders") or []
    if not records:
        if other_columns(head.feature):
            raise ConfigError(f"feature {head.feature} names other encoders, but this checkpoint records none of them; "
                              "a head over several encoders is trained by fit-head or sweep, which record them")
        return primary
    others = {}
    for r in records:
        vs = encoder_store(cache_dir, r["fingerprint"])
        if must_exist and not vs.shards:
            raise StoreError(f"no vectors of the head's encoder {r['model']} ({short(r['fingerprint'])}) under "
                             f"{cache_dir}; embed the split with --model {r['model']} too")
        others[r["model"]] = vs
    return JoinedStore(primary, others)


def is_joined(head) -> bool:
    return bool(head.meta.get("encoders")) or bool(other_columns(head.feature))
