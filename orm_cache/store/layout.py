"""The store's files, and nothing above them: names and constants, the atomic shard write, listing
and opening one shard with its checks, and ``verified.json``. A leaf of :mod:`orm_cache.store`
(every other store module imports it; it imports none of them but the block checksums)."""

from __future__ import annotations


import json
import logging
import os
import zlib
from pathlib import Path

import pyarrow as pa

from ..errors import StoreError  # noqa: F401 (re-exported: its old import location)
from .fingerprint import short

log = logging.getLogger(__name__)

META_FINGERPRINT = b"orm_cache.fingerprint"
META_IDENTITY = b"orm_cache.encoder_identity"
META_SCHEMA = b"orm_cache.schema_version"
META_SPEC = b"orm_cache.encoder_spec"  # optional: shards written before it was added lack it
SHARD_SUFFIX = ".arrow"
TMP_PREFIX = ".tmp-"
RESPONSE_START = "response_start"  # scalar column of stores that pool response_mean
UNKNOWN_START = -1  # its value where the response's start is unknown
RELIST_LIMIT = 100  # listings one refresh may take while compactions delete shards under it
VERIFIED = "verified.json"  # shards whose checksum matched: name -> [size, mtime_ns]
RACY_SECONDS = 3.0  # a shard modified more recently than this is checked, never remembered


def store_dir(cache_dir: str | os.PathLike, fp: str) -> Path:
    return Path(cache_dir) / "vectors" / short(fp)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(directory: Path, table: pa.Table, stem: str) -> Path:
    """Write ``table`` as ``<stem>.<crc32>.arrow``: to a hidden temporary name, fsync, rename;
    in record batches of at most ``blocks.BLOCK_ROWS`` rows whose vector checksums go into the
    schema metadata (:mod:`.blocks`). On error the temporary file is removed and the OSError
    propagates."""
    from . import blocks

    tmp = Path(directory) / f"{TMP_PREFIX}{stem}{SHARD_SUFFIX}"
    batches = table.to_batches(max_chunksize=blocks.BLOCK_ROWS)  # blocks of at most BLOCK_ROWS rows
    meta = dict(table.schema.metadata or {})
    meta[blocks.META_BLOCKS] = blocks.encode(blocks.batch_digests(batches, blocks.vector_columns(table.schema)))
    schema = table.schema.with_metadata(meta)
    try:
        with pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, schema) as writer:
                for batch in batches:
                    writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
        with open(tmp, "rb") as f:
            crc = zlib.crc32(f.read())
            os.fsync(f.fileno())
        final = Path(directory) / f"{stem}.{crc:08x}{SHARD_SUFFIX}"
        os.replace(tmp, final)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return final


def shard_checksum(path: Path) -> str | None:
    """The CRC32 written into a shard's name (``<stem>.<crc32>.arrow``), if any."""
    parts = path.name[: -len(SHARD_SUFFIX)].rsplit(".", 1)
    return parts[1] if len(parts) == 2 and len(parts[1]) == 8 else None


def list_shards(directory: Path) -> list[Path]:
    """The complete shards of a store directory in name order (temporary files are never listed)."""
    return sorted(p for p in Path(directory).glob(f"*{SHARD_SUFFIX}") if not p.name.startswith(TMP_PREFIX))


def open_shard(path: Path, fp: str, checksum: bool = True) -> tuple[pa.Table | None, str | None]:
    """Memory-map one shard and check it: checksum (unless ``checksum=False``: a shard
    remembered as verified), Arrow validation, fingerprint. Returns ``(table, None)``, or
    ``(None, reason)`` when it must not be read. A shard that no longer exists raises
    FileNotFoundError: it is gone, not bad (``compact`` replaced it)."""
    try:
        mm = pa.memory_map(str(path), "r")
        want = shard_checksum(path)
        if want is None:
            return None, "no checksum in its name (not written by orm-cache)"
        if checksum:
            got = f"{zlib.crc32(mm.read_buffer()):08x}"
            if got != want:
                return None, f"checksum mismatch (file {got}, name {want}): truncated or corrupted"
            mm.seek(0)
        table = pa.ipc.open_file(mm).read_all()
        table.validate()
        if not checksum:  # remembered as verified: still check the offsets a read would follow
            for name in table.schema.names:
                if "@" not in name:  # keys and scalars (small); a vector column has no offsets
                    table.column(name).validate(full=True)
    except FileNotFoundError:
        raise
    except (pa.ArrowInvalid, OSError) as e:
        return None, f"unreadable Arrow file ({str(e).splitlines()[0]})"
    got_fp = (table.schema.metadata or {}).get(META_FINGERPRINT, b"").decode()
    if got_fp != fp:
        return None, f"fingerprint {short(got_fp) or 'missing'} != store {short(fp)}"
    from .blocks import register

    problem = register(table, path)  # each block is checked against its checksum when first read
    return (None, problem) if problem else (table, None)


def vector_columns(schema: pa.Schema) -> tuple[str, ...]:
    """The vector columns (``<pooling>@<layer>``) of a shard's schema, in order."""
    return tuple(n for n in schema.names if "@" in n)


def stored_columns(schema: pa.Schema) -> tuple[str, ...]:
    """What a feature can read from a shard: its vector columns, then ``logprob`` when it holds
    the likelihood scalars (:data:`~orm_cache.store.columns.LOGPROB_FIELDS` and their count)."""
    from .columns import LOGPROB, LOGPROB_FIELDS, LOGPROB_TOKENS

    has = all(f in schema.names for f in (*LOGPROB_FIELDS, LOGPROB_TOKENS))
    return vector_columns(schema) + ((LOGPROB,) if has else ())


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def read_verified(directory: Path) -> dict[str, list[int]]:
    """The shards of ``directory`` remembered as verified: name -> [size, mtime_ns] ({} when none)."""
    try:
        memo = json.loads((Path(directory) / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in memo.items() if isinstance(v, list)} if isinstance(memo, dict) else {}


def remember_verified(directory: Path, checked: dict[str, list[int] | None]) -> None:
    """Update ``verified.json`` (atomically) with ``checked``: name -> [size, mtime_ns] to
    remember, or None to forget (a shard that failed, or changed too recently to be trusted);
    entries of shards that are gone are dropped. Two processes doing this at once may lose each
    other's additions: those shards are checked again next time, nothing worse. A read-only
    cache is not an error."""
    directory = Path(directory)
    memo = read_verified(directory)
    memo.update(checked)
    names = {p.name for p in list_shards(directory)}
    memo = {k: v for k, v in memo.items() if k in names and v is not None}
    try:
        _atomic_write_bytes(directory / VERIFIED, json.dumps(memo, sort_keys=True).encode())
    except OSError as e:
        log.debug("could not remember verified shards in %s: %s", directory, e)
