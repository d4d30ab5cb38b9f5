"""Growth: how time and memory grow with the data (issue 15).

Stage 2 at --sizes traces x --dim dims (default 10k, 100k, 1M x 2048: a 4 GB float16 store at
1M), with reference-shaped pairs (4.39 pairs per trace: each group of 9 traces pairs its best
with the other 8, plus cross-group pairs) and a planted quality direction. Each measurement runs
in its own subprocess, whose peak RSS is read from ``os.wait4`` when it exits (started by a tiny
launcher, so that the benchmark's own memory is not counted: see ``LAUNCHER``):

  open (checksums)   open the store, reading every shard's CRC32 (no verified.json yet)
  open (remembered)  open it again: shards remembered as verified are not read
  load               open + gather the split (``split_vectors``: X stays in the memory map)
  fit-head adamw     the reference recipe, --steps steps of 8 pairs, and the checkpoint's metadata
  fit-head lbfgs     the exact solve (l2 1.0)
  eval               the full metric table, 1000 bootstrap resamples by group
  sweep              100 AdamW configurations, selected on a held-out fifth of the pairs
  score              ``score_file`` over a JSONL of every trace's text (all cache hits)

Each step's seconds are its own work (the subprocess's start, imports and ``load`` excluded, and
reported apart); its peak RSS is the whole subprocess's. Stage 1: ``orm-cache embed`` of
--texts short pointwise texts on the tiny OPT (CPU, one thread) in a subprocess, its peak RSS
and time; and the padding waste of sorting by length within chunks of --chunk-texts against
sorting the whole run, on GSM8K's length distribution.

    python benchmarks/scale.py --write
    python benchmarks/scale.py --sizes 10000 --texts 10000          # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

from _common import ROOT, publish, table  # noqa: E402

PAIRS_PER_TRACE = 41_656 / 9_482  # the reference data's shape
GROUP = 9  # traces per problem: 1 best + 8 others
SWEEP_GRID = "lr=1e-5,2e-5,5e-5,1e-4,3e-4 weight_decay=0,0.01 margin=0,0.5 seed=0,1,2,3,4"
STEPS = ("open (checksums)", "open (remembered)", "load", "fit-head adamw", "fit-head lbfgs", "eval", "sweep", "score")
# At 1,000,000 x 2048 (issue 15), seconds; peak RSS at most 2.5x the store on disk.
TARGETS = {"fit-head adamw": 5.0, "fit-head lbfgs": 120.0, "eval": 20.0, "sweep": 60.0}
RSS_TARGET = 2.5
STAGE1_TARGET = 1.3  # stage 1's peak RSS at 1M texts over that at 100k


# ------------------------------------------------------------------------------- synthetic data

def text_of(i: int) -> str:
    return f"scale trace {i}"


def synthetic_split(U: int, seed: int = 0):
    """Reference-shaped pairs over U traces (keys of :func:`text_of`), built without Python loops
    over pairs; returns (SplitData, keys, q) with q each trace's latent quality."""
    from orm_cache.data.ingest import Pairs, SplitData, trace_key

    rng = np.random.default_rng(seed)
    keys = [trace_key(text_of(i)) for i in range(U)]
    q = rng.normal(size=U)
    group = np.arange(U) // GROUP
    order = np.lexsort((-q, group))  # each group's best first
    first = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
    best = np.empty(group.max() + 1, np.int64)
    best[group[order[first]]] = order[first]
    others = np.setdiff1d(np.arange(U), best)
    ci, ri = [best[group[others]]], [others]  # (8/9 U,) within-group pairs
    n_pairs = int(round(PAIRS_PER_TRACE * U))
    m = max(n_pairs - len(others), 0)
    a, b = rng.integers(0, U, 2 * m + 8), rng.integers(0, U, 2 * m + 8)
    keep = np.flatnonzero(a != b)[:m]
    a, b = a[keep], b[keep]
    up = q[a] > q[b]
    ci.append(np.where(up, a, b))
    ri.append(np.where(up, b, a))
    ci, ri = np.concatenate(ci)[:n_pairs], np.concatenate(ri)[:n_pairs]
    gnames = [f"g{g}" for g in range(group.max() + 1)]
    pairs = Pairs([keys[i] for i in ci], [keys[i] for i in ri], [gnames[g] for g in group[ci]], [])
    return SplitData("synthetic", "train", "pairwise", dict.fromkeys(keys, ""), pairs), keys, q


