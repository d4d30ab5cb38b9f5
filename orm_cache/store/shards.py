"""The vector store: append-only Arrow IPC shards under ``<cache>/vectors/<fingerprint16>/``.

Layout::

    cache/vectors/3f2a…/encoder.json          identity and spec of the encoder (a copy of what
                                               every shard carries; rebuilt from the shards if lost)
    cache/vectors/3f2a…/<id>.<crc32>.arrow     one shard: key, n_tokens, truncated, recomputed_fp32,
                                               [response_start,] <pool>@<layer>…; the CRC32 of its
                                               bytes is in its name

``response_start`` (int32; only in stores with a ``response_mean`` column) is the character
offset where each text's response starts, -1 unknown: a response_mean vector depends on it, and
it is data, not text, so a split that puts the response of the same text elsewhere is refused
when loaded (:func:`~orm_cache.pipeline.vectors.check_response_starts`).

A shard is written under a hidden temporary name and renamed into place, so a reader only ever
sees complete shards; shard names are unique per process, so any number of writers (processes,
torchrun ranks) add shards to one store without touching a shared file. Duplicate keys (two
writers embedding the same text) collapse on read: the shard opened first wins (shards are
opened in name order, and shards that appear later are opened after them).

Every shard is checked when opened: its bytes against the CRC32 in its name, then Arrow's own
validation and the fingerprint in its metadata. A shard that fails is named in a warning and left
out, so its rows count as missing and the next ``embed`` writes them again. Reading every byte at
every open would cost a 40 GB store a full read per command, so a shard whose bytes matched its
checksum is remembered in ``verified.json`` by name, size and modification time, and not read
again while those stay the same (a changed file is checked again; ``cache check`` always reads
every byte). A shard is remembered only once its modification time is a few seconds old, so a
change within the file system's timestamp resolution cannot hide behind an unchanged mtime. A shard that is gone
by the time it is opened is not bad: ``cache compact`` deleted it after writing the shard that
holds its rows, so the reader lists the directory again (see :meth:`VectorStore.refresh`).

Each shard's schema metadata names its fingerprint, encoder identity and (since the spec key
was added) encoder spec, so ``encoder.json`` is only a convenience: when it is missing, not JSON
or does not describe its directory, ``describe.describe_store`` takes the description from the shards.

Over 400 lines: :class:`VectorStore` is one class (the store's read side) whose methods share its
shard tables, key indexes and column views; its file-level helpers are in :mod:`.layout`.
"""

from __future__ import annotations


import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import StoreError  # noqa: F401 (re-exported: its old import location)
from .index import KeyIndex, key_hashes
from .columns import LOGPROB, LOGPROB_FIELDS
from .layout import (META_FINGERPRINT, META_IDENTITY, META_SCHEMA, META_SPEC, RACY_SECONDS,  # noqa: F401 (re-exported)
                     RELIST_LIMIT, RESPONSE_START, SHARD_SUFFIX, TMP_PREFIX, UNKNOWN_START, VERIFIED,
                     _atomic_write_bytes, _stat_key, list_shards, open_shard, read_verified, remember_verified,
                     store_dir, stored_columns, vector_columns, write_shard)
from .rows import ConcatRows, Rows, StoreRows
from .writer import ShardWriter  # noqa: F401 (re-exported: its old import location)



def legacy_sources(vectors_root: Path, fp: str, own: Path) -> list[tuple[Path, str]]:
    """Stores under ``vectors_root`` written before poolings and layers became columns (schema 1,
    one store per pooling set) whose encoder is ``fp``'s: ``(directory, their fingerprint)``.
    The store of ``fp`` reads their shards beside its own, so nothing embedded before is hidden
    or embedded again; new shards go to the store's own directory."""
    from .describe import describe_store
    from .fingerprint import encoder_fingerprint

    out = []
    if not Path(vectors_root).is_dir():
        return out
    for d in sorted(p for p in Path(vectors_root).iterdir() if p.is_dir() and p != Path(own)):
        desc = describe_store(d)
        ident = desc["identity"] or {}
        if desc["fingerprint"] and "pooling" in ident and encoder_fingerprint(ident) == fp:
            out.append((d, desc["fingerprint"]))
    return out


