"""A split's cached vectors: distinct traces ``X`` and the pair -> row indices.

``X`` is a :class:`~orm_cache.store.rows.StoreRows`: the split's rows of the memory-mapped store,
in the order they lie on disk, read block by block by whatever uses them; nothing is copied
when the split is loaded. Used by every stage-2 command; it reads only the store (no model).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import numpy as np

from ..data import SplitData
from ..errors import DataError
from ..store import StoreError, VectorStore
from ..store.index import key_hashes
from ..store.shards import RESPONSE_START, UNKNOWN_START
from ..store.rows import Rows


@dataclass
class SplitVectors:
    data: SplitData
    keys: list[str]  # distinct trace keys, row order of X (the store's order)
    X: Rows  # (U, D), read from the memory map in blocks (float32 unless asked otherwise)
    ci: np.ndarray  # (N,) row of each pair's chosen trace
    ri: np.ndarray  # (N,) row of each pair's rejected trace
    n_tokens: np.ndarray  # (U,)
    feature: str

    step_aggregate: tuple | None = None  # (how, store, embed hint): trace scores from step prefixes

    def trace_scores(self, head) -> np.ndarray:
        """``(U,)`` the score of each trace (row of ``X``): the head's score of its vector, or with
        ``step_aggregate`` its step prefixes' scores aggregated (:func:`step_scores`)."""
        if self.step_aggregate is None:
            return head.score(self.X)
        how, store, hint = self.step_aggregate
        return step_scores(head, self.data, store, self.keys, how, hint)

    def rows(self, keys) -> np.ndarray:
        """``(N,)`` row of ``X`` of each key (keys of this split)."""
        return rows_of(self.keys, list(keys))[0]


# DataSpec fields that decide which texts a split has (pair sampling does not: every text is embedded).
_TEXT_FIELDS = ("template", "prompt_col", "chat_template", "chosen_col", "rejected_col", "text_col", "messages_col",
                "label_col", "step_pattern")
_ENCODER_FIELDS = ("revision", "dtype", "max_length", "truncation_side", "pooling", "layers")


def embed_command(data_spec, encoder, cache_dir, feature: str | None = None) -> str:
    """The ``orm-cache embed`` command that fills exactly this store for ``data_spec``'s split:
    ``encoder`` is an :class:`EncoderSpec` or a store's recorded spec (model path, dtype, max
    length, truncation side, every pooling and layer), so the hint never makes a second store."""
    from ..data.spec import DataSpec
    from ..encode.spec import EncoderSpec
    from ..text.recipe import DEFAULT_TEMPLATE, TRL_TEMPLATE

    enc = encoder.to_dict() if isinstance(encoder, EncoderSpec) else dict(encoder or {})
    if feature and enc.get("pooling") and enc.get("layers"):  # the columns the feature reads are stored too
        enc = EncoderSpec(**{k: v for k, v in enc.items() if k in EncoderSpec.__dataclass_fields__}
                          ).with_feature(feature).to_dict()
    cmd = ["orm-cache", "embed", "--data", data_spec.data, "--split", data_spec.split]
    default_data, defaults = DataSpec(), {"template": DEFAULT_TEMPLATE, "prompt_col": "prompt"}
    for name in _TEXT_FIELDS:
        value = getattr(data_spec, name)
        if value is not None and value != getattr(default_data, name) and value != defaults.get(name):
            cmd += ["--" + name.replace("_", "-"), str(value)]
    if data_spec.recipe_kind not in (None, "auto"):
        kind = "trl" if data_spec.eos and data_spec.template == TRL_TEMPLATE and data_spec.recipe_kind == "template" \
            else data_spec.recipe_kind
        cmd += ["--recipe", kind]
    cmd += ["--model", str(enc.get("model") or EncoderSpec().model)]
    default_enc = EncoderSpec().to_dict()
    for name in _ENCODER_FIELDS:
        value = enc.get(name)
        if value is None or value == "auto" or (name not in ("pooling", "layers") and value == default_enc[name]):
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        cmd += ["--" + name.replace("_", "-"), str(value)]
    if enc.get("likelihood"):
        cmd += ["--likelihood"]
    if getattr(data_spec, "step_prefixes", False):
        cmd += ["--steps"]
    return shlex.join(cmd + ["--cache-dir", str(cache_dir)])


