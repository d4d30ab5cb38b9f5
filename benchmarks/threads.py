"""BLAS threads and the L-BFGS path: OpenBLAS's default thread pool against one thread, alone and
beside a CPU hog.

For each data shape (--shape TRACESxDIMSxPAIRS, repeatable) it builds a planted-signal float32
matrix (a quality direction plus unit noise; chosen has the higher quality, 10% of pairs flipped
so the optimum is finite) and solves the L2 path over --l2 values with ``train_lbfgs_path``:

  (a) NumPy's and SciPy's BLAS at their default threads (``single_blas_thread`` switched off)
  (b) as the library runs it: one BLAS thread (``single_blas_thread``)

each alone and beside a CPU hog (a subprocess spinning ``while True: pass``, killed after). It
prints median seconds of --repeats runs and the ratio (a)/(b). The four conditions are interleaved
(a, b, a + hog, b + hog, then again) so drift in the machine's background load falls on all of
them alike; the load average before and after is printed with the table.

    python benchmarks/threads.py --write
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

from _common import publish, table  # noqa: E402

SHAPES = ("20000x1024x80000", "2000x256x8000")
L2_PATH = "100,10,1,0.1,0.01"


def planted(U: int, D: int, N: int, seed: int = 0, strength: float = 3.0, flip: float = 0.1):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    q = rng.normal(size=U)
    X = (rng.normal(size=(U, D)) + strength * q[:, None] * u).astype(np.float32)  # (U, D)
    ci, ri = rng.integers(0, U, N), rng.integers(0, U, N)
    keep = ci != ri
    ci, ri = ci[keep], ri[keep]
    swap = (q[ci] < q[ri]) ^ (rng.random(len(ci)) < flip)
    ci[swap], ri[swap] = ri[swap], ci[swap]
    return X, ci, ri


@contextlib.contextmanager
def cpu_hog(on: bool):
    """A process spinning on one core for the duration (none when ``on`` is false)."""
    if not on:
        yield
        return
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # started and spinning before the clock starts
        yield
    finally:
        p.kill()
        p.wait()


def solve(X, ci, ri, cfgs, limited: bool):
    """``train_lbfgs_path`` as the library runs it (limited) or with its BLAS limit switched off."""
    T = importlib.import_module("orm_cache.head.train")
    saved = T.single_blas_thread
    T.single_blas_thread = saved if limited else contextlib.nullcontext
    try:
        t = time.perf_counter()
        out = T.train_lbfgs_path(X, ci, ri, cfgs)
        return time.perf_counter() - t, out
    finally:
        T.single_blas_thread = saved


def default_blas_threads() -> str:
    from threadpoolctl import threadpool_info

    return "/".join(sorted({str(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}))


def run_shape(shape: str, l2s: list[float], repeats: int):
    from orm_cache.config import HeadConfig

    U, D, N = (int(x) for x in shape.lower().split("x"))
    X, ci, ri = planted(U, D, N)
    cfgs = [HeadConfig(solver="lbfgs", l2=l2) for l2 in l2s]
    conds = [(limited, hog) for hog in (False, True) for limited in (False, True)]
    times = {c: [] for c in conds}
    solve(X, ci, ri, cfgs, True)  # warm-up: imports, first-touch of pages
    heads = {}
    for _ in range(repeats):
        for limited, hog in conds:
            with cpu_hog(hog):
                t, out = solve(X, ci, ri, cfgs, limited)
            times[limited, hog].append(t)
            heads[limited] = out
    med = {c: statistics.median(v) for c, v in times.items()}
    diff = max(float(np.max(np.abs(a.weight - b.weight)) / np.max(np.abs(b.weight)))
               for a, b in zip(heads[False], heads[True]))
    iters = [r.steps for r in heads[True]]
    return (U, D, len(ci)), med, diff, iters


def run(args) -> tuple[str, dict]:
    import scipy.optimize  # noqa: F401  (SciPy's BLAS loaded, so its default threads are reported)

    threads = default_blas_threads()
    l2s = [float(x) for x in args.l2.split(",")]
    load0 = os.getloadavg()
    rows, results, notes = [], {}, []
    for shape in args.shape or SHAPES:
        (U, D, N), med, diff, iters = run_shape(shape, l2s, args.repeats)
        data = f"{U:,} x {D:,}, {N:,} pairs"
        rows.append([data, f"default ({threads})", f"{med[False, False]:.3f}", f"{med[False, True]:.3f}"])
        rows.append([data, "1 (single_blas_thread)", f"{med[True, False]:.3f}", f"{med[True, True]:.3f}"])
        rows.append([data, "ratio default / 1", f"{med[False, False] / med[True, False]:.1f}x",
                     f"{med[False, True] / med[True, True]:.1f}x"])
        results[shape] = med
        notes.append(f"{data}: L-BFGS iterations along the path {iters}; largest weight difference between "
                     f"(a) and (b) {diff:.1e} of the largest weight.")
    load1 = os.getloadavg()
    body = "\n".join([
        "### BLAS threads in the L-BFGS path: default pool vs one thread, alone and beside a CPU hog", "",
        f"`train_lbfgs_path` over l2 = {args.l2} ({len(l2s)} solves, warm-started), planted-signal float32 "
        f"matrices. Seconds, median of {args.repeats} interleaved runs per cell; the hog is a second process "
        "spinning `while True: pass`.", "",
        table(["data (traces x dims)", "BLAS threads", "alone (s)", "beside a CPU hog (s)"], rows), "",
        *notes, "",
        f"OpenBLAS's default here is {threads} thread(s) on {os.cpu_count()} logical cores, so (a) is also "
        "the one-thread-per-core choice. Load average (1 min) before and after: "
        f"{load0[0]:.2f}, {load1[0]:.2f} (the machine is shared; 'alone' means without our hog).",
    ])
    return body, results


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", action="append", help=f"TRACESxDIMSxPAIRS, repeatable [default: {' and '.join(SHAPES)}]")
    p.add_argument("--l2", default=L2_PATH, help="comma-separated l2 values of the path")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    body, results = run(args)
    publish("threads", body, args.write)
    return results


if __name__ == "__main__":
    main()
