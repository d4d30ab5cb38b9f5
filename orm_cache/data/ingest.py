"""Read a split, validate it, and turn rows into texts and pairs.

Two row kinds are accepted:

* pairwise: ``chosen``, ``rejected`` (+ optional ``prompt``, ``group``; every other column is
  kept as per-pair metadata), in any of TRL's four shapes (see :mod:`orm_cache.text.build`);
* pointwise: ``text`` (or a ``messages`` conversation), ``label`` in {0, 1} (+ optional
  ``group``, ``prompt``); pairs are built from it as the reference data was (see
  :mod:`orm_cache.data.pairs`). Other columns are named (``SplitData.trace_columns``), and only
  those asked for (``DataSpec.keep_columns``) are kept, per row (``SplitData.trace_meta``).

Every text the encoder sees, and its key, is built by the recipe in :mod:`orm_cache.text` (the
only place texts are built). Where rows come from is :mod:`orm_cache.data.readers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .spec import DataSpec
from ..text import TextBuilder, TextRecipe, response_column, trace_key  # noqa: F401 (trace_key re-exported)
from ..text.build import prompt_field  # noqa: F401 (re-exported)
from .groups import GroupIds
from .split import Pairs, SplitData, merge_splits  # noqa: F401 (re-exported)
from .readers import FILE_EXTS, SPLIT_ALIASES, DataError, read_rows, source_rows, split_file, split_files


# ----------------------------------------------------------------------------------- validation

def present(row: dict, col: str, where: str, flag: str | None = None):
    """``row[col]``, or a :class:`DataError` saying it is missing or null (naming the columns the
    row has, and the flag that maps the column, when given)."""
    value = row.get(col)
    if value is None:
        hint = f"; choose it with {flag}" if flag else ""
        state = "missing" if col not in row else "null"
        raise DataError(f"{where}: column {col!r} is {state} (columns: {sorted(row)}){hint}")
    return value


def text_field(row: dict, col: str, where: str, flag: str | None = None) -> str:
    """The non-empty string in ``row[col]``, or a :class:`DataError` naming the row, the column
    and the problem (and the flag that maps the column, when given)."""
    value = present(row, col, where, flag)
    if not isinstance(value, str):
        raise DataError(f"{where}: column {col!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: column {col!r} is empty")
    return value


def encoder_model(encoder) -> tuple[str | None, str | None]:
    """(model, revision) of an EncoderSpec, a recorded spec dict, or None."""
    if encoder is None:
        return None, None
    if isinstance(encoder, dict):
        return encoder.get("model"), encoder.get("revision")
    return encoder.model, encoder.revision


def parse_label(value, where: str, col: str) -> int:
    """A 0/1 label from bool, int, float or string ('0', '1', 'true', 'false'), else DataError."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return int(value.strip().lower() in ("1", "true"))
    raise DataError(f"{where}: column {col!r} must be 0 or 1, got {value!r}")


def _dedup_pairs(pairs: Pairs) -> Pairs:
    seen, keep = set(), []
    for i, cr in enumerate(zip(pairs.chosen, pairs.rejected)):
        if cr not in seen:
            seen.add(cr)
            keep.append(i)
    pick = lambda xs: [xs[i] for i in keep] if xs is not None else None  # noqa: E731
    return Pairs(pick(pairs.chosen), pick(pairs.rejected), pick(pairs.group), pick(pairs.meta) if pairs.meta else [])


@dataclass
class Row:
    """One validated row: its texts exactly as the encoder sees them (and where each response
    starts in its text), and what pairs are built from."""

    kind: str  # "pairwise" | "pointwise"
    texts: tuple[str, ...]  # pairwise: (chosen, rejected); pointwise: (text,)
    starts: tuple[int | None, ...]  # character offset of each response in its text
    group: object = None
    label: int | None = None  # pointwise
    meta: dict | None = None  # the row's other columns (pairwise: kept per pair)


def validated_rows(spec: DataSpec, encoder=None) -> tuple[str, TextBuilder, Iterator[Row]]:
    """``(source, builder, rows)``: every row of the split, validated and rendered with the
    recipe, one at a time (nothing is held); ``builder`` knows, once the rows are read, which
    recipe they used. Raises :class:`DataError` on the first bad row, and when the split has no
    rows. ``encoder`` (an EncoderSpec or a recorded spec dict) names the tokenizer whose chat
    template and special tokens render conversation rows when ``spec`` does not carry them."""
    source, rows = source_rows(spec.data, spec.split)
    builder = TextBuilder(spec.recipe, *encoder_model(encoder), require_prompt=spec.require_prompt)
    return source, builder, _validate(spec, source, rows, builder)