class ResponseStartConflict(StoreError):
    """A text whose response_mean vector was pooled from another response start (the same text
    split into prompt and response another way): its key names a vector that is not its own."""


def describe_start(s) -> str:
    """Where a response starts, for messages: a character offset, or unknown (None or the stored marker)."""
    return "unknown" if s is None or s == UNKNOWN_START else f"character {s}"


def check_known_starts(starts, feature: str, why: str) -> None:
    """Refuse texts whose response start is unknown (None; ``why`` says what such a text is)
    under a ``feature`` that pools the response only: one line naming the first."""
    if "response_mean@" in feature and None in starts:
        i = list(starts).index(None)
        raise DataError(f"text {i}: where its response starts is not known ({why}), and this head's feature "
                        f"{feature} pools the response only; give the prompt and the response separately (or the "
                        "conversation)")


def check_response_starts(store: VectorStore, gids: np.ndarray, keys: list[str], starts: dict,
                          feature: str, where: str = "") -> None:
    """For a ``response_mean`` feature: the response of each text (``keys``, at global rows
    ``gids``) must start where ``starts`` (key -> character offset, None unknown; a key absent:
    0) says, as it did when its vector was pooled; else a one-line :class:`StoreError` naming
    the first such text. The same text keys one vector, but the same text as a bare response and
    with a prompt has its response elsewhere, so its response_mean vector would be another's."""
    if not any(c.startswith("response_mean@") for c in feature.split("+")) or not len(keys):
        return
    if not store.has_response_starts:
        raise StoreError(f"store {store.dir} has {feature} but does not record where responses start; "
                         "embed into another --cache-dir")
    unknown = [k for k in keys if k in starts and starts[k] is None]
    if unknown:
        raise StoreError(f"{len(unknown):,} of {len(keys):,} texts{where} are strings taken as already rendered, so "
                         f"where their response starts is unknown, and {feature} pools the response only (first: key "
                         f"{unknown[0][:16]}…); give those rows a prompt and a response (or the conversation), or use "
                         "a feature that pools every token (mean, last)")
    stored = store.scalars_at(gids, RESPONSE_START)  # (U,)
    wanted = [starts.get(k, 0) for k in keys]
    wanted = np.array([UNKNOWN_START if s is None else s for s in wanted], dtype=np.int64)  # (U,)
    bad = np.flatnonzero(stored != wanted)
    if len(bad):
        i = int(bad[0])
        raise ResponseStartConflict(f"{len(bad):,} of {len(keys):,} texts{where} have their response elsewhere than when their "
                         f"{feature} vectors were pooled (first: key {keys[i][:16]}…, response at "
                         f"{describe_start(int(wanted[i]))} here, {describe_start(int(stored[i]))} in the store: the same text split "
                         "into prompt and response another way); embed this data into another --cache-dir")


