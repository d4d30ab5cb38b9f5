"""Read a split from a hub id, a file or a directory; validate it; turn rows into texts and pairs.

Two row shapes are accepted:

* pairwise: ``chosen``, ``rejected`` (+ optional ``prompt``, ``group``; every other column is
  kept as per-pair metadata);
* pointwise: ``text``, ``label`` in {0, 1} (+ optional ``group``, ``prompt``); pairs are built
  from it as the reference data was (see :mod:`orm_cache.data.pairs`).

Every text the encoder sees is ``template.format(prompt=..., response=...)`` when the row has a
prompt, else the response itself; its key is the sha256 of exactly that string.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import DataSpec, TextRecipe

FILE_EXTS = (".jsonl", ".json", ".parquet", ".csv")
SPLIT_ALIASES = {
    "validation": ("validation", "val", "valid", "dev"),
    "val": ("val", "validation", "valid", "dev"),
    "dev": ("dev", "validation", "val", "valid"),
}


class DataError(ValueError):
    """Bad input data: the message names the source, the row and the problem, in one line."""


def trace_key(text: str) -> str:
    """The content address of a trace: sha256 of the exact UTF-8 string fed to the tokenizer."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def render(template: str, response: str, prompt: str | None) -> str:
    """Join prompt and response with ``template``; a missing or empty prompt gives the response."""
    return TextRecipe(template).render(response, prompt)


@dataclass
class Pairs:
    """Pairwise comparisons by key; ``chosen[i]`` should outscore ``rejected[i]``."""

    chosen: list[str]
    rejected: list[str]
    group: list | None = None
    meta: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.chosen)


@dataclass
class SplitData:
    """One split, validated: the distinct texts by key, the pointwise rows if any, the pairs."""

    source: str
    split: str
    kind: str  # "pairwise" | "pointwise"
    texts: dict[str, str]  # key -> text, distinct, in first-seen order
    pairs: Pairs
    keys: list[str] | None = None  # pointwise: one key per row
    labels: np.ndarray | None = None  # pointwise: (N,) int8 in {0, 1}
    groups: list | None = None  # pointwise: one group per row (None when no group column)
    stats: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=lambda: TextRecipe().to_dict())  # how rows became texts
    @property
    def identity(self) -> dict:
        """What identifies this data in a checkpoint: source, split and a digest of the pairs."""
        h = hashlib.sha256()
        for c, r in zip(self.pairs.chosen, self.pairs.rejected):
            h.update(f"{c}{r}".encode())
        return {"source": self.source, "split": self.split, "kind": self.kind,
                "n_pairs": len(self.pairs), "n_texts": len(self.texts),
                "pairs_sha256": h.hexdigest()}


# --------------------------------------------------------------------------------------- readers

def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is not data
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: bytes are not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def _read_json(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: bytes are not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError:
        # Many ".json" files are really JSON lines.
        yield from _read_jsonl(path)
        return
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a list of objects (or JSON lines)")
    for i, row in enumerate(doc, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i}: expected a JSON object, got {type(row).__name__}")
        yield i, row


def _read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) must not become part of the first column's name
        with open(path, newline="", encoding="utf-8-sig") as f:
            for i, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
                yield i, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: bytes are not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    i = 0
    for batch in pf.iter_batches(batch_size=65536):  # streamed: memory bounded by one batch
        for row in batch.to_pylist():
            i += 1
            yield i, row


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(row number, row)`` from a local file; row numbers are what a person sees
    (line numbers for JSONL and CSV)."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown format {path.suffix!r}; use one of {', '.join(FILE_EXTS)}")
    return reader(path)


def split_file(directory: Path, split: str) -> Path:
    """The file of ``split`` inside a per-split directory (``train.jsonl``, ``validation.parquet``…)."""
    names = SPLIT_ALIASES.get(split, (split,))
    for name in names:
        for ext in FILE_EXTS:
            p = directory / f"{name}{ext}"
            if p.is_file():
                return p
    found = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in FILE_EXTS)
    raise DataError(f"{directory}: no file for split {split!r} (looked for {names[0]}{{{','.join(FILE_EXTS)}}}; "
                    f"found: {', '.join(found) or 'none'})")


