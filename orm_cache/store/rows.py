"""A split's vectors as a ``(U, D)`` matrix read in row blocks: the one blockwise mechanism of stage 2.

Stage 2 never holds a copy of the whole matrix. :class:`Rows` reads ``block_rows`` rows at a
time, converted to the dtype the work needs (float32 for scores, float64 for the exact L-BFGS
objective), into a buffer that is reused for every block, and builds everything on that:

* ``X @ W``              scores, ``(U,)`` or ``(U, K)``, computed block by block;
* ``X.rmatmul(G)``       ``G @ X`` with float64 accumulation, ``(D,)`` or ``(K, D)``;
* ``X.mean_std()``       per-feature mean and std in float64, one pass (blocks merged exactly as
                         Chan et al.'s parallel variance);
* ``X.take(rows)``       the few rows of one mini-batch, gathered;
* ``X.apply(fn, k)``     any row-wise function (an MLP's scores), ``(U, k)``, block by block.

:class:`StoreRows` reads its rows from the memory-mapped shards (the store's own pages: a
command's memory is the map plus one block, and a store larger than RAM is paged by the kernel);
:class:`ArrayRows` wraps an in-memory array behind the same interface (tests, small callers).
Conversions from float16 go through torch's vectorised casts on one thread (NumPy's float16
casts are several times slower); products go through NumPy's BLAS.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

BLOCK_BYTES = 1 << 19  # one block: 32 float64 (64 float32) rows of 2048 dims, well inside a core's L2 cache
# (measured at 100,000 x 2048 on 2 shared cores: 16-32 rows 0.45 s a pass, 64-128 rows 0.6-0.7 s,
# 256 rows 5 s once the block no longer fits)


@contextmanager
def single_torch_thread():
    """torch's intra-op pool on one thread inside; the previous count comes back on exit.
    torch wakes its pool even for tiny tensors in some kernels (a log-sigmoid of 8 values took
    8 ms with 2 threads on 2 shared cores, 4 µs with one), and a block's cast is one core's work."""
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


def _cast(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = src`` (same shape, ``src`` writable) through torch's vectorised cast."""
    torch.from_numpy(out).copy_(torch.from_numpy(src))
    return out


