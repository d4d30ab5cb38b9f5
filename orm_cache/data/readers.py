"""Where rows come from: files, per-split directories, ``datasets`` folders and hub ids.

Every command reads rows through :func:`read_rows` (one file) or :func:`source_rows` (what
``--data``/``--split`` name). Formats are streamed where the format allows it: JSON lines (plain
or gzipped) line by line, Parquet and Arrow batch by batch from a memory map, so memory is bounded
by a batch, not the file. Only a JSON *array* (``.json``/``.json.gz`` holding one list) is parsed
whole. ``datasets`` is imported only for hub ids (a ``save_to_disk`` folder is plain Arrow, read
with pyarrow).

Over 400 lines: one reader per file format plus the rules that pick a split's rows, kept in one
module so every command reads rows one way (split them and the rules drift apart).
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path
from typing import Iterator

from ..errors import DataError  # noqa: F401 (re-exported)

FILE_EXTS = (".jsonl", ".json", ".parquet", ".csv", ".arrow", ".jsonl.gz", ".json.gz")
SPLIT_ALIASES = {
    "validation": ("validation", "val", "valid", "dev"),
    "val": ("val", "validation", "valid", "dev"),
    "dev": ("dev", "validation", "val", "valid"),
}
BATCH_ROWS = 65536




def file_format(path: Path) -> str | None:
    """The format extension of ``path`` (``.jsonl.gz`` counts as one), or None."""
    name = path.name.lower()
    for ext in sorted(FILE_EXTS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return None


# ------------------------------------------------------------------------------------- files

class BadRow(dict):
    """A row that could not be read (malformed JSON, not UTF-8, a duplicate key): yielded in its
    place by ``read_rows(..., lenient=True)`` so that ``--skip-invalid`` sets it aside like any
    other bad row; ``reason`` is the one-line message, the dict holds what was read of it."""

    def __init__(self, reason: str, raw: str = ""):
        super().__init__(raw=raw[:10_000])
        self.reason = reason


class _DuplicateKey(Exception):
    pass


def _object(pairs: list) -> dict:
    """``json.loads``' object hook: a JSON object naming one key twice has no single meaning
    (``{"text": "good", "text": "evil"}``), so it is refused instead of keeping the last."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return d


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _unencodable(value) -> str | None:
    """The first string in ``value`` (a parsed JSON value) that UTF-8 cannot encode (it holds an
    unpaired surrogate, written in JSON as an escape like \\ud800), shown briefly; else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"{value[max(0, e.start - 20):e.start]!r} followed by an unpaired surrogate U+{ord(value[e.start]):04X}"
        return None
    items = value.items() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        for v in item if isinstance(value, dict) else (item,):
            bad = _unencodable(v)
            if bad:
                return bad
    return None


def parse_json_text(text: str, where: str):
    """``json.loads(text)``, refusing in one line (DataError naming ``where``) malformed JSON,
    an object that names a key twice, and a string UTF-8 cannot encode."""
    try:
        doc = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except _DuplicateKey as e:
        raise DataError(f"{where}: a JSON object names the key {e.args[0]!r} twice, so it has no single meaning; "
                        "keep one of them") from None
    if _SURROGATE.search(text):
        bad = _unencodable(doc)
        if bad:
            raise DataError(f"{where}: text cannot be encoded as UTF-8 ({bad}); fix or remove that escape")
    return doc


def _json_lines(path: Path, f, lenient: bool = False) -> Iterator[tuple[int, dict]]:
    for lineno, raw in enumerate(f, 1):
        line = ""
        try:
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is not data
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: bytes are not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            row = parse_json_text(line, f"{path}:{lineno}")
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        except DataError as e:
            if not lenient:
                raise
            row = BadRow(str(e), line or raw.decode("utf-8", errors="replace"))
        yield lineno, row


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_jsonl(path: Path, lenient: bool = False) -> Iterator[tuple[int, dict]]:
    try:
        with _open(path) as f:
            yield from _json_lines(path, f, lenient)
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None


def _read_json(path: Path, lenient: bool = False) -> Iterator[tuple[int, dict]]:
    try:
        if _is_json_lines(path):  # many ".json" files are really JSON lines: stream them
            yield from _read_jsonl(path, lenient)
            return
        with _open(path) as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: bytes are not valid UTF-8 ({e.reason} at byte {e.start})") from None
    doc = parse_json_text(text, str(path))
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a list of objects (or JSON lines)")
    for i, row in enumerate(doc, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i}: expected a JSON object, got {type(row).__name__}")
        yield i, row


def _is_json_lines(path: Path) -> bool:
    """JSON lines rather than one document: the first non-blank line is a complete JSON object
    and another non-blank line follows it."""
    with _open(path) as f:
        if f.read(4096).decode("utf-8-sig", errors="replace").lstrip()[:1] != "{":
            return False  # a JSON array (or nothing): not lines, and not worth parsing twice
    with _open(path) as f:
        lines = (raw for raw in f if raw.strip())
        first = next(lines, b"")
        try:
            if not isinstance(json.loads(first.decode("utf-8-sig")), dict):
                return False
        except (UnicodeDecodeError, json.JSONDecodeError):
            return False
        return next(lines, None) is not None


def _read_csv(path: Path, lenient: bool = False) -> Iterator[tuple[int, dict]]:
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) must not become part of the first column's name
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            names = reader.fieldnames or []
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise DataError(f"{path}:1: the header names column {twice[0]!r} twice, so its rows have no single "
                                "meaning; rename one")
            for i, row in enumerate(reader, 2):  # line 1 is the header
                yield i, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: bytes are not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _unique_columns(path: Path, names) -> None:
    twice = sorted({n for n in names if list(names).count(n) > 1})
    if twice:
        raise DataError(f"{path}: its schema names column {twice[0]!r} twice, so its rows have no single meaning; "
                        "rename one")


def _read_parquet(path: Path, lenient: bool = False) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    _unique_columns(path, pf.schema_arrow.names)
    i = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS):  # streamed: memory bounded by one batch
        for row in batch.to_pylist():
            i += 1
            yield i, row


def _arrow_batches(path: Path):
    """Record batches of an Arrow IPC file: the stream format ``datasets`` writes, or the file
    format (pyarrow's, polars'), read from a memory map."""
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except pa.ArrowInvalid:
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
        except Exception as e:
            raise DataError(f"{path}: not a readable Arrow file ({e})") from None
        return (reader.get_batch(i) for i in range(reader.num_record_batches))
    except Exception as e:
        raise DataError(f"{path}: not a readable Arrow file ({e})") from None
    return iter(reader)


def _read_arrow(path: Path, lenient: bool = False) -> Iterator[tuple[int, dict]]:
    i = 0
    for batch in _arrow_batches(path):
        _unique_columns(path, batch.schema.names)
        for start in range(0, batch.num_rows, BATCH_ROWS):
            for row in batch.slice(start, BATCH_ROWS).to_pylist():
                i += 1
                yield i, row


READERS = {".jsonl": _read_jsonl, ".jsonl.gz": _read_jsonl, ".json": _read_json, ".json.gz": _read_json,
           ".csv": _read_csv, ".parquet": _read_parquet, ".arrow": _read_arrow}


def read_rows(path: Path, lenient: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield ``(row number, row)`` from a local file; row numbers are what a person sees
    (line numbers for JSONL and CSV, 1-based records otherwise). ``lenient``: a JSON line that
    cannot be read is yielded as a :class:`BadRow` (for --skip-invalid) instead of stopping."""
    path = Path(path)
    reader = READERS.get(file_format(path))
    if reader is None:
        raise DataError(f"{path}: unknown format {path.suffix or path.name!r}; "
                        f"use one of {', '.join(FILE_EXTS)}")
    return _named_errors(path, reader(path, lenient))