def _hub_rows(data: str, split: str) -> Iterator[tuple[int, dict]]:
    try:
        import datasets  # imported only here: the hub is the only place it is needed
    except ImportError as e:  # pragma: no cover - datasets is a declared dependency
        raise DataError(f"{data}: loading a hub data set needs the 'datasets' package ({e})") from None
    try:
        ds = datasets.load_dataset(data, split=split)
    except Exception as e:
        raise DataError(f"{data}: could not load split {split!r} from the hub "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "pass a local file or directory with --data") from None
    for i, row in enumerate(ds, 1):
        yield i, row


def source_rows(spec: DataSpec) -> tuple[str, Iterator[tuple[int, dict]]]:
    """Resolve ``spec.data`` to (description of the source, row iterator)."""
    path = Path(spec.data).expanduser()
    if path.is_dir():
        f = split_file(path, spec.split)
        return str(f), read_rows(f)
    if path.is_file():
        rows = read_rows(path)
        return str(path), _filter_split(path, rows, spec.split)
    looks_local = spec.data.startswith((".", "/", "~")) or Path(spec.data).suffix.lower() in FILE_EXTS
    if looks_local or spec.data.count("/") != 1:
        raise DataError(f"{spec.data}: no such file or directory (and not a hub id of the form owner/name)")
    return f"{spec.data}[{spec.split}]", _hub_rows(spec.data, spec.split)


def _filter_split(path: Path, rows, split: str):
    """A single file with a ``split`` column yields only ``split``'s rows; otherwise all rows."""
    names = SPLIT_ALIASES.get(split, (split,))
    for lineno, row in rows:
        if "split" in row and row["split"] not in names:
            continue
        yield lineno, row


# ----------------------------------------------------------------------------------- validation

def text_field(row: dict, col: str, where: str, flag: str | None = None) -> str:
    """The non-empty string in ``row[col]``, or a :class:`DataError` naming the row, the column
    and the problem (and the flag that maps the column, when given)."""
    value = row.get(col)
    if value is None:
        hint = f"; choose it with {flag}" if flag else ""
        state = "missing" if col not in row else "null"
        raise DataError(f"{where}: column {col!r} is {state} (columns: {sorted(row)}){hint}")
    if not isinstance(value, str):
        raise DataError(f"{where}: column {col!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: column {col!r} is empty")
    return value


def prompt_field(row: dict, col: str | None, where: str) -> str | None:
    """The optional prompt in ``row[col]`` (None when absent), or a DataError if not a string."""
    p = row.get(col) if col else None
    if p is not None and not isinstance(p, str):
        raise DataError(f"{where}: column {col!r} must be a string, got {type(p).__name__}")
    return p


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
    """One validated row: its texts exactly as the encoder sees them, and what pairs are built from."""

    kind: str  # "pairwise" | "pointwise"
    texts: tuple[str, ...]  # pairwise: (chosen, rejected); pointwise: (text,)
    group: object = None
    label: int | None = None  # pointwise
    meta: dict | None = None  # pairwise: the row's other columns
    has_prompt: bool = False


def validated_rows(spec: DataSpec) -> tuple[str, Iterator[Row]]:
    """``(source, rows)``: every row of the split, validated and rendered with the recipe, one at
    a time (nothing is held). Raises :class:`DataError` on the first bad row, and when the split
    has no rows."""
    source, rows = source_rows(spec)
    return source, _validate(spec, source, rows)


