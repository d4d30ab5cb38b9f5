"""Stage-2 timings at the reference data's shape: 41,656 pairs over 9,482 traces x 2048 dims.

Builds a synthetic float16 store of that shape on disk (OPT-1.3b's width; a planted quality
direction so the heads learn something), then times, in-process (interpreter start and imports
excluded), medians of --repeats runs:

  load        open the store (memory-mapped shards) and locate the split's rows (``split_vectors``;
              since issue 15 the vectors stay in the memory map and are read in blocks)
  fit adamw   the reference recipe, 800 steps of 8 pairs
  fit lbfgs   the exact minimiser (l2 1.0)
  eval        the full metric table with 1000 bootstrap resamples
  sweep       100 AdamW configurations (800 steps each) ranked on a held-out split, beside the
              same 100 trained one after another with fit-head's trainer (measured once each)

and the process's peak RSS.

    python benchmarks/head_speed.py --write
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

from _common import median_time, peak_rss_mib, publish, table  # noqa: E402

TARGETS = {"load": 0.5, "fit-head adamw (800 steps)": 2.0, "fit-head lbfgs": 5.0, "eval (1000 bootstrap)": 2.0,
           "sweep, 100 configurations": 15.0}
SWEEP_GRID = "lr=1e-5,2e-5,5e-5,1e-4,3e-4 weight_decay=0,0.01 margin=0,0.5 seed=0,1,2,3,4"


def synthetic_split(U: int, D: int, n_pairs: int, per_group: int = 9, seed: int = 0):
    """Reference-shaped data: groups of ``per_group`` traces (1 positive, 8 negatives), each
    positive paired with every negative of its group, plus cross-group pairs up to ``n_pairs``."""
    from orm_cache.data.ingest import Pairs, SplitData

    rng = np.random.default_rng(seed)
    keys = [f"{i:064x}" for i in range(U)]
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    q = rng.normal(size=U)
    X = (rng.normal(size=(U, D)) + 3.0 * q[:, None] * u).astype(np.float16)  # (U, D)
    groups = np.arange(U) // per_group
    ci, ri = [], []
    for g in range(groups.max() + 1):
        members = np.flatnonzero(groups == g)
        best = members[np.argmax(q[members])]
        for m in members:
            if m != best:
                ci.append(best)
                ri.append(m)
    while len(ci) < n_pairs:
        a, b = rng.integers(0, U, 2)
        if a != b:
            ci.append(a if q[a] > q[b] else b)
            ri.append(b if q[a] > q[b] else a)
    ci, ri = np.array(ci[:n_pairs]), np.array(ri[:n_pairs])
    pairs = Pairs([keys[i] for i in ci], [keys[i] for i in ri], [f"g{groups[i]}" for i in ci], [])
    data = SplitData("synthetic", "train", "pairwise", {k: "" for k in keys}, pairs)
    return data, keys, X


def write_store(cache: Path, keys, X: np.ndarray):
    from orm_cache.store import ShardWriter, VectorStore, fingerprint, store_dir

    ident = {"schema_version": 1, "model": {"source": "synthetic", "dim": X.shape[1]}}
    fp = fingerprint(ident)
    VectorStore.open(cache, fp, ident, create=True)
    w = ShardWriter(store_dir(cache, fp), fp, ident, ("last@-1",), X.shape[1], "float16", shard_rows=2048)
    for i in range(0, len(keys), 512):
        n = len(keys[i:i + 512])
        w.add(keys[i:i + 512], np.full(n, 200), np.zeros(n, bool), {"last@-1": X[i:i + 512]})
    w.flush()
    return fp


def time_sweep(sv, sequential: int) -> tuple[float, float, int]:
    """Seconds for the 100-configuration sweep (median of 3) and for training them one by one
    (once; scaled from
    ``sequential`` of them when fewer), on the same pairs split 80/20 into train / selection."""
    import time

    from orm_cache.config import HeadConfig
    from orm_cache.head.sweep import expand, parse_grid, run_sweep
    from orm_cache.head.train import train_adamw

    n = len(sv.ci)
    sel = np.zeros(n, bool)
    sel[np.random.default_rng(0).permutation(n)[: n // 5]] = True
    feats = {"last@-1": (sv.X, sv.ci[~sel], sv.ri[~sel])}
    select = {"last@-1": (sv.X, sv.ci[sel], sv.ri[sel])}
    cfgs = expand(HeadConfig(feature="last@-1"), parse_grid(SWEEP_GRID))
    t_sweep, _ = median_time(lambda: run_sweep(feats, select, cfgs), 3)
    t = time.perf_counter()
    for c in cfgs[:sequential]:
        train_adamw(sv.X, sv.ci[~sel], sv.ri[~sel], c)
    t_seq = (time.perf_counter() - t) * len(cfgs) / min(sequential, len(cfgs))
    return t_sweep, t_seq, len(cfgs)


def run(args) -> tuple[str, dict]:
    from orm_cache.config import HeadConfig
    from orm_cache.evaluate import evaluate
    from orm_cache.head import LinearHead, train
    from orm_cache.store import VectorStore, store_dir
    from orm_cache.pipeline.vectors import split_vectors

    data, keys, X16 = synthetic_split(args.traces, args.dim, args.pairs)
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d)
        fp = write_store(cache, keys, X16)
        del X16

        def load():
            return split_vectors(data, VectorStore(store_dir(cache, fp), fp), "last@-1")

        t_load, sv = median_time(load, args.repeats, warmup=1)
        t_adamw, r_adamw = median_time(lambda: train(sv.X, sv.ci, sv.ri, HeadConfig()), args.repeats, warmup=1)
        t_lbfgs, r_lbfgs = median_time(lambda: train(sv.X, sv.ci, sv.ri, HeadConfig(solver="lbfgs")), args.repeats)
        head = LinearHead(r_lbfgs.weight, r_lbfgs.bias, {"train": {"score_std": r_lbfgs.score_std}})
        t_eval, rep = median_time(lambda: evaluate(head, sv, bootstrap=1000), args.repeats, warmup=1)
        t_sweep, t_seq, n_cfg = time_sweep(sv, args.sequential)
    times = {"load": t_load, "fit-head adamw (800 steps)": t_adamw, "fit-head lbfgs": t_lbfgs,
             "eval (1000 bootstrap)": t_eval, "sweep, 100 configurations": t_sweep}
    rows = [[k, f"{v:.3f}", f"<= {TARGETS[k]}", "yes" if v <= TARGETS[k] else "NO"] for k, v in times.items()]
    adamw_acc = float(((sv.X @ r_adamw.weight)[sv.ci] > (sv.X @ r_adamw.weight)[sv.ri]).mean())
    body = "\n".join([
        f"### Stage 2 timings: {args.pairs:,} pairs over {args.traces:,} traces x {args.dim} dims (float16 store)", "",
        f"Medians of {args.repeats} in-process runs (imports and interpreter start excluded).", "",
        table(["step", "seconds", "target", "met"], rows), "",
        f"Peak RSS of the process: {peak_rss_mib():,.0f} MiB. lbfgs converged in {r_lbfgs.steps} iterations; "
        f"train accuracy adamw {100 * adamw_acc:.1f}%, eval accuracy of the lbfgs head {100 * rep['accuracy']:.1f}%.",
        "",
        f"Sweep grid `{SWEEP_GRID}` ({n_cfg} AdamW configurations, 800 steps each, batch 8, selected on a "
        f"held-out fifth of the pairs): {t_sweep:.2f}s (median of 3) as one sweep (5 groups of 20 heads trained as (20, D) "
        f"matrices) against {t_seq:.1f}s training the same {n_cfg} one after another with fit-head's trainer"
        + (f" (measured on {args.sequential} of them and scaled)" if args.sequential < n_cfg else "")
        + f" (one run): {t_seq / t_sweep:.1f}x.",
    ])
    return body, times


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=41_656)
    p.add_argument("--traces", type=int, default=9_482)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sequential", type=int, default=100,
                   help="configurations trained one by one for the sweep comparison (scaled to 100 when fewer)")
    p.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    body, times = run(args)
    publish("head_speed", body, args.write)
    return times


if __name__ == "__main__":
    main()