def split_vectors(data: SplitData, store: VectorStore, feature: str | None, hint: str = "") -> SplitVectors:
    """The vectors of every trace of ``data``, as rows of the store in the order they lie on disk
    (so that blocks of ``X`` are slices of the memory map); a missing vector stops with the
    command to run; a ``response_mean`` feature whose texts' responses start elsewhere than
    when they were pooled is refused (:func:`check_response_starts`)."""
    keys = list(data.texts)
    feature = feature or (store.columns[0] if store.columns else "last@-1")
    parts = store.feature_columns(feature) if store.columns else feature.split("+")
    found = [store._find(keys, c) for c in parts]  # (U,) global rows of each column, -1 where missing
    for c, g in zip(parts, found):
        if (g < 0).any():
            vs, col = store.part(c)
            if vs is not store and ":" in c:  # another encoder's column: embed the split with that encoder
                hint = (f"orm-cache embed --model {c.rpartition(':')[0]} (pooling and layer of {col}) on this split, "
                        "with the data options used here")
            raise StoreError(f"{int((g < 0).sum()):,} of {len(keys):,} traces of split {data.split!r} have no cached "
                             f"{c} vector in {vs.dir}; run first: {hint or 'orm-cache embed'}")
    if data.start_conflicts and any(c.startswith("response_mean@") for c in parts):
        k, where = next(iter(data.start_conflicts.items()))
        shown = ", ".join("unknown" if s is None else f"character {s}" for s in sorted(where, key=lambda s: (s is None, s)))
        raise StoreError(f"{len(data.start_conflicts):,} texts of split {data.split!r} have their response at two places "
                         f"in different rows (first: key {k[:16]}…, response at {shown}: the same text once as a bare "
                         f"string and once built from a prompt and a response); {feature} pools one of them, so make "
                         "those rows agree (give every row its prompt, or none)")
    for c, g in zip(parts, found):
        vs, col = store.part(c)
        check_response_starts(vs, g, keys, data.response_starts, col, f" of split {data.split!r}")
    order = np.argsort(found[0], kind="stable")
    keys = [keys[i] for i in order]
    sv = SplitVectors(data, keys, store.columns_at([g[order] for g in found], feature), np.empty(0, np.int64),
                      np.empty(0, np.int64), store.part(parts[0])[0].scalars_at(found[0][order], "n_tokens"), feature)
    sv.ci, sv.ri = rows_of(keys, data.pairs.chosen, data.pairs.rejected)
    return sv


def rows_of(keys: list[str], *sides: list[str]) -> list[np.ndarray]:
    """For each list in ``sides`` (keys that are all among ``keys``), the position in ``keys`` of
    each of its keys. When no two of ``keys`` share a 64-bit hash (as good as always), a key's
    hash names its position: one vectorised search instead of millions of dict lookups."""
    h = key_hashes(keys)  # (U,)
    order = np.argsort(h, kind="stable")
    sorted_h = h[order]
    if len(keys) < 2 or (np.diff(sorted_h) != 0).all():
        out = []
        for side in sides:
            q = key_hashes(side)  # (N,)
            by = np.argsort(q)  # searching sorted needles walks the table once (3x faster at 4M in 1M)
            pos = np.empty(len(q), np.int64)
            pos[by] = order[np.searchsorted(sorted_h, q[by])]
            out.append(pos)
        return out
    pos = {k: i for i, k in enumerate(keys)}
    return [np.fromiter(map(pos.__getitem__, side), dtype=np.int64, count=len(side)) for side in sides]


def step_scores(head, data: SplitData, store: VectorStore, keys: list[str], how: str, hint: str = "") -> np.ndarray:
    """``(N,)`` float64 score of each trace ``keys[i]`` of ``data`` (loaded with its step prefixes),
    aggregated by ``how`` over its step prefixes' cached scores
    (:func:`~orm_cache.evaluate.steps.aggregate_steps`). A prefix without a cached vector stops with the embed command (``hint``)."""
    from ..evaluate.steps import aggregate_steps, offsets_of

    lacking = [k for k in keys if k not in data.steps]
    if lacking:
        raise DataError(f"{len(lacking):,} traces of split {data.split!r} have no steps (load the split with its "
                        "step prefixes)")
    flat = [p for k in keys for p in data.steps[k]]
    feature = head.feature
    parts = store.feature_columns(feature) if store.columns else feature.split("+")
    found = [store._find(flat, c) for c in parts]  # (M,) global rows of each column, -1 where missing
    for c, g in zip(parts, found):
        if (g < 0).any():
            raise StoreError(f"{len(set(np.asarray(flat)[g < 0])):,} step prefixes of split {data.split!r} have no "
                             f"cached {c} vector in {store.part(c)[0].dir}; run first: {hint or 'orm-cache embed --steps'}")
        vs, col = store.part(c)
        check_response_starts(vs, g, flat, data.response_starts, col, f" (step prefixes) of split {data.split!r}")
    scores = head.score(store.columns_at(found, feature))  # (M,)
    return aggregate_steps(scores, offsets_of([data.steps[k] for k in keys]), how)