def write_store(cache: Path, U: int, D: int, seed: int = 0) -> tuple[str, int]:
    """A float16 store of U planted vectors (in key order, 2048 rows a shard); returns (fp, bytes)."""
    from orm_cache.store import ShardWriter, VectorStore, fingerprint, store_dir

    _, keys, q = synthetic_split(U, seed)
    ident = {"schema_version": 1, "model": {"source": "synthetic", "dim": D}}
    fp = fingerprint(ident)
    VectorStore.open(cache, fp, ident, create=True)
    rng = np.random.default_rng(seed + 1)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    mean = rng.normal(scale=2.0, size=D).astype(np.float32)  # hidden states are not centred
    w = ShardWriter(store_dir(cache, fp), fp, ident, ("last@-1",), D, "float16", shard_rows=2048)
    for i in range(0, U, 2048):
        n = min(2048, U - i)
        x = rng.standard_normal((n, D), dtype=np.float32) + mean + 3.0 * q[i:i + n, None].astype(np.float32) * u
        w.add(keys[i:i + n], np.full(n, 16), np.zeros(n, bool), {"last@-1": x.astype(np.float16)})
    w.flush()
    return fp, sum(p.stat().st_size for p in store_dir(cache, fp).glob("*.arrow"))


# ----------------------------------------------------------------------------- one measurement

