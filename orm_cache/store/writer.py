"""Writing a store: buffered rows become complete shards (temporary name, fsync, rename)."""

from __future__ import annotations


import os
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import StoreError
from .fingerprint import SCHEMA_VERSION, canonical_json
from .layout import META_FINGERPRINT, META_IDENTITY, META_SCHEMA, META_SPEC, RESPONSE_START, UNKNOWN_START, write_shard



class ShardWriter:
    """Buffers embedded rows and writes them as complete shards (temp name, fsync, rename)."""

    def __init__(self, directory: Path, fp: str, identity: dict, columns: tuple[str, ...], dim: int,
                 vector_dtype: str, shard_rows: int = 2048, flush_seconds: float = 30.0,
                 spec: dict | None = None):
        from .columns import LOGPROB, LOGPROB_FIELDS, LOGPROB_TOKENS

        self.dir = Path(directory)
        self.fp = fp
        self.logprob = LOGPROB in columns  # three float32 scalars per row (and their token count), not vectors
        self.columns = tuple(c for c in columns if "@" in c)
        self.dim = dim
        self.np_dtype = np.dtype(vector_dtype)
        self.shard_rows = shard_rows
        self.flush_seconds = flush_seconds
        value_type = pa.float16() if self.np_dtype == np.float16 else pa.float32()
        fields = [pa.field("key", pa.string(), nullable=False),
                  pa.field("n_tokens", pa.int32(), nullable=False),
                  pa.field("truncated", pa.bool_(), nullable=False),
                  pa.field("recomputed_fp32", pa.bool_(), nullable=False)]
        self.has_starts = any(c.startswith("response_mean@") for c in columns)
        if self.has_starts:
            fields.append(pa.field(RESPONSE_START, pa.int32(), nullable=False))
        fields += [pa.field(c, pa.list_(value_type, dim), nullable=False) for c in self.columns]
        fields += [pa.field(f, pa.float32(), nullable=False) for f in (LOGPROB_FIELDS if self.logprob else ())]
        fields += [pa.field(LOGPROB_TOKENS, pa.int32(), nullable=False)] if self.logprob else []
        metadata = {META_FINGERPRINT: fp.encode(), META_IDENTITY: canonical_json(identity).encode(),
                    META_SCHEMA: str(SCHEMA_VERSION).encode()}
        if spec is not None:
            metadata[META_SPEC] = canonical_json(spec).encode()
        self.schema = pa.schema(fields, metadata=metadata)
        self._reset()
        self._seq = 0
        self._last_flush = time.monotonic()
        self.shards_written: list[Path] = []
        self.rows_written = 0

    def _reset(self):
        self._keys: list[str] = []
        self._n_tokens: list[np.ndarray] = []
        self._truncated: list[np.ndarray] = []
        self._recomputed: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._vecs: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
        self._logprob: list[np.ndarray] = []
        self._lp_tokens: list[np.ndarray] = []

    @property
    def buffered(self) -> int:
        return len(self._keys)

    def add(self, keys: list[str], n_tokens: np.ndarray, truncated: np.ndarray,
            vectors: dict[str, np.ndarray], recomputed: np.ndarray | None = None,
            response_starts: list[int | None] | None = None) -> None:
        """Buffer one batch; ``vectors[col]`` is ``(B, D)``; ``recomputed`` flags rows whose float16
        states overflowed and were recomputed in float32; ``response_starts``: the character offset
        of each response (None: unknown), recorded when the store pools response_mean (None: the
        texts as given, start 0). Flushes when the shard is full or old."""
        for c in self.columns:
            v = vectors[c]
            assert v.shape == (len(keys), self.dim), (c, v.shape)  # (B, D)
            if not np.isfinite(v).all():
                raise StoreError(f"refusing to store non-finite values in column {c}")
            self._vecs[c].append(np.ascontiguousarray(v, dtype=self.np_dtype))
        if self.logprob:
            from .columns import LOGPROB, LOGPROB_TOKENS

            lp = np.asarray(vectors[LOGPROB], dtype=np.float32)
            assert lp.shape == (len(keys), 3), lp.shape  # (B, 3): mean, min, sum
            if not np.isfinite(lp).all():
                raise StoreError(f"refusing to store non-finite values in column {LOGPROB}")
            self._logprob.append(lp)
            self._lp_tokens.append(np.asarray(vectors[LOGPROB_TOKENS], dtype=np.int32).reshape(len(keys)))
        self._keys.extend(keys)
        self._n_tokens.append(np.asarray(n_tokens, dtype=np.int32))
        self._truncated.append(np.asarray(truncated, dtype=bool))
        self._recomputed.append(np.zeros(len(keys), bool) if recomputed is None else np.asarray(recomputed, bool))
        if self.has_starts:
            starts = [0] * len(keys) if response_starts is None else response_starts
            assert len(starts) == len(keys), (len(starts), len(keys))
            self._starts.append(np.array([UNKNOWN_START if s is None else s for s in starts], dtype=np.int32))
        if self.buffered >= self.shard_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> Path | None:
        """Write the buffered rows as one shard; returns its path (None when nothing was buffered)."""
        self._last_flush = time.monotonic()
        if not self._keys:
            return None
        arrays = [pa.array(self._keys, pa.string()),
                  pa.array(np.concatenate(self._n_tokens)),
                  pa.array(np.concatenate(self._truncated)),
                  pa.array(np.concatenate(self._recomputed))]
        if self.has_starts:
            arrays.append(pa.array(np.concatenate(self._starts)))
        for c in self.columns:
            flat = np.concatenate(self._vecs[c]).reshape(-1)  # (N*D,)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), self.dim))
        if self.logprob:
            lp = np.concatenate(self._logprob)  # (N, 3)
            arrays += [pa.array(lp[:, j]) for j in range(lp.shape[1])]
            arrays.append(pa.array(np.concatenate(self._lp_tokens)))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        stem = f"{time.time_ns():016x}-{socket.gethostname()}-{os.getpid()}-{self._seq:05d}"
        self._seq += 1
        try:
            final = write_shard(self.dir, table, stem)
        except OSError as e:
            raise StoreError(f"could not write a shard to {self.dir} ({e.strerror or e}); "
                             f"the {len(self.shards_written)} shards this run already wrote are intact, "
                             "and the next run embeds only what is missing") from e
        self.shards_written.append(final)
        self.rows_written += len(self._keys)
        self._reset()
        return final


def check_writable(directory) -> None:
    """Refuse, in one line, a store directory that cannot be created or written (a read-only
    cache), judged on the directory or its nearest existing parent."""
    d = os.path.abspath(directory)
    while not os.path.exists(d) and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    if not os.access(d, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write to the cache directory {directory} ({d} is not writable); "
                         "give a writable --cache-dir")