def _validate(spec: DataSpec, source: str, rows, builder: TextBuilder) -> Iterator[Row]:
    kind = None
    prompt_col = builder.recipe.prompt_col
    reserved = {spec.chosen_col, spec.rejected_col, prompt_col, spec.group_col}
    group_ids = GroupIds(spec.group_col)

    def build(row: dict, col: str, where: str, flag: str, prompt) -> tuple[str, int | None]:
        return builder.build(present(row, col, where, flag), prompt, where, col, flag)

    for where, row in rows:
        if kind is None:
            if spec.chosen_col in row and spec.rejected_col in row:
                kind = "pairwise"
            elif response_column(row, spec.text_col, spec.messages_col) and spec.label_col in row:
                kind = "pointwise"
            else:
                raise DataError(
                    f"{where}: neither pairwise columns ({spec.chosen_col!r}, {spec.rejected_col!r}) nor "
                    f"pointwise columns ({spec.text_col!r}, {spec.messages_col!r} or TRL's 'completion', "
                    f"{spec.label_col!r}) found; columns are {sorted(row)}; map names with --chosen-col/"
                    "--rejected-col/--text-col/--messages-col/--label-col")
        if kind == "pairwise":
            prompt = builder.row_prompt(row, row.get(spec.chosen_col), where)
            (c, cs), (r, rs) = (build(row, spec.chosen_col, where, "--chosen-col", prompt),
                                build(row, spec.rejected_col, where, "--rejected-col", prompt))
            if c == r:
                raise DataError(f"{where}: chosen and rejected are the same text")
            yield Row(kind, (c, r), (cs, rs), group_ids.check(row.get(spec.group_col), where),
                      meta={k: v for k, v in row.items() if k not in reserved})
        else:
            col = response_column(row, spec.text_col, spec.messages_col) or spec.text_col
            t, ts = builder.row_text(row, where, spec.text_col, spec.messages_col)
            reserved_pointwise = {col, spec.text_col, spec.messages_col, spec.label_col, prompt_col, spec.group_col}
            yield Row(kind, (t,), (ts,), group_ids.check(row.get(spec.group_col), where),
                      parse_label(row.get(spec.label_col), where, spec.label_col),
                      {k: v for k, v in row.items() if k not in reserved_pointwise})
    if kind is None:
        raise DataError(f"{source}: no rows for split {spec.split!r}")


class SplitTexts:
    """Every text of a split as ``(key, text, response start, special tokens)`` (the character
    offset of the response in the text, None when unknown; see :class:`Row`; whether the
    tokenizer adds its special tokens), read from its source each time
    it is iterated (repeats included, in row order): stage 1 streams a split without holding its
    texts. After a complete iteration, ``source``, ``kind`` and ``rows`` describe it."""

    def __init__(self, spec: DataSpec, encoder=None):
        self.spec, self.encoder = spec, encoder
        source, builder, rows = validated_rows(spec, encoder)  # a missing source, or a bad or missing first row, fails here
        first = next(rows)
        self.source, self.kind, self.rows, self.recipe = source, first.kind, 0, builder.used()

    def __iter__(self) -> Iterator[tuple[str, str, int | None, bool]]:
        source, builder, rows = validated_rows(self.spec, self.encoder)
        n, kind = 0, self.kind
        for row in rows:
            n += 1
            special = builder.special_tokens  # resolved by the row's first text
            for text, start in zip(row.texts, row.starts):
                yield trace_key(text, special), text, start, special
            kind = row.kind
        self.recipe = builder.used()
        self.source, self.kind, self.rows = source, kind, n


def load_split(spec: DataSpec, encoder=None) -> SplitData:
    """Read, validate and key one split. Raises :class:`DataError` on the first bad row. Holds
    the split's distinct texts (key -> text) and its pairs; stage 1 streams instead
    (:class:`SplitTexts`). ``encoder``: as for :func:`validated_rows`."""
    from .pairs import pairs_from_pointwise

    source, builder, rows = validated_rows(spec, encoder)
    texts: dict[str, str] = {}
    starts: dict[str, int | None] = {}
    conflicts: dict[str, set] = {}
    kind = None
    chosen, rejected, pgroups, metas = [], [], [], []
    pkeys, plabels, pgroups_pt = [], [], []
    trace_columns: dict[str, None] = {}  # pointwise metadata column names, first-seen order
    kept: dict[str, list] = {c: [] for c in spec.keep_columns}  # only what was asked for
    has_group = False
    n_rows = 0

    def add(text: str, start: int | None) -> str:
        k = builder.key(text)
        if k not in texts:
            texts[k], starts[k] = text, start
        elif starts[k] != start:  # the same text split into prompt and response two ways
            conflicts.setdefault(k, {starts[k], start}).add(start)
        return k

    for row in rows:
        kind = row.kind
        n_rows += 1
        has_group = has_group or row.group is not None
        if kind == "pairwise":
            chosen.append(add(row.texts[0], row.starts[0]))
            rejected.append(add(row.texts[1], row.starts[1]))
            pgroups.append(row.group)
            metas.append(row.meta)
        else:
            pkeys.append(add(row.texts[0], row.starts[0]))
            plabels.append(row.label)
            pgroups_pt.append(row.group)
            trace_columns.update(dict.fromkeys(row.meta))
            for c, values in kept.items():
                values.append(row.meta.get(c))

    stats = {"rows": n_rows}
    # What a scorer must repeat: the template, the prompt column only if prompts were joined, the
    # chat template and its tokens only if conversations were rendered.
    used = builder.used().to_dict()
    if kind == "pairwise":
        pairs = Pairs(chosen, rejected, pgroups if has_group else None, metas)
        data = SplitData(source, spec.split, kind, texts, pairs, stats=stats, recipe=used, response_starts=starts)
    else:
        labels = np.asarray(plabels, dtype=np.int8)
        groups = pgroups_pt if has_group else None
        pairs, pstats = pairs_from_pointwise(pkeys, labels, groups, spec.negatives_per_positive, spec.pair_seed)
        stats.update(pstats)
        data = SplitData(source, spec.split, kind, texts, pairs, pkeys, labels, groups, stats, used, starts,
                         trace_columns=list(trace_columns), trace_meta=kept)
    data.start_conflicts = conflicts
    seen = set(zip(data.pairs.chosen, data.pairs.rejected))
    stats["duplicate_pairs"] = len(data.pairs) - len(seen)
    if spec.drop_duplicate_pairs and stats["duplicate_pairs"]:
        data.pairs = _dedup_pairs(data.pairs)
    stats["pairs"] = len(data.pairs)
    stats["texts"] = len(texts)
    return data
