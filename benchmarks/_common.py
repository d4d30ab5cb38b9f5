"""Shared by the benchmark scripts: machine description, timing, tables, RESULTS.md sections,
and the GSM8K model solutions (read by path from ../shared/data/gsm8k, never copied)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import re
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
SOLVERS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}"
    if torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc


def median_time(fn, repeats: int = 3, warmup: int = 0):
    """Median wall time of ``fn()`` over ``repeats`` runs (after ``warmup`` untimed runs) and the
    last return value."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(x):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return str(x)
        if isinstance(x, int):
            return f"{x:,}"
        return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md, stamped with machine, date and command."""
    stamp = (f"Machine: {machine()}.  \nDate: {_dt.date.today().isoformat()}.  \n"
             f"Command: `python {' '.join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])}`\n")
    block = f"<!-- BEGIN {name} -->\n{body.rstrip()}\n\n{stamp}<!-- END {name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by the scripts in this folder (`--write`), not by hand.\n"
    pat = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def publish(name: str, body: str, write: bool) -> None:
    """Print a benchmark's tables with the machine; with ``--write``, put them in RESULTS.md."""
    print(body)
    print(f"\nmachine: {machine()}")
    if write:
        write_section(name, body)


def gsm8k_main(section: str, run, args, data: Path = GSM8K):
    """A GSM8K benchmark's main: ``run(args)``'s tables, published as ``section`` (RESULTS.md with
    ``--write``); skipped cleanly, returning None, where the data (``data``) is absent."""
    if not (data / "model_solutions_dev.jsonl").exists():
        print(f"skipped: {data}/model_solutions_dev.jsonl is absent")
        return None
    out = run(args)
    publish(section, out, args.write)
    return out


def gsm8k_args(doc: str, argv, stage1_sample: int, stage1_help: str):
    """The command line the GSM8K benchmarks share: a cache, a subset of problems, the split seed,
    how many texts stage 1 is timed on, and --write."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default="cache", help="vector stores (re-runs embed nothing)")
    p.add_argument("--problems", type=int, default=None, help="use the first N problems (default: all 1,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage1-sample", type=int, default=stage1_sample, help=stage1_help)
    p.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    return p.parse_args(argv)


def gsm8k_pointwise(path: Path = GSM8K / "model_solutions_dev.jsonl") -> list[dict]:
    """One row per candidate: the ground truth and the four model solutions of each problem.
    ``source`` says who wrote it (``ground_truth`` or the solver, e.g. ``6b_finetuning``), so
    ``eval --by source`` separates pairs against the reference solution from model-vs-model ones."""
    rows = []
    for i, line in enumerate(open(path)):
        d = json.loads(line)
        cands = [(d["ground_truth"], 1, "ground_truth")] + [
            (d[s]["solution"], int(d[s]["is_correct"]), s) for s in SOLVERS if s in d]
        for text, label, source in cands:
            rows.append({"group": f"q{i:04d}", "prompt": d["question"], "text": text, "label": label,
                         "source": source})
    return rows


def write_gsm8k_splits(out: Path, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> Path:
    """Split the problems (never the traces) into train/validation/test pointwise files."""
    rows = gsm8k_pointwise()
    groups = sorted({r["group"] for r in rows})
    random.Random(seed).shuffle(groups)
    n_tr, n_va = int(fractions[0] * len(groups)), int(fractions[1] * len(groups))
    split_of = {g: "train" for g in groups[:n_tr]}
    split_of.update({g: "validation" for g in groups[n_tr:n_tr + n_va]})
    split_of.update({g: "test" for g in groups[n_tr + n_va:]})
    out.mkdir(parents=True, exist_ok=True)
    files = {s: open(out / f"{s}.jsonl", "w") for s in ("train", "validation", "test")}
    for r in rows:
        files[split_of[r["group"]]].write(json.dumps(r) + "\n")
    for f in files.values():
        f.close()
    return out


def build_model(name: str, workdir: Path, dtype: str = "float16") -> str:
    """A --model name of the benchmarks: tiny-opt and opt-1.3b-arch (facebook/opt-1.3b's
    architecture, random weights) are built into ``workdir``; anything else is passed on."""
    from orm_cache.testing import OPT_1_3B, tiny_opt

    if name == "tiny-opt":
        return str(tiny_opt(workdir / "tiny-opt"))
    if name == "opt-1.3b-arch":
        return str(tiny_opt(workdir / "opt-1.3b-arch", **OPT_1_3B, dtype="float16" if dtype != "float32" else "float32"))
    return name