def child(spec: dict) -> dict:
    """One measurement, in this (sub)process: returns its seconds and what it found. Imports
    (and torch's lazy import of its compiler stack at the first optimiser, ~10 s here) happen
    before the clock starts."""
    import torch

    from orm_cache.config import HeadConfig
    from orm_cache.evaluate import evaluate
    from orm_cache.head import Head, train
    from orm_cache.head.sweep import expand, parse_grid, run_sweep
    from orm_cache.pipeline.rescore import score_file
    from orm_cache.pipeline.fit import build_head
    from orm_cache.store import VectorStore, store_dir
    from orm_cache.pipeline.vectors import split_vectors

    if spec["step"] == "fit-head adamw":
        torch.optim.AdamW(torch.nn.Linear(1, 1).parameters())

    cache, fp, U, step = Path(spec["cache"]), spec["fp"], spec["traces"], spec["step"]
    d = store_dir(cache, fp)
    if step == "open (checksums)":
        (d / "verified.json").unlink(missing_ok=True)
    if step.startswith("open"):
        t = time.perf_counter()
        vs = VectorStore(d, fp)
        return {"seconds": time.perf_counter() - t, "keys": len(vs)}
    data, _, _ = synthetic_split(U)
    t = time.perf_counter()
    vs = VectorStore(d, fp)
    sv = split_vectors(data, vs, "last@-1")
    load = time.perf_counter() - t
    out = {"load": load}
    t = time.perf_counter()
    if step == "load":
        out["seconds"] = load
    elif step.startswith("fit-head"):
        cfg = HeadConfig(solver=step.split()[-1], steps=spec["steps"], feature="last@-1")
        res = train(sv.X, sv.ci, sv.ri, cfg)
        head = build_head(vs, sv, cfg, res)
        out.update(seconds=time.perf_counter() - t, accuracy=head.meta["train"]["accuracy"], iterations=res.steps)
        if cfg.solver == "lbfgs":
            head.save(spec["head"])  # scored by eval and score
    elif step == "eval":
        report = evaluate(Head.load(spec["head"]), sv, bootstrap=1000)
        out.update(seconds=time.perf_counter() - t, accuracy=report["accuracy"])
    elif step == "sweep":
        n = len(sv.ci)
        sel = np.zeros(n, bool)
        sel[np.random.default_rng(0).permutation(n)[: n // 5]] = True
        cfgs = expand(HeadConfig(feature="last@-1", steps=spec["steps"]), parse_grid(spec["grid"]))
        rows = run_sweep({"last@-1": (sv.X, sv.ci[~sel], sv.ri[~sel])}, {"last@-1": (sv.X, sv.ci[sel], sv.ri[sel])},
                         cfgs)
        out.update(seconds=time.perf_counter() - t, configurations=len(rows),
                   best=max(r.select_accuracy for r in rows))
    elif step == "score":
        del sv, data
        t = time.perf_counter()
        s = score_file(spec["head"], spec["texts"], spec["scored"], cache, quiet=True)
        out.update(seconds=time.perf_counter() - t, rows=s.rows, hits=s.hits, model_loaded=s.model_loaded)
    return out


# A child's ru_maxrss (os.wait4) starts from its parent's peak RSS at the fork: Linux records the
# old address space's high-water mark at exec. This process holds a whole split when it measures
# a large store, so every child is started by a tiny launcher (a bare interpreter, ~10 MB) whose
# own child is the measured command: its peak RSS is then its own.
LAUNCHER = ("import os, subprocess, sys\n"
            "p = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_child(args: list[str], env: dict | None = None, log: Path | None = None) -> tuple[int, float, float]:
    """Run ``args`` in a subprocess (through :data:`LAUNCHER`); returns (exit code, wall seconds,
    its peak RSS in bytes)."""
    import tempfile

    t = time.perf_counter()
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss, open(log or os.devnull, "w") as f:
        code = subprocess.call([sys.executable, "-S", "-c", LAUNCHER, rss.name, *args], stdout=f,
                               stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        peak = int(rss.read() or 0) * 1024
    return code, time.perf_counter() - t, peak


def measure(spec: dict, work: Path) -> dict:
    """One stage-2 step in a fresh interpreter: its result and the subprocess's peak RSS."""
    res = work / "result.json"
    res.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code, wall, rss = run_child([sys.executable, __file__, "--child", json.dumps(spec), "--result", str(res)], env,
                                work / "child.log")
    if code != 0:
        raise RuntimeError(f"{spec['step']} at {spec['traces']:,} traces failed ({code}):\n"
                           + (work / "child.log").read_text()[-3000:])
    return {**json.loads(res.read_text()), "rss": rss, "wall": wall}


def stage2(args, work: Path) -> tuple[list, dict]:
    rows, at = [], {}
    for U in args.sizes:
        cache = work / f"store-{U}x{args.dim}"
        meta = cache / "scale.json"
        if meta.exists() and json.loads(meta.read_text()).get("dim") == args.dim:
            fp, size = json.loads(meta.read_text())["fp"], json.loads(meta.read_text())["bytes"]
        else:
            shutil.rmtree(cache, ignore_errors=True)
            t = time.perf_counter()
            fp, size = write_store(cache, U, args.dim)
            meta.write_text(json.dumps({"fp": fp, "bytes": size, "dim": args.dim}))
            print(f"wrote {U:,} x {args.dim} store ({size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f}s", flush=True)
        texts = cache / "texts.jsonl"
        if not texts.exists():
            with open(texts, "w") as f:
                f.writelines(json.dumps({"text": text_of(i)}) + "\n" for i in range(U))
        base = {"cache": str(cache), "fp": fp, "traces": U, "steps": args.steps, "grid": args.grid,
                "head": str(cache / "head.pt"), "texts": str(texts), "scored": str(work / "scored.jsonl")}
        at[U] = {"bytes": size}
        for step in STEPS:
            runs = [measure({**base, "step": step}, work) for _ in range(args.repeats)]
            r = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]  # the median run
            r = {**r, "rss": max(x["rss"] for x in runs), "all": [round(x["seconds"], 2) for x in runs]}
            at[U][step] = r
            print(f"{U:>9,} {step:<18} {r['seconds']:8.2f}s  peak RSS {r['rss'] / 2 ** 30:6.2f} GiB"
                  + (f"  (load {r['load']:.2f}s)" if "load" in r and step != "load" else ""), flush=True)
            rows.append([f"{U:,}", f"{size / 1e9:.3g} GB", step, round(r["seconds"], 2), round(r["rss"] / 2 ** 30, 2),
                         f"{r['rss'] / size:.2f}x", _note(step, r)])
        (work / "scored.jsonl").unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    return rows, at


def _note(step: str, r: dict) -> str:
    if step.startswith("fit-head"):
        return f"train accuracy {100 * r['accuracy']:.1f}%" + (f", {r['iterations']} iterations" if "lbfgs" in step else "")
    if step == "eval":
        return f"accuracy {100 * r['accuracy']:.1f}%"
    if step == "sweep":
        return f"{r['configurations']} configurations"
    if step == "score":
        return f"{r['rows']:,} rows, model loaded: {r['model_loaded']}"
    return ""


# ---------------------------------------------------------------------------------------- stage 1

def stage1(args, work: Path) -> tuple[list, dict]:
    from orm_cache.testing import tiny_opt

    model = tiny_opt(work / "tiny-opt") if not (work / "tiny-opt" / "config.json").exists() else work / "tiny-opt"
    rows, at = [], {}
    rng = np.random.default_rng(0)
    for n in args.texts:
        data = work / f"texts-{n}.jsonl"
        with open(data, "w") as f:
            for i in range(n):
                a, b = rng.integers(1, 999, 2)
                f.write(json.dumps({"text": f"Trace {i}: {a} + {b} = {a + b}. Answer: {a + b}",
                                    "label": int(rng.random() < 0.5), "group": f"q{i // 8}"}) + "\n")
        cache = work / f"stage1-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        code, wall, rss = run_child([sys.executable, "-m", "orm_cache", "embed", "--data", str(data), "--model",
                                     str(model), "--cache-dir", str(cache), "--device", "cpu",
                                     "--chunk-texts", str(args.chunk_texts), "-q"], env, work / "embed.log")
        out = (work / "embed.log").read_text()
        if code != 0:
            raise RuntimeError(f"embed of {n:,} texts failed ({code}):\n{out[-3000:]}")
        padding = next((x.split("(padding ")[1].split(")")[0] for x in out.splitlines() if "(padding " in x), "?")
        at[n] = {"rss": rss, "seconds": wall}
        rows.append([f"{n:,}", round(wall, 1), round(rss / 2 ** 30, 3), padding])
        print(f"{n:>9,} texts: embed {wall:.1f}s, peak RSS {rss / 2 ** 30:.3f} GiB, padding {padding}", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
        data.unlink()
    return rows, at


def padding_waste(chunk: int, n: int) -> tuple[list[list], str]:
    """Padding of token-budget batches when texts are sorted within chunks of ``chunk`` vs across
    the run, on ``n`` lengths drawn from GSM8K's (tiny OPT's tokenizer, max_length 512)."""
    from _common import GSM8K, gsm8k_pointwise

    from orm_cache.config import DEFAULT_TEMPLATE
    from orm_cache.text import TextRecipe
    from orm_cache.encode import token_budget_batches
    from orm_cache.testing import build_tokenizer

    if (GSM8K / "model_solutions_dev.jsonl").exists():
        texts = [TextRecipe(DEFAULT_TEMPLATE).render(r["text"], r["prompt"]) for r in gsm8k_pointwise()]
        source = "GSM8K"
    else:
        from orm_cache.data.synthetic import make_pointwise

        texts = [TextRecipe(DEFAULT_TEMPLATE).render(r["text"], r["prompt"]) for r in make_pointwise(800, 0, 6)]
        source = "the synthetic set"
    tok = build_tokenizer()
    pool = np.minimum([len(x) for x in tok(texts)["input_ids"]], 512)
    lengths = np.random.default_rng(0).choice(pool, size=n)
    out = []
    for budget in (2048, 16384):
        waste = {}
        for name, size in (("whole run", n), (f"chunks of {chunk:,}", chunk)):
            padded = sum(len(b) * int(lengths[a:a + size][b].max())
                         for a in range(0, n, size) for b in token_budget_batches(lengths[a:a + size], budget, 256))
            waste[name] = 1 - lengths.sum() / padded
        out.append([f"{budget:,}", f"{100 * waste['whole run']:.2f}%", f"{100 * waste[f'chunks of {chunk:,}']:.2f}%"])
    return out, source


# ------------------------------------------------------------------------------------------ report

def report(args, s2_rows, s2, s1_rows, s1, pad, pad_source) -> str:
    lines = [f"### Growth: stage 2 at {', '.join(f'{u:,}' for u in args.sizes)} traces x {args.dim} dims, "
             f"stage 1 at {', '.join(f'{n:,}' for n in args.texts)} texts", ""]
    if s2_rows:
        lines += [f"Float16 store, {PAIRS_PER_TRACE:.2f} pairs per trace (groups of {GROUP}: best vs the other 8, plus "
                  f"cross-group pairs), planted direction. One subprocess per step and run; seconds are the median "
                  f"of {args.repeats} run(s) of the step's own work (start, imports and load excluded; load is its "
                  "own row); peak RSS is the largest of the subprocesses' (`os.wait4`, each started by a tiny "
                  "launcher so the benchmark's own memory is not inherited), memory-mapped store pages included.", "",
                  table(["traces", "store", "step", "seconds", "peak RSS GiB", "RSS / store", "note"], s2_rows), ""]
        big = max(s2)
        if big >= 1_000_000:
            checks = [[step, f"{s2[big][step]['seconds']:.1f}", f"<= {t:g}",
                       "yes" if s2[big][step]["seconds"] <= t else "NO"] for step, t in TARGETS.items()]
            worst = max(s2[big][step]["rss"] for step in STEPS)
            ratio = worst / s2[big]["bytes"]
            checks.append(["peak RSS, any step", f"{worst / 2 ** 30:.2f} GiB = {ratio:.2f}x store",
                           f"<= {RSS_TARGET}x store", "yes" if ratio <= RSS_TARGET else "NO"])
            lines += [f"Targets at {big:,} x {args.dim}:", "", table(["what", "measured", "target", "met"], checks), ""]
    if s1_rows:
        lines += [f"Stage 1: `orm-cache embed` of short pointwise texts (~27 tokens) on the tiny OPT, CPU, one "
                  f"thread, chunks of {args.chunk_texts:,} texts; wall time includes start and model load.", "",
                  table(["texts", "seconds", "peak RSS GiB", "padding"], s1_rows), ""]
        if 1_000_000 in s1 and 100_000 in s1:
            r = s1[1_000_000]["rss"] / s1[100_000]["rss"]
            lines += [f"Peak RSS at 1M over 100k: {r:.2f}x (target <= {STAGE1_TARGET}x: "
                      f"{'met' if r <= STAGE1_TARGET else 'NOT met'}).", ""]
    if pad:
        lines += [f"Padding waste of token-budget batches, texts sorted by length across the whole run vs within "
                  f"chunks of {args.chunk_texts:,} ({pad_source}, tiny OPT tokenizer):", "",
                  table(["batch tokens", "whole run", f"chunks of {args.chunk_texts:,}"], pad), ""]
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(float(x)) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--sizes", type=ints, default=[10_000, 100_000, 1_000_000], help="stage-2 traces, comma-separated")
    p.add_argument("--texts", type=ints, default=[10_000, 100_000, 1_000_000], help="stage-1 texts, comma-separated")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--steps", type=int, default=800, help="AdamW steps (fit-head and each sweep configuration)")
    p.add_argument("--grid", default=SWEEP_GRID)
    p.add_argument("--repeats", type=int, default=1, help="subprocesses per stage-2 step: the median is reported")
    p.add_argument("--chunk-texts", type=int, default=8192)
    p.add_argument("--work-dir", default=None, help="where stores and data go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the stores for another run (same --work-dir)")
    p.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.child:
        Path(args.result).write_text(json.dumps(child(json.loads(args.child))))
        return None
    import tempfile

    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(args.work_dir) if args.work_dir and args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        s2_rows, s2 = stage2(args, work) if args.sizes else ([], {})
        s1_rows, s1 = stage1(args, work) if args.texts else ([], {})
        n_pad = max(25 * args.chunk_texts, 1000)
        pad, pad_source = padding_waste(args.chunk_texts, n_pad) if args.texts else ([], "")
    body = report(args, s2_rows, s2, s1_rows, s1, pad, f"{n_pad:,} lengths drawn from {pad_source}'s")
    publish("scale", body, args.write)
    return {"stage2": s2, "stage1": s1}


if __name__ == "__main__":
    main()