def _named_errors(path: Path, rows: Iterator[tuple[int, dict]]) -> Iterator[tuple[int, dict]]:
    """``rows``, with a file found corrupt part-way (a bad gzip block, a truncated Arrow body, a
    corrupt Parquet page) reported in one line naming it and the last good row."""
    import zlib

    import pyarrow as pa

    last = 0
    try:
        for last, row in rows:
            yield last, row
    except (OSError, EOFError, zlib.error, pa.ArrowException) as e:
        if isinstance(e, FileNotFoundError):
            raise DataError(f"{path}: no such file") from None
        raise DataError(f"{path}: unreadable after row {last} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'corrupt data'})") from None


# ------------------------------------------------------------------------------- directories

def _data_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and file_format(p))


def split_files(directory: Path, split: str) -> list[Path]:
    """The files of ``split`` in a per-split directory, read in order as one split: ``<split>.<ext>``,
    else the shards ``<split>-*.<ext>`` (hub style, e.g. ``train-00000-of-00003.parquet``), else
    the files of a ``<split>/`` folder; looked for at the top and under ``data/``."""
    names = SPLIT_ALIASES.get(split, (split,))
    bases = [b for b in (directory, directory / "data") if b.is_dir()]
    ways: list[list[Path]] = []  # each a complete reading of the split; more than one is ambiguous
    for name in names:
        for base in bases:
            ways += [[base / f"{name}{ext}"] for ext in FILE_EXTS if (base / f"{name}{ext}").is_file()]
            shards = sorted(p for p in base.glob(f"{name}-*") if p.is_file() and file_format(p))
            sub = base / name
            ways += [shards] if shards else []
            ways += [_data_files(sub)] if sub.is_dir() and _data_files(sub) else []
    if len(ways) > 1:
        shown = [str(w[0].relative_to(directory)) if len(w) == 1 else
                 f"{w[0].relative_to(directory)} and {len(w) - 1} more shard(s)" for w in ways]
        raise DataError(f"{directory}: split {split!r} is given {len(ways)} ways ({'; '.join(shown)}); which one is "
                        "meant is ambiguous: keep one and move the others away")
    if ways:
        formats = {file_format(p) for p in ways[0]}
        if len(formats) > 1:
            raise DataError(f"{ways[0][0].parent}: the files of split {split!r} mix formats "
                            f"({', '.join(sorted(formats))}); keep one format per split")
        return ways[0]
    found = sorted(str(p.relative_to(directory)) for b in bases for p in _data_files(b))
    raise DataError(f"{directory}: no file for split {split!r} (looked for {names[0]}{{{','.join(FILE_EXTS)}}} "
                    f"and {names[0]}-*.<ext> shards, also under data/; found: {', '.join(found) or 'none'})")


