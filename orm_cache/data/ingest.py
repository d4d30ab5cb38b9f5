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
from ..text.steps import DEFAULT_STEP_PATTERN
from .stepwise import ROW_PROMPT, STEP_SEPARATOR, is_stepwise, stepwise_fields
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
    steps: tuple | None = None  # per text: the texts of its step prefixes (DataSpec.step_prefixes, or stepwise data)
    step_labels: tuple | None = None  # stepwise data: one 0/1 label per step of its one text


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

    def prefixes(value, prompt, where: str, col: str, ends=None) -> tuple[str, ...]:
        return tuple(t for t, _ in builder.build_steps(value, prompt, where, col, spec.step_pattern, ends))

    for where, row in rows:
        if kind is None:
            if spec.chosen_col in row and spec.rejected_col in row:
                kind = "pairwise"
            elif is_stepwise(row):
                kind = "stepwise"
            elif response_column(row, spec.text_col, spec.messages_col) and spec.label_col in row:
                kind = "pointwise"
            else:
                raise DataError(
                    f"{where}: neither pairwise columns ({spec.chosen_col!r}, {spec.rejected_col!r}) nor "
                    f"pointwise columns ({spec.text_col!r}, {spec.messages_col!r} or TRL's 'completion', "
                    f"{spec.label_col!r}) nor TRL's stepwise columns ('completions', 'labels') found; columns are "
                    f"{sorted(row)}; map names with --chosen-col/"
                    "--rejected-col/--text-col/--messages-col/--label-col")
        if kind == "pairwise":
            prompt = builder.row_prompt(row, row.get(spec.chosen_col), where)
            (c, cs), (r, rs) = (build(row, spec.chosen_col, where, "--chosen-col", prompt),
                                build(row, spec.rejected_col, where, "--rejected-col", prompt))
            if c == r:
                raise DataError(f"{where}: chosen and rejected are the same text")
            steps = (prefixes(row[spec.chosen_col], prompt, where, spec.chosen_col),
                     prefixes(row[spec.rejected_col], prompt, where, spec.rejected_col)) if spec.step_prefixes else None
            yield Row(kind, (c, r), (cs, rs), group_ids.check(row.get(spec.group_col), where),
                      meta={k: v for k, v in row.items() if k not in reserved}, steps=steps)
        elif kind == "stepwise":
            yield _stepwise_row(spec, builder, row, where, group_ids, prefixes)
        else:
            col = response_column(row, spec.text_col, spec.messages_col) or spec.text_col
            t, ts = builder.row_text(row, where, spec.text_col, spec.messages_col)
            reserved_pointwise = {col, spec.text_col, spec.messages_col, spec.label_col, prompt_col, spec.group_col}
            steps = None
            if spec.step_prefixes:
                value = row[col]
                steps = (prefixes(value, builder.row_prompt(row, value, where), where, col),)
            yield Row(kind, (t,), (ts,), group_ids.check(row.get(spec.group_col), where),
                      parse_label(row.get(spec.label_col), where, spec.label_col),
                      {k: v for k, v in row.items() if k not in reserved_pointwise}, steps)
    if kind is None:
        raise DataError(f"{source}: no rows for split {spec.split!r}")