def _validate(spec: DataSpec, source: str, rows) -> Iterator[Row]:
    kind = None
    recipe = spec.recipe
    reserved = {spec.chosen_col, spec.rejected_col, recipe.prompt_col, spec.group_col}
    for lineno, row in rows:
        where = f"{source}:{lineno}"
        if kind is None:
            if spec.chosen_col in row and spec.rejected_col in row:
                kind = "pairwise"
            elif spec.text_col in row and spec.label_col in row:
                kind = "pointwise"
            else:
                raise DataError(
                    f"{where}: neither pairwise columns ({spec.chosen_col!r}, {spec.rejected_col!r}) nor "
                    f"pointwise columns ({spec.text_col!r}, {spec.label_col!r}) found; columns are "
                    f"{sorted(row)}; map names with --chosen-col/--rejected-col/--text-col/--label-col")
        prompt = prompt_field(row, recipe.prompt_col, where)
        group = row.get(spec.group_col)
        if kind == "pairwise":
            c = recipe.render(text_field(row, spec.chosen_col, where, "--chosen-col"), prompt)
            r = recipe.render(text_field(row, spec.rejected_col, where, "--rejected-col"), prompt)
            if c == r:
                raise DataError(f"{where}: chosen and rejected are the same text")
            yield Row(kind, (c, r), group, meta={k: v for k, v in row.items() if k not in reserved},
                      has_prompt=bool(prompt))
        else:
            t = recipe.render(text_field(row, spec.text_col, where, "--text-col"), prompt)
            yield Row(kind, (t,), group, parse_label(row.get(spec.label_col), where, spec.label_col),
                      has_prompt=bool(prompt))
    if kind is None:
        raise DataError(f"{source}: no rows for split {spec.split!r}")


class SplitTexts:
    """Every text of a split as ``(key, text)``, read from its source each time it is iterated
    (repeats included, in row order): stage 1 streams a split without holding its texts. After
    a complete iteration, ``source``, ``kind`` and ``rows`` describe it."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        source, rows = validated_rows(spec)  # a missing source, or a bad or missing first row, fails here
        first = next(rows)
        self.source, self.kind, self.rows = source, first.kind, 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        source, rows = validated_rows(self.spec)
        n = 0
        for row in rows:
            n += 1
            for text in row.texts:
                yield trace_key(text), text
            kind = row.kind
        self.source, self.kind, self.rows = source, kind, n


def load_split(spec: DataSpec) -> SplitData:
    """Read, validate and key one split. Raises :class:`DataError` on the first bad row. Holds
    the split's distinct texts (key -> text) and its pairs; stage 1 streams instead
    (:class:`SplitTexts`)."""
    from .pairs import pairs_from_pointwise

    source, rows = validated_rows(spec)
    texts: dict[str, str] = {}
    kind = None
    chosen, rejected, pgroups, metas = [], [], [], []
    pkeys, plabels, pgroups_pt = [], [], []
    has_group = has_prompt = False
    n_rows = 0
    recipe = spec.recipe

    def add(text: str) -> str:
        k = trace_key(text)
        texts.setdefault(k, text)
        return k

    for row in rows:
        kind = row.kind
        n_rows += 1
        has_prompt = has_prompt or row.has_prompt
        has_group = has_group or row.group is not None
        if kind == "pairwise":
            chosen.append(add(row.texts[0]))
            rejected.append(add(row.texts[1]))
            pgroups.append(row.group)
            metas.append(row.meta)
        else:
            pkeys.append(add(row.texts[0]))
            plabels.append(row.label)
            pgroups_pt.append(row.group)

    stats = {"rows": n_rows}
    # What a scorer must repeat: the template, and the prompt column only if prompts were joined.
    used = TextRecipe(recipe.template, recipe.prompt_col if has_prompt else None).to_dict()
    if kind == "pairwise":
        pairs = Pairs(chosen, rejected, pgroups if has_group else None, metas)
        data = SplitData(source, spec.split, kind, texts, pairs, stats=stats, recipe=used)
    else:
        labels = np.asarray(plabels, dtype=np.int8)
        groups = pgroups_pt if has_group else None
        pairs, pstats = pairs_from_pointwise(pkeys, labels, groups, spec.negatives_per_positive, spec.pair_seed)
        stats.update(pstats)
        data = SplitData(source, spec.split, kind, texts, pairs, pkeys, labels, groups, stats, used)
    seen = set(zip(data.pairs.chosen, data.pairs.rejected))
    stats["duplicate_pairs"] = len(data.pairs) - len(seen)
    if spec.drop_duplicate_pairs and stats["duplicate_pairs"]:
        data.pairs = _dedup_pairs(data.pairs)
    stats["pairs"] = len(data.pairs)
    stats["texts"] = len(texts)
    return data