class VectorStore:
    """Read side of one encoder's store: key -> row index over memory-mapped shards.

    Rows are numbered across shards in opening order (a shard's rows follow the previous
    shard's); the index maps each distinct key to its row in 16 bytes (:class:`KeyIndex`), and
    the vectors stay in the shards' pages, read through :class:`~orm_cache.store.rows.StoreRows`.
    """

    def __init__(self, directory: Path, fp: str):
        self.dir = Path(directory)
        self.fp = fp
        self._tables: list[pa.Table] = []
        self._paths: list[Path] = []
        self._starts: list[int] = [0]  # first row of each shard, and the total at the end
        # one key index per set of vector columns a shard holds (embedding another pooling or layer
        # later writes shards with other columns into the same store): columns -> index
        self._groups: dict[tuple[str, ...], KeyIndex] = {}
        self._parts: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}  # column -> (views, first rows)
        self.skipped: list[tuple[Path, str]] = []
        # a key is called missing only after the directory was listed within this many seconds
        # (0: listed again each time; a server answering many misses a second lists it less often)
        self.relist_seconds = 0.0
        self._listed = 0.0
        self.sources = [(self.dir, fp)] + legacy_sources(self.dir.parent, fp, self.dir)
        self.refresh()

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, cache_dir, fp: str, identity: dict | None = None, create: bool = False,
             spec: dict | None = None) -> "VectorStore":
        d = store_dir(cache_dir, fp)
        if create:
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot write to the cache directory {d} ({e.strerror or e})") from e
            from .describe import read_encoder_json, write_encoder_json

            if identity is not None and read_encoder_json(d)[1] is not None:  # missing (or broken)
                write_encoder_json(d, fp, identity, spec)
        return cls(d, fp)

    def refresh(self) -> None:
        """Open complete shards not opened yet (all of them the first time); temporary files are
        never read. Shards are taken in name order, so duplicate keys resolve the same way.

        A listed shard that is gone when opened was deleted by ``cache compact``, which deletes a
        shard only once each of its rows is in another complete shard of the directory (the
        merged one, or one it keeps); so the keys of the directory's shards never shrink. The
        directory is listed again until one listing opens with nothing gone: every key on disk
        at that listing, so every key on disk when the refresh began, is then in a shard opened
        now or before, and an opened shard stays readable (memory-mapped) once deleted.
        """
        self._listed = time.monotonic()
        for _ in range(RELIST_LIMIT):
            if not self._open_new_shards():
                return
        raise StoreError(f"shards of {self.dir} kept disappearing while being opened ({RELIST_LIMIT} "
                         "listings); is something other than orm-cache deleting them?")

    def _open_new_shards(self) -> bool:
        """Open the listed shards not opened (or skipped) yet, of this store's directory and of
        the schema-1 stores it reads across (:func:`legacy_sources`); True when one was gone
        before it opened."""
        known = set(self._paths) | {p for p, _ in self.skipped}
        gone = False
        added: dict[tuple[str, ...], tuple[list, list]] = {}  # columns -> (key hashes, rows) per new shard
        for directory, fp in self.sources:
            if not directory.is_dir():
                continue
            new = [p for p in list_shards(directory) if p not in known]
            if not new:
                continue
            memo, now = read_verified(directory), time.time_ns()
            checked: dict[str, list[int] | None] = {}
            for path in new:
                stat = _stat_key(path)
                try:
                    if stat is not None and memo.get(path.name) == stat:
                        table, problem = open_shard(path, fp, checksum=False)
                    else:
                        table, problem = open_shard(path, fp)
                        trusted = not problem and stat is not None and now - stat[1] > RACY_SECONDS * 1e9
                        if trusted or path.name in memo:
                            checked[path.name] = stat if trusted else None
                except FileNotFoundError:
                    gone = True
                    continue
                if problem:
                    self._skip(path, problem)
                    continue
                first = self._starts[-1]
                self._tables.append(table)
                self._paths.append(path)
                self._starts.append(first + table.num_rows)
                hashes, rows = added.setdefault(stored_columns(table.schema), ([], []))
                hashes.append(key_hashes(table.column("key").to_pylist()))
                rows.append(np.arange(first, self._starts[-1]))
            if checked:
                remember_verified(directory, checked)
        for cols, (hashes, rows) in added.items():
            self._groups.setdefault(cols, KeyIndex(self._keys_at)).add(np.concatenate(hashes), np.concatenate(rows))
        if added:
            self._parts.clear()
        return gone

    def _skip(self, path: Path, why: str) -> None:
        self.skipped.append((path, why))
        warnings.warn(f"skipping shard {path}: {why}; its rows will be embedded again", stacklevel=4)

    def _shard_rows(self, gids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global rows -> (shard, row within the shard)."""
        starts = np.asarray(self._starts)
        shard = np.searchsorted(starts, gids, "right") - 1
        return shard, gids - starts[shard]

    def _keys_at(self, gids: np.ndarray) -> pa.Array:
        """The keys of global rows ``gids``, in order, read back from the shards."""
        gids = np.asarray(gids, np.int64)
        shard, row = self._shard_rows(gids)
        order = np.argsort(shard, kind="stable")
        cuts = np.flatnonzero(np.diff(shard[order])) + 1
        pieces = [self._tables[int(shard[idx[0]])].column("key").take(pa.array(row[idx])).combine_chunks()
                  for idx in np.split(order, cuts) if len(idx)]
        if not pieces:
            return pa.array([], pa.string())
        keys = pa.concat_arrays(pieces)  # grouped by shard
        if len(pieces) == 1 and (order[1:] > order[:-1]).all():
            return keys
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return keys.take(pa.array(back))

    # -- queries -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Distinct keys with a vector in some column."""
        if len(self._groups) <= 1:
            return sum(map(len, self._groups.values()))
        return len(set(self.keys()))

    def __contains__(self, key: str) -> bool:
        return bool(self._lookup([key], None)[0] >= 0)

    def keys(self):
        """Every key the store holds (each once), in no particular order."""
        if len(self._groups) == 1:
            yield from next(iter(self._groups.values()))
            return
        seen = set()
        for index in self._groups.values():
            for k in index:
                if k not in seen:
                    seen.add(k)
                    yield k

    @property
    def shards(self) -> list[Path]:
        return list(self._paths)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every vector column some shard holds, in the order they were first written."""
        return tuple(dict.fromkeys(c for cols in self._groups for c in cols))

    def column_counts(self) -> dict[str, int]:
        """Distinct keys that have each column (``cache info``)."""
        out = {}
        for c in self.columns:
            indexes = [ix for cols, ix in self._groups.items() if c in cols]
            out[c] = len(indexes[0]) if len(indexes) == 1 else len({k for ix in indexes for k in ix})
        return out

    @property
    def dim(self) -> int | None:
        if not self._tables:
            return None
        schema = self._tables[0].schema
        return schema.field(vector_columns(schema)[0]).type.list_size

    def _lookup(self, keys: list[str], column: str | None) -> np.ndarray:
        """Global row of each key among the shards that hold ``column`` (any shard: None); -1
        where none. A key in several such shards resolves to the one opened first."""
        out = np.full(len(keys), -1, np.int64)
        for cols, index in self._groups.items():
            if column is not None and column not in cols:
                continue
            todo = np.flatnonzero(out < 0)
            if not len(todo):
                break
            out[todo] = index.find(keys if len(todo) == len(keys) else [keys[i] for i in todo.tolist()])
        return out

    def _find(self, keys: list[str], column: str | None = None) -> np.ndarray:
        """Global row of each key that holds ``column`` (any row: None; -1 where none); shards
        added since the last refresh are opened before a key is called missing."""
        keys = keys if isinstance(keys, list) else list(keys)
        gids = self._lookup(keys, column)
        if (gids < 0).any() and time.monotonic() - self._listed >= self.relist_seconds:
            self.refresh()
            miss = np.flatnonzero(gids < 0)
            gids[miss] = self._lookup([keys[i] for i in miss.tolist()], column)
        return gids

    def missing(self, keys, columns=None) -> list[str]:
        """Keys without a vector in every one of ``columns`` (None: in any column); shards added
        since the last refresh are opened before saying so."""
        keys = list(keys)
        if not columns:
            lacking = self._find(keys) < 0
        else:
            lacking = np.zeros(len(keys), bool)
            for c in columns:
                lacking |= self._find(keys, c) < 0
        return [keys[i] for i in np.flatnonzero(lacking)]

    def locate(self, keys, column: str | None = None) -> np.ndarray:
        """``(N,)`` global row of each key that holds ``column`` (any: None; rows are numbered
        in the order they lie in the shards); a missing key raises :class:`StoreError`."""
        keys = list(keys)
        gids = self._find(keys, column)
        if (gids < 0).any():
            miss = np.flatnonzero(gids < 0)
            where = f" in column {column}" if column else ""
            raise StoreError(f"{len(miss)} of {len(keys)} keys have no vector{where} in {self.dir} "
                             f"(first: {keys[miss[0]][:16]}…)")
        return gids

    def in_store_order(self, keys, column: str | None = None) -> list[str]:
        """``keys`` sorted as their rows (of ``column``) lie in the shards, so that blocks of them
        are read as slices of the memory map (missing keys raise :class:`StoreError`)."""
        keys = list(keys)
        order = np.argsort(self.locate(keys, column), kind="stable")
        return [keys[i] for i in order]

    def _column_parts(self, column: str) -> tuple[list[np.ndarray], np.ndarray]:
        """Zero-copy ``(n, D)`` views of ``column`` in every record batch of every shard, and
        the global row of each view's first row (``logprob``: its three scalars side by side,
        ``(n, 3)`` float32 copies, small; checked with the shard's scalars when it was opened)."""
        if column not in self._parts:
            views, firsts = [], []
            for table, start in zip(self._tables, self._starts):
                if column not in stored_columns(table.schema):  # a shard of other columns
                    continue
                offset = start
                if column == LOGPROB:
                    chunks = zip(*(table.column(f).chunks for f in LOGPROB_FIELDS))
                    arrays = [np.stack([c.to_numpy() for c in trio], axis=1).astype(np.float32) for trio in chunks]
                else:
                    arrays = [chunk.flatten().to_numpy(zero_copy_only=True).reshape(len(chunk), chunk.type.list_size)
                              for chunk in table.column(column).chunks]  # (n, D) views of the map
                for a in arrays:
                    views.append(a)
                    firsts.append(offset)
                    offset += len(a)
            self._parts[column] = (views, np.asarray(firsts, dtype=np.int64))
        return self._parts[column]

    def _check_column(self, column: str | None) -> str:
        column = column or self.columns[0]
        self.feature_columns(column)
        return column

    def part(self, column: str) -> tuple["VectorStore", str]:
        """The store and stored column a feature part is read from: this store, that column
        (a :class:`~orm_cache.store.joined.JoinedStore` sends a ``model:column`` part elsewhere)."""
        return self, column

    def feature_columns(self, feature: str) -> tuple[str, ...]:
        """The stored columns ``feature`` concatenates (``mean@-4+mean@-1``); a malformed
        feature or a column the store lacks is a one-line StoreError listing the stored ones."""
        from .columns import feature_parts

        try:
            parts = feature_parts(feature)
        except ValueError as e:
            raise StoreError(f"{e}; this store has {', '.join(self.columns)}") from None
        lacking = [p for p in parts if p not in self.columns]
        if lacking:
            raise StoreError(f"column {lacking[0]!r} is not in this store; it has {', '.join(self.columns)} "
                             "(concatenate several with '+', e.g. --feature mean@-4+mean@-1)")
        return parts

    def column_dim(self, column: str) -> int | None:
        """Width of one stored column: the vectors' (``logprob``: 3)."""
        return len(LOGPROB_FIELDS) if column == LOGPROB else self.dim

    def feature_dim(self, feature: str | None) -> int | None:
        """Width of ``feature``'s vectors: the widths of the columns it concatenates."""
        if self.dim is None:
            return None
        return sum(self.column_dim(c) for c in self.feature_columns(self._check_column(feature)))

    def matrix(self, keys, column: str | None = None) -> Rows:
        """The vectors of ``keys`` (in order) as a ``(len(keys), D)`` :class:`StoreRows`, read
        from the memory map block by block: nothing is copied here. ``column`` may concatenate
        stored columns (``mean@-4+mean@-1``: a :class:`ConcatRows` of them), each found wherever
        the store holds it for each key."""
        column = self._check_column(column)
        keys = list(keys)
        return self.columns_at([self.locate(keys, c) for c in self.feature_columns(column)], column)

    def matrix_at(self, gids: np.ndarray, column: str | None = None) -> Rows:
        """:meth:`matrix` of global rows ``gids`` (from :meth:`locate`): rows that hold every
        column of ``column`` (for a feature whose columns lie in different shards, :meth:`matrix`)."""
        column = self._check_column(column)
        gids = np.asarray(gids, np.int64)
        return self.columns_at([gids] * len(self.feature_columns(column)), column)

    def columns_at(self, gids_per_column: list[np.ndarray], column: str) -> Rows:
        """The rows of ``column``'s stored columns, each at its own global rows (from
        :meth:`locate` of that column), side by side."""
        parts = []
        for col, gids in zip(self.feature_columns(column), gids_per_column):
            views, firsts = self._column_parts(col)
            part = np.searchsorted(firsts, gids, "right") - 1
            row = gids - firsts[np.maximum(part, 0)]
            lens = np.fromiter(map(len, views), np.int64, len(views))
            if len(gids) and ((part < 0) | (row >= lens[np.maximum(part, 0)])).any():
                raise StoreError(f"rows asked of column {col} lie in shards that do not hold it")
            parts.append(StoreRows(views, part, row, self.column_dim(col)))
        return parts[0] if len(parts) == 1 else ConcatRows(parts)

    def vectors(self, keys, column: str | None = None, dtype=np.float32) -> np.ndarray:
        """Vectors of ``keys`` (in order) from ``column`` as a ``(len(keys), D)`` array in memory
        (for a few keys; :meth:`matrix` reads many without copying them)."""
        X = self.matrix(keys, column)
        return X.take(np.arange(len(X)), dtype=dtype)  # (N, D), also when keys is empty

    def _gather(self, keys, column: str) -> np.ndarray:
        """``(N,)`` values of a scalar column for ``keys`` (in order)."""
        return self.scalars_at(self.locate(keys), column)

    def scalars_at(self, gids: np.ndarray, column: str) -> np.ndarray:
        """``(N,)`` values of a scalar column (``n_tokens``, ``truncated``…) of global rows ``gids``."""
        shard, row = self._shard_rows(np.asarray(gids, np.int64))
        out = None
        order = np.argsort(shard, kind="stable")
        for sel in np.split(order, np.flatnonzero(np.diff(shard[order])) + 1):
            if not len(sel):
                continue
            arr = self._tables[int(shard[sel[0]])].column(column).to_numpy()  # (N_shard,)
            if out is None:
                out = np.empty(len(row), dtype=arr.dtype)
            out[sel] = arr[row[sel]]
        return out if out is not None else np.empty(0, dtype=np.int32)

    def n_tokens(self, keys) -> np.ndarray:
        return self._gather(keys, "n_tokens")

    def truncated(self, keys) -> np.ndarray:
        return self._gather(keys, "truncated")

    def recomputed(self, keys) -> np.ndarray:
        return self._gather(keys, "recomputed_fp32")

    @property
    def has_response_starts(self) -> bool:
        """Whether the shards that pool response_mean record where each response starts (every
        writer since response_mean exists does)."""
        return all(RESPONSE_START in t.schema.names for t in self._tables
                   if any(c.startswith("response_mean@") for c in vector_columns(t.schema)))

    def identity(self) -> dict:
        return self._description()["identity"]

    def spec(self) -> dict | None:
        """The encoder spec recorded by the first writer (model path, dtype, pooling…)."""
        return self._description()["spec"]

    def _description(self) -> dict:
        """This store's encoder (from its directory, else from a schema-1 store it reads across)."""
        from .describe import describe_store
        from .fingerprint import encoder_identity

        for directory, fp in self.sources:
            desc = describe_store(directory) if directory.is_dir() else {"fingerprint": None}
            if desc["fingerprint"] == fp:
                return {**desc, "identity": encoder_identity(desc["identity"])}
        return {"identity": {}, "spec": None}