def _torch_view(a: np.ndarray) -> torch.Tensor:
    """A tensor over the same memory as ``a`` (a read-only memory map: it is only read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


class Rows:
    """A ``(U, D)`` matrix read in row blocks. Subclasses give :meth:`_read` (rows ``[a, b)``
    into a buffer) and :meth:`_gather` (arbitrary rows)."""

    ndim = 2
    dtype = np.dtype(np.float32)  # what blocks and takes are by default
    block_rows: int | None = None  # None: BLOCK_BYTES of float64

    def __init__(self, n_rows: int, dim: int):
        self.shape = (int(n_rows), int(dim))
        self._patches: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"

    def _block_rows(self, dtype=np.float64) -> int:
        """Rows per block: ``block_rows`` when set, else a block of BLOCK_BYTES in ``dtype``
        (float32 blocks hold twice the rows of float64 ones: half the per-block overhead)."""
        return self.block_rows or max(1, BLOCK_BYTES // (np.dtype(dtype).itemsize * max(self.shape[1], 1)))

    # -- subclasses ------------------------------------------------------------------------------
    def _read(self, a: int, b: int, out: np.ndarray, tout: torch.Tensor) -> np.ndarray:
        """Rows ``a..b-1`` as ``(b - a, D)`` in ``out``'s dtype: a view of the source when the
        dtypes agree, else cast into ``out`` (``tout`` is a tensor over ``out``)."""
        raise NotImplementedError

    def _gather(self, rows: np.ndarray, dtype) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as a new ``(len(rows), D)`` array."""
        raise NotImplementedError

    # -- reading ----------------------------------------------------------------------------------
    def blocks(self, dtype=np.float32, block_rows: int | None = None,
               start: int = 0) -> Iterator[tuple[slice, np.ndarray]]:
        """``(rows, block)`` over consecutive row blocks from row ``start``; ``block`` is
        ``(b, D)`` in ``dtype`` and only valid until the next block (its buffer is reused)."""
        U, D = self.shape
        n = block_rows or self._block_rows(dtype)
        buf = np.empty((max(min(n, U - start), 0), D), dtype)
        tbuf = torch.from_numpy(buf)
        with single_torch_thread():
            for a in range(start, U, n):
                b = min(a + n, U)
                block = self._read(a, b, buf[: b - a], tbuf[: b - a])  # (b - a, D)
                if self._patches:
                    block = self._patch(a, b, block, buf)
                yield slice(a, b), block

    def take(self, rows, dtype=np.float32) -> np.ndarray:
        """``(len(rows), D)``: the given rows, gathered (a mini-batch, a sample)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = self._gather(rows, dtype)
        for r, v in self._patches.items():
            out[rows == r] = v
        return out

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return self.take([rows])[0]  # (D,)
        if isinstance(rows, slice):
            rows = np.arange(self.shape[0])[rows]
        return self.take(rows)

    def __setitem__(self, rows, values) -> None:
        """Replace rows in memory only (never in the store), e.g. to plant a stale vector in a test."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        values = np.broadcast_to(np.asarray(values, dtype=np.float32), (len(rows), self.shape[1]))
        for r, v in zip(rows.tolist(), values):
            self._patches[r] = v.copy()

    def _patch(self, a: int, b: int, block: np.ndarray, buf: np.ndarray) -> np.ndarray:
        hit = [r for r in self._patches if a <= r < b]
        if not hit:
            return block
        if not np.shares_memory(block, buf):  # a view of the source: copy before editing
            block = np.array(block, dtype=buf.dtype)
        for r in hit:
            block[r - a] = self._patches[r]
        return block

    def to_numpy(self, dtype=np.float32) -> np.ndarray:
        """The whole matrix in memory (only for small matrices: it is what the rest avoids)."""
        out = np.empty(self.shape, dtype)
        for rows, block in self.blocks(dtype):
            out[rows] = block
        return out

    # -- arithmetic -------------------------------------------------------------------------------
    def __matmul__(self, W) -> np.ndarray:
        return self.matmul(W)

    def matmul(self, W, dtype=None) -> np.ndarray:
        """``X @ W`` for ``W`` ``(D,)`` or ``(D, K)``: ``(U,)`` or ``(U, K)``, computed block by
        block in ``dtype`` (default: NumPy's result type of float32 and ``W``)."""
        W = np.asarray(W)
        dtype = np.dtype(dtype or np.result_type(np.float32, W.dtype))
        W = W.astype(dtype, copy=False)
        assert W.shape[0] == self.shape[1], (W.shape, self.shape)
        out = np.empty((self.shape[0],) + W.shape[1:], dtype)  # (U,) or (U, K)
        for rows, block in self.blocks(dtype):
            np.matmul(block, W, out=out[rows])
        return out

    def row_dot(self, w) -> np.ndarray:
        """``X @ w`` for ``w`` ``(D,)``: ``(U,)`` float32, each row's sum computed on its own in a
        fixed order (NumPy's pairwise sum over the row's products), so a row's result is the same
        bits whatever block, chunk or position it is read in. A BLAS product is not: its kernels
        sum a row differently by the block's row count (a 7-row block and a 1000-row block gave
        float32 scores differing in the last bits). Float32, like the BLAS product it replaces:
        in float64 the casts and products took 5x the time of the product at 1M x 2048."""
        w = np.asarray(w, dtype=np.float32).reshape(-1)  # (D,)
        assert w.shape[0] == self.shape[1], (w.shape, self.shape)
        out = np.empty(self.shape[0], np.float32)  # (U,)
        tmp = np.empty((max(min(self._block_rows(np.float32), self.shape[0]), 1), self.shape[1]), np.float32)
        for rows, block in self.blocks(np.float32):
            prod = np.multiply(block, w, out=tmp[: len(block)])  # (b, D)
            np.add.reduce(prod, axis=1, out=out[rows])  # pairwise, per row
        return out

    def apply(self, fn, width: int, dtype=np.float32) -> np.ndarray:
        """``(U, width)``: ``fn(block)`` (a ``(b, width)`` array) of every block, in row order."""
        out = np.empty((self.shape[0], width), dtype)
        for rows, block in self.blocks(dtype):
            out[rows] = fn(block)
        return out

    def rmatmul(self, G) -> np.ndarray:
        """``G @ X`` for ``G`` ``(U,)`` or ``(K, U)``: ``(D,)`` or ``(K, D)``, in float64 (each
        block's product in float64, summed in float64)."""
        G = np.asarray(G, dtype=np.float64)
        assert G.shape[-1] == self.shape[0], (G.shape, self.shape)
        acc = np.zeros(G.shape[:-1] + (self.shape[1],))  # (D,) or (K, D)
        for rows, block in self.blocks(np.float64):
            acc += G[..., rows] @ block
        return acc

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and (population) std in float64, in one pass: each block's mean and
        sum of squared deviations, merged as Chan et al. (1979) do, so no large sum loses digits."""
        n, mean, m2 = 0, np.zeros(self.shape[1]), np.zeros(self.shape[1])
        dev = np.empty((self._block_rows(), self.shape[1]))
        for _, block in self.blocks(np.float64):
            nb = block.shape[0]
            mb = block.mean(axis=0)  # (D,)
            d = np.subtract(block, mb, out=dev[:nb])  # (nb, D)
            m2b = np.einsum("ij,ij->j", d, d)  # (D,)
            delta = mb - mean
            tot = n + nb
            mean = mean + delta * (nb / tot)
            m2 = m2 + m2b + delta ** 2 * (n * nb / tot)
            n = tot
        return mean, np.sqrt(m2 / max(n, 1))


class ArrayRows(Rows):
    """An in-memory ``(U, D)`` array behind the blockwise interface."""

    def __init__(self, X: np.ndarray):
        X = np.asarray(X)
        assert X.ndim == 2, X.shape
        super().__init__(*X.shape)
        self.array = X

    def _read(self, a, b, out, tout):
        src = self.array[a:b]
        if src.dtype == out.dtype:
            return src
        tout.copy_(_torch_view(src))
        return out

    def _gather(self, rows, dtype):
        return np.asarray(self.array[rows], dtype=dtype)


class StoreRows(Rows):
    """Rows of memory-mapped shards, in the order asked for: row ``i`` is row ``row[i]`` of the
    ``part[i]``-th of ``parts`` (zero-copy ``(n, D)`` views of the shards' record batches).
    Blocks are fastest when the rows are in store order (:meth:`VectorStore.in_store_order`):
    a block is then a slice of one part, read without a gather."""

    def __init__(self, parts: list[np.ndarray], part: np.ndarray, row: np.ndarray, dim: int):
        super().__init__(len(part), dim)
        self.parts = parts
        self.part = np.asarray(part, dtype=np.int64)  # (U,)
        self.row = np.asarray(row, dtype=np.int64)  # (U,)
        jump = np.ones(len(self.part), bool)  # row i does not follow row i-1 in the same part
        jump[1:] = (np.diff(self.part) != 0) | (np.diff(self.row) != 1)
        self._jumps = np.cumsum(jump)  # (U,): rows a..b-1 are one slice iff _jumps[a] == _jumps[b-1]
        self._tparts: dict[int, torch.Tensor] = {}
        self._verified = np.zeros(len(parts), bool)  # parts checked against their block checksums

    def _verify(self, p: int) -> None:
        """Check part ``p`` (one record batch of one shard) against the checksum written with it,
        the first time it is read (:func:`~orm_cache.store.blocks.verify`; once per process)."""
        if not self._verified[p]:
            from .blocks import verify

            verify(self.parts[p])
            self._verified[p] = True

    def _read(self, a, b, out, tout):
        if self._jumps[a] == self._jumps[b - 1]:  # one slice of one part: read in place
            p, r = int(self.part[a]), int(self.row[a])
            self._verify(p)
            src = self.parts[p][r:r + b - a]  # (b - a, D) view of the map
            if src.dtype == out.dtype:
                return src
            if p not in self._tparts:
                self._tparts[p] = _torch_view(self.parts[p])
            tout.copy_(self._tparts[p][r:r + b - a])
            return out
        src = self._gather_into(self.part[a:b], self.row[a:b], np.empty(out.shape, self.parts[0].dtype))
        return src if src.dtype == out.dtype else _cast(src, out)

    def _gather(self, rows, dtype):
        out = np.empty((len(rows), self.shape[1]), dtype)
        return self._gather_into(self.part[rows], self.row[rows], out)

    def _gather_into(self, part, row, out):
        for p in np.unique(part):
            self._verify(int(p))
            sel = np.flatnonzero(part == p)
            out[sel] = self.parts[int(p)][row[sel]]  # (n, D) gathered, cast by NumPy (a few rows)
        return out


class ConcatRows(Rows):
    """Several ``(U, D_i)`` :class:`Rows` of the same traces side by side: ``(U, ΣD_i)`` (a
    combined feature such as ``mean@-4+mean@-1``), each block read from every part."""

    def __init__(self, parts: list[Rows]):
        assert parts and len({p.shape[0] for p in parts}) == 1, [p.shape for p in parts]
        super().__init__(parts[0].shape[0], sum(p.shape[1] for p in parts))
        self.parts = parts
        self._edges = np.cumsum([0] + [p.shape[1] for p in parts])

    def _read(self, a, b, out, tout):
        for p, lo, hi in zip(self.parts, self._edges, self._edges[1:]):
            out[:, lo:hi] = next(p.blocks(out.dtype, block_rows=b - a, start=a))[1]
        return out

    def _gather(self, rows, dtype):
        return np.concatenate([p.take(rows, dtype) for p in self.parts], axis=1)


SMALL_BYTES = 1 << 26  # 64 MiB


def in_memory_if_small(X, dtype=np.float32) -> Rows:
    """``X`` as :class:`Rows`, read once into one in-memory block of ``dtype`` when that takes at
    most ``SMALL_BYTES``: an iterative solver over a small split then makes one BLAS call per
    product instead of paying a block's overhead (and a gather, for a split whose rows are
    scattered among other splits' in the store) thousands of times. A larger matrix, or one
    whose ``block_rows`` was set on purpose, is returned as it is."""
    X = as_rows(X)
    U, D = X.shape
    if X.block_rows is not None or U * D * np.dtype(dtype).itemsize > SMALL_BYTES:
        return X
    same = isinstance(X, ArrayRows) and X.array.dtype == dtype and not X._patches
    dense = ArrayRows(X.array if same else X.to_numpy(dtype))  # a new wrapper: the caller's is untouched
    dense.block_rows = max(U, 1)
    return dense


def as_rows(X) -> Rows:
    """``X`` itself when it is :class:`Rows`, else an in-memory array wrapped as one."""
    return X if isinstance(X, Rows) else ArrayRows(X)


__all__ = ["ArrayRows", "BLOCK_BYTES", "ConcatRows", "Rows", "SMALL_BYTES", "in_memory_if_small", "StoreRows", "as_rows", "single_torch_thread"]