def _stepwise_row(spec: DataSpec, builder: TextBuilder, row: dict, where: str, group_ids: GroupIds, prefixes) -> Row:
    """A row labelling each step (:mod:`.stepwise`): its one text, the steps joined by a newline (as
    TRL's PRM trainer joins them) after its prompt, and each step's prefix with its label."""
    from ..text import joined_steps

    col, prompt, steps, labels, read = stepwise_fields(row, where)
    response, ends = joined_steps(steps, where, col, STEP_SEPARATOR)
    if not isinstance(labels, (list, tuple)) or len(labels) != len(ends):
        n = len(labels) if isinstance(labels, (list, tuple)) else type(labels).__name__
        raise DataError(f"{where}: the labels must be one per step ({len(ends)} steps), got {n}")
    labels = tuple(parse_label(v, f"{where} step {i}", "labels") for i, v in enumerate(labels))
    if prompt is ROW_PROMPT:
        prompt = builder.row_prompt(row, response, where)
    text, start = builder.build(response, prompt, where, col)
    texts = prefixes(response, prompt, where, col, ends)
    if len(set(texts)) != len(texts):
        raise DataError(f"{where}: two steps give the same prefix text (a step the recipe does not write)")
    reserved = {*read, builder.recipe.prompt_col, spec.group_col}
    return Row("stepwise", (text,), (start,), group_ids.check(row.get(spec.group_col), where),
               meta={k: v for k, v in row.items() if k not in reserved}, steps=(texts,), step_labels=labels)


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

    def __iter__(self) -> Iterator[tuple[str, str, int | None, bool, tuple]]:
        source, builder, rows = validated_rows(self.spec, self.encoder)
        n, kind = 0, self.kind
        for row in rows:
            n += 1
            special = builder.special_tokens  # resolved by the row's first text
            for i, (text, start) in enumerate(zip(row.texts, row.starts)):
                steps = () if row.steps is None else tuple((trace_key(t, special), t) for t in row.steps[i])
                yield trace_key(text, special), text, start, special, steps
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

    steps: dict[str, list[str]] = {}  # trace key -> its step prefixes' keys
    stepwise = False
    seen_points: set = set()  # (group, text, label) of the prefix points (train_on prefixes)
    step_texts: dict[str, str] = {}

    def point(text: str, start, label: int, group, meta: dict) -> None:
        pkeys.append(add(text, start))
        plabels.append(label)
        pgroups_pt.append(group)
        trace_columns.update(dict.fromkeys(meta))
        for c, values in kept.items():
            values.append(meta.get(c))

    for row in rows:
        kind = row.kind
        n_rows += 1
        has_group = has_group or row.group is not None
        stepwise = stepwise or kind == "stepwise"
        if kind == "stepwise" or spec.train_on == "prefixes":  # labelled step prefixes: pointwise points
            # a pair without a group column is its own problem; other rows without one: no group
            group = row.group if row.group is not None or kind != "pairwise" else f"\x00pair {n_rows}"
            has_group = has_group or group is not None
            if kind == "stepwise":  # each step's own label
                for t, y in zip(row.steps[0], row.step_labels):
                    point(t, row.starts[0], y, group, row.meta)
            else:  # every prefix, and the trace itself, labelled with the trace's outcome
                for i, y in enumerate((1, 0) if kind == "pairwise" else (row.label,)):
                    for t in dict.fromkeys((*row.steps[i], row.texts[i])):  # the last prefix may be the trace
                        if (group, t, y) not in seen_points:  # a trace in several pairs counts once
                            seen_points.add((group, t, y))
                            point(t, row.starts[i], y, group, row.meta)
            kind = "pointwise"
            continue
        if row.steps is not None:  # the step prefixes of each trace, kept beside (eval --step-aggregate)
            for text, start, prefixes in zip(row.texts, row.starts, row.steps):
                keys = [builder.key(t) for t in prefixes]
                steps[builder.key(text)] = keys
                for k, t in zip(keys, prefixes):
                    step_texts[k] = t
                    starts.setdefault(k, start)
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
    data.steps, data.step_texts = steps, step_texts
    if spec.train_on == "prefixes" or stepwise:
        stats["step_points"] = len(pkeys)
        stats["step_pattern"] = (STEP_SEPARATOR if stepwise else None) or spec.step_pattern or DEFAULT_STEP_PATTERN
    seen = set(zip(data.pairs.chosen, data.pairs.rejected))
    stats["duplicate_pairs"] = len(data.pairs) - len(seen)
    if spec.drop_duplicate_pairs and stats["duplicate_pairs"]:
        data.pairs = _dedup_pairs(data.pairs)
    stats["pairs"] = len(data.pairs)
    stats["texts"] = len(texts)
    return data
