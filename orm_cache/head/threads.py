"""One BLAS thread for the NumPy-heavy parts of head training.

NumPy and SciPy multiply matrices through OpenBLAS, which keeps a pool of one thread per core;
torch keeps its own OpenMP pool beside it. The L-BFGS objective alternates BLAS products
(``Z @ v``, ``g @ Z``) with single-threaded NumPy work (``bincount``, ``logaddexp``), so the BLAS
threads are woken and put back to sleep at every call. Where cores are scarce (a small or shared
machine, torch's threads, another process) the workers wait for a core at each call. On 2 cores
shared with other work, an L2 path of 5 solves ran 1.1-1.9x slower with OpenBLAS's default
threads than with one at 20,000 x 1,024, and 8-17x slower at 2,000 x 256 where each BLAS call is
short, alone or beside a CPU hog (``benchmarks/threads.py``; ``benchmarks/RESULTS.md``).

torch's pool is put on one thread (:func:`single_torch_thread`) where its work is a stream of
tiny operations: an AdamW step on 8 pairs is microseconds of arithmetic, but some kernels wake
the pool whatever the size (a log-sigmoid of 8 values: 8 ms with 2 threads on 2 shared cores,
4 µs with one; 800 steps went from 15 s to well under a second).
"""

from __future__ import annotations

from contextlib import contextmanager

from threadpoolctl import threadpool_limits

from ..store.rows import single_torch_thread


@contextmanager
def single_blas_thread():
    """Inside, NumPy's and SciPy's BLAS run on one thread; the previous limits come back on exit.

    Only BLAS libraries loaded on entry are limited: import SciPy's solvers before entering."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


__all__ = ["single_blas_thread", "single_torch_thread"]