def split_file(directory: Path, split: str) -> Path:
    """The first file of ``split`` in a per-split directory (see :func:`split_files`)."""
    return split_files(directory, split)[0]


def _chain(files: list[Path]) -> Iterator[tuple[str, dict]]:
    for f in files:
        for n, row in read_rows(f):
            yield f"{f}:{n}", row


def _where(source: str, rows) -> Iterator[tuple[str, dict]]:
    for n, row in rows:
        yield f"{source}:{n}", row


# ------------------------------------------------------------------ datasets' save_to_disk

def is_saved_dataset(directory: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (state.json + Arrow files)."""
    return (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file()


def is_saved_dataset_dict(directory: Path) -> bool:
    """A folder written by ``DatasetDict.save_to_disk`` (dataset_dict.json + one folder per split)."""
    return (directory / "dataset_dict.json").is_file()


def _saved_dataset_files(directory: Path) -> list[Path]:
    try:
        state = json.loads((directory / "state.json").read_text())
        files = [directory / d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{directory}: state.json of a save_to_disk folder is unreadable ({e})") from None
    if state.get("_indices_data_files"):
        raise DataError(f"{directory}: this save_to_disk folder keeps an indices mapping; save it again with a "
                        "current datasets version (it writes the selected rows themselves)")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{directory}: state.json lists Arrow files that are missing: {', '.join(missing)}")
    return files


def _saved_dict_split(directory: Path, split: str) -> Path:
    try:
        splits = json.loads((directory / "dataset_dict.json").read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{directory}: dataset_dict.json is unreadable ({e})") from None
    for name in SPLIT_ALIASES.get(split, (split,)):
        if name in splits:
            return directory / name
    raise DataError(f"{directory}: the DatasetDict has no split {split!r} (splits: {', '.join(splits)}); "
                    "choose one with --split")


# ------------------------------------------------------------------------------------ hub ids

def _hub_rows(data: str, split: str) -> Iterator[tuple[str, dict]]:
    if data.endswith(("/", "\\")) or data.startswith((".", "/", "~")) or data.count("/") > 1:
        raise DataError(f"{data}: no such file or directory (a hub id has the form owner/name)")
    try:
        import datasets  # imported only here: the hub is the only place it is needed
    except ImportError as e:
        raise DataError(f"{data}: loading a hub data set needs the 'datasets' package ({e}); or download it "
                        "and pass the folder with --data") from None
    try:
        ds = datasets.load_dataset(data, split=split)
    except Exception as e:
        raise DataError(f"{data}: could not load split {split!r} from the hub "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "pass a local file or directory with --data") from None
    for i, row in enumerate(ds, 1):
        yield f"{data}[{split}]:{i}", row


def source_rows(data: str, split: str) -> tuple[str, Iterator[tuple[str, dict]]]:
    """Resolve ``--data``/``--split`` to (description of the source, iterator of ``(where, row)``),
    ``where`` naming the file and row for messages. Several files of one split are read as one."""
    path = Path(data).expanduser()
    if path.is_dir():
        if is_saved_dataset_dict(path):
            sub = _saved_dict_split(path, split)
            return str(sub), _chain(_saved_dataset_files(sub))
        if is_saved_dataset(path):  # one Dataset: all of it, whatever --split says
            return str(path), _chain(_saved_dataset_files(path))
        files = split_files(path, split)
        if len(files) == 1:
            return str(files[0]), _chain(files)
        return f"{files[0].parent}/{split} ({len(files)} files)", _chain(files)
    if path.is_file():
        return str(path), _where(str(path), filter_split(read_rows(path), split, str(path)))
    looks_local = data.startswith((".", "/", "~")) or file_format(Path(data)) is not None
    if looks_local or data.count("/") != 1:
        raise DataError(f"{data}: no such file or directory (and not a hub id of the form owner/name)")
    return f"{data}[{split}]", _hub_rows(data, split)


def filter_split(rows, split: str, source: str = "data"):
    """A single file with a ``split`` column yields only ``split``'s rows; one without it, all
    rows. A file where some rows have a split and others not is refused (the others would land
    in every split), and so is a ``split`` no row has (naming the ones present)."""
    names = SPLIT_ALIASES.get(split, (split,))
    has, first, present, kept = None, None, {}, 0
    for lineno, row in rows:
        value = row.get("split")
        if has is None:
            has, first = value is not None, lineno
        elif (value is not None) != has:
            row_has, other = ("has a value", "has none") if value is not None else ("has no value", "has one")
            raise DataError(f"{source}:{lineno}: this row {row_has} in column 'split' but row {first} {other}; rows "
                            "without a split would land in every split (train and test alike): give every row a "
                            "split, or none")
        if not has:
            yield lineno, row
            continue
        if len(present) < 100:
            present.setdefault(str(value), None)
        if value in names:
            kept += 1
            yield lineno, row
    if has and not kept:
        raise DataError(f"{source}: no row has split {split!r}; its split column holds "
                        f"{', '.join(sorted(present))}; choose one of them with --split")
