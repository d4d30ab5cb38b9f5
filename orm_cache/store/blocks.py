"""Checksums per block of vectors, written with the shard and verified the first time a process
reads that block.

A shard's vector columns are written in record batches of at most ``BLOCK_ROWS`` rows, and the
schema metadata (``orm_cache.block_checksums``) holds one digest per batch and column: xxh3-64
of the batch's vector bytes (crc32 where the ``xxhash`` package is missing; the algorithm is
recorded). When a shard is opened (:func:`register`), each batch's memory-mapped vector bytes are
registered with the digest they must have; :class:`~orm_cache.store.rows.StoreRows` calls
:func:`verify` before it reads a batch for the first time in this process, so a command hashes
only the blocks it uses, once (xxh3 runs at ~25 GB/s, well below the cost of reading the pages).

This is what catches bytes rewritten in place with the file's size and modification time kept
(bit rot, a careless copy tool): ``verified.json`` remembers whole-file checks by name, size and
mtime and cannot see such a change. A block that does not match stops the command with one line
naming the shard, the column and the rows (:class:`StoreError`); ``cache check --fix``
quarantines the shard. Shards written before block checksums existed carry none and are
verified whole, by the CRC32 in their name, as before.
"""

from __future__ import annotations

import json
import threading
import zlib
from pathlib import Path

import numpy as np

from ..errors import StoreError

META_BLOCKS = b"orm_cache.block_checksums"
BLOCK_ROWS = 1024  # rows per record batch: 4 MiB of float16 at 2048 dims, hashed in ~0.2 ms

try:
    import xxhash

    ALGO = "xxh3_64"
except ImportError:  # pragma: no cover - xxhash is a dependency; crc32 keeps a bare install working
    xxhash = None
    ALGO = "crc32"


def digest(data, algo: str = ALGO) -> str:
    """Hex digest of a buffer (a C-contiguous array or bytes) with ``algo``."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if algo == "xxh3_64":
        if xxhash is None:
            raise StoreError("this shard's block checksums are xxh3-64, which needs the xxhash package "
                             "(pip install xxhash)")
        return f"{xxhash.xxh3_64_intdigest(data):016x}"
    if algo == "crc32":
        return f"{zlib.crc32(data):08x}"
    raise StoreError(f"unknown block checksum algorithm {algo!r} (written by a newer orm-cache?)")


def vector_columns(schema) -> list[str]:
    return [n for n in schema.names if "@" in n]


def _view(column_chunk) -> np.ndarray:
    """The values of one record batch's vector column as a flat array over the same memory."""
    return column_chunk.flatten().to_numpy(zero_copy_only=True)


SCALARS_BY_VALUE = "values"  # how scalar digests are taken (recorded; absent: the first shards' buffer digests)


def _scalar_digest(chunk, algo: str) -> str:
    """Digest of a non-vector column's batch by its values (a string column: its offsets from 0
    and its bytes; any other: its values as NumPy gives them; and where its nulls are), so a
    batch sliced from a bigger table (as written) and the same batch read back (its own buffers)
    hash the same."""
    import pyarrow as pa

    n, off = len(chunk), chunk.offset
    if pa.types.is_string(chunk.type) or pa.types.is_binary(chunk.type) or pa.types.is_large_string(chunk.type) \
            or pa.types.is_large_binary(chunk.type):
        width = np.int64 if pa.types.is_large_string(chunk.type) or pa.types.is_large_binary(chunk.type) else np.int32
        bufs = chunk.buffers()
        offsets = np.frombuffer(bufs[1], dtype=width)[off: off + n + 1] if n else np.zeros(1, width)
        data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
        parts = [digest(offsets - offsets[0], algo), digest(data[offsets[0]: offsets[-1]], algo)]
    else:
        parts = [digest(np.ascontiguousarray(chunk.to_numpy(zero_copy_only=False)), algo)]
    if chunk.null_count:
        parts.append(digest(chunk.is_null().to_numpy(zero_copy_only=False), algo))
    return digest(",".join(parts).encode(), algo)


def _buffer_digest(chunk, algo: str) -> str:
    """The first schema-2 shards' scalar digest: every buffer the written batch held. A batch
    sliced from a bigger table holds the whole table's buffers, so those shards recorded, for
    every batch, the digest of the whole column; :func:`_scalar_problem` checks them that way."""
    parts = [digest(np.frombuffer(b, dtype=np.uint8), algo) for b in chunk.buffers() if b is not None]
    return digest(",".join(parts).encode(), algo)


def _scalar_problem(table, column: str, want, meta: dict) -> str | None:
    chunks = table.column(column).chunks
    if not isinstance(want, list) or len(want) != len(chunks):
        return f"its block checksums do not describe its record batches of {column}"
    if meta.get("scalar_digest") == SCALARS_BY_VALUE:
        got = [_scalar_digest(c, meta["algo"]) for c in chunks]
    elif len(chunks) == 1:
        got = [_buffer_digest(chunks[0], meta["algo"])]
    else:  # written sliced from one table: each batch recorded the whole column's buffers
        import pyarrow as pa

        whole = _buffer_digest(pa.concat_arrays(chunks), meta["algo"])
        got = [whole] * len(chunks)
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return (f"column {column} of block {i} does not match the checksum written with it: the file was "
                    "changed after it was written")
    return None


def scalar_columns(schema) -> list[str]:
    return [n for n in schema.names if "@" not in n]


def batch_digests(batches, columns, algo: str = ALGO) -> dict:
    """The metadata value for ``batches`` (record batches, in file order): a digest per batch of
    every vector column (checked when a block is first read) and of every other column (keys,
    token counts, response starts: small, checked whole when the shard is opened)."""
    scalars = scalar_columns(batches[0].schema) if batches else []
    return {"algo": algo, "rows": [b.num_rows for b in batches], "scalar_digest": SCALARS_BY_VALUE,
            "columns": {c: [digest(_view(b.column(c)), algo) for b in batches] for c in columns},
            "scalars": {c: [_scalar_digest(b.column(c), algo) for b in batches] for c in scalars}}


def encode(meta: dict) -> bytes:
    return json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()


def read_meta(schema) -> dict | None:
    """The block checksums recorded in a shard's schema (None for an older shard); a malformed
    entry raises ValueError."""
    raw = (schema.metadata or {}).get(META_BLOCKS)
    if raw is None:
        return None
    meta = json.loads(raw)
    if not (isinstance(meta, dict) and isinstance(meta.get("algo"), str) and isinstance(meta.get("columns"), dict)
            and isinstance(meta.get("rows"), list)):
        raise ValueError("malformed block checksums in its metadata")
    return meta


# ---------------------------------------------------------------------------------------- reading

class _Expected:
    __slots__ = ("path", "column", "batch", "first_row", "rows", "algo", "digest", "table")

    def __init__(self, path, column, batch, first_row, rows, algo, digest, table):
        self.path, self.column, self.batch, self.first_row, self.rows = path, column, batch, first_row, rows
        self.algo, self.digest, self.table = algo, digest, table


_lock = threading.Lock()
_expected: dict[tuple[int, int], _Expected] = {}  # (address, bytes) of a mapped block -> what it must hash to
_verified: set[tuple[int, int]] = set()


def register(table, path: Path) -> str | None:
    """Remember the digest each record batch's vector bytes of an opened shard must have; the
    reason it cannot be used (digests that do not fit its batches), or None. The entries keep
    ``table`` (a memory map) alive, so a block's address is never reused by another mapping."""
    try:
        meta = read_meta(table.schema)
    except ValueError as e:
        return str(e)
    if meta is None:
        version = (table.schema.metadata or {}).get(b"orm_cache.schema_version", b"").decode(errors="replace")
        if version.isdigit() and int(version) < 2:
            return None  # written before block checksums (schema 1): verified whole by the checksum in its name
        return ("its block checksums are missing though its schema is not older than them (a damaged footer, "
                "or not written by orm-cache)")
    for column, want in (meta.get("scalars") or {}).items():  # keys, token counts…: small, checked now
        if column not in table.schema.names:
            return f"its block checksums name a column {column!r} it does not have"
        problem = _scalar_problem(table, column, want, meta)
        if problem:
            return problem
    for column in vector_columns(table.schema):
        chunks = table.column(column).chunks
        want = meta["columns"].get(column)
        if not isinstance(want, list) or len(want) != len(chunks) or [len(c) for c in chunks] != meta["rows"]:
            return f"its block checksums do not describe its record batches of {column}"
        first = 0
        with _lock:
            for i, chunk in enumerate(chunks):
                view = _view(chunk)
                key = (view.__array_interface__["data"][0], view.nbytes)
                _expected.setdefault(key, _Expected(Path(path), column, i, first, len(chunk), meta["algo"], want[i],
                                                    table))
                first += len(chunk)
    return None


def verify(view: np.ndarray) -> None:
    """Check one block (a record batch's vector column, as registered) against its digest the
    first time it is read in this process; a mismatch is a one-line StoreError naming the shard."""
    key = (view.__array_interface__["data"][0], view.nbytes)
    if key in _verified:
        return
    problem = _check(view)
    if problem:
        raise StoreError(f"shard {problem[0]}: {problem[1]}; nothing computed from it was used. Run orm-cache "
                         "cache check --fix (it moves the shard aside), then embed again")


def _check(view: np.ndarray) -> tuple[Path, str] | None:
    """(shard, what is wrong) when a registered block does not hash to its digest, else None
    (and the block is remembered as verified)."""
    key = (view.__array_interface__["data"][0], view.nbytes)
    e = _expected.get(key)
    if e is None:
        return None  # not a registered block: an older shard (verified whole) or an in-memory array
    got = digest(view, e.algo)
    if got != e.digest:
        return e.path, (f"rows {e.first_row}-{e.first_row + e.rows - 1} of column {e.column} (block {e.batch}) do "
                        f"not match the checksum written with them ({e.algo} {got} != {e.digest}): the file was "
                        "changed after it was written")
    with _lock:
        _verified.add(key)
    return None


def verify_table(table, path: Path) -> str | None:
    """Every block of an opened shard checked now (``cache check``, ``compact``): the first
    problem, or None (an older shard without block checksums: None)."""
    problem = register(table, path)
    if problem:
        return problem
    for column in vector_columns(table.schema):
        for chunk in table.column(column).chunks:
            view = _view(chunk)
            problem = None if (view.__array_interface__["data"][0], view.nbytes) in _verified else _check(view)
            if problem:
                return problem[1]
    return None


__all__ = ["ALGO", "BLOCK_ROWS", "META_BLOCKS", "batch_digests", "digest", "read_meta", "register", "verify",
           "verify_table"]
