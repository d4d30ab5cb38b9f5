"""The reference workload end to end on a GPU: from data files to an evaluated head.

The reference card trains its head on 9,482 traces (41,656 training pairs) and reports "~10
minutes on a single GPU" because it runs the 1.3B encoder at every step. Here: the OPT-1.3b
architecture (from its config, random weights: the same arithmetic), float16, synthetic traces
in three splits (about 9.5k traces), then

    orm-cache embed --split train,validation,test      (stage 1, once per distinct text)
    orm-cache fit-head                                  (the reference recipe: AdamW, 800 steps)
    orm-cache eval --split test

each timed as a user runs it (a fresh process per command, model load included), and the total
against the card's 10 minutes.

    python benchmarks/gpu_reference.py [--problems 1185] [--write]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import publish, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(*args) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "orm_cache", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"orm-cache {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}")
    return seconds, r.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=1185, help="problems in all (8 traces each), split 76/12/12")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--write", action="store_true")
    p.add_argument("--smoke", action="store_true", help="a tiny OPT on the CPU: checks the script, measures nothing")
    args = p.parse_args()
    import torch

    from orm_cache.data.synthetic import write_dataset
    from orm_cache.testing import OPT_1_3B, tiny_opt

    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-ref-"))
    t0 = time.perf_counter()
    model = (tiny_opt(work / "tiny") if args.smoke else tiny_opt(work / "opt-1.3b-arch", **OPT_1_3B, dtype="float16"))
    device = "cpu" if args.smoke else "cuda"
    build = time.perf_counter() - t0
    n = args.problems
    sizes = {"train": int(0.76 * n), "validation": int(0.12 * n), "test": n - int(0.76 * n) - int(0.12 * n)}
    counts = write_dataset(work / "data", sizes, seed=0, n_candidates=8)
    data = work / "data" / "pointwise"
    cache = work / "cache"
    rows, total = [], 0.0
    steps = [
        ("embed train,validation,test", ("embed", "--data", data, "--split", "train,validation,test", "--model", model,
                                         "--device", device, "--cache-dir", cache)),
        ("fit-head (reference recipe, AdamW 800 steps)", ("fit-head", "--data", data, "--model", model, "--cache-dir",
                                                          cache, "--out", work / "h.pt")),
        ("eval --split test", ("eval", "--head", work / "h.pt", "--data", data, "--split", "test", "--cache-dir", cache)),
    ]
    for name, cmd in steps:
        seconds, out = run(*cmd)
        total += seconds
        extra = ""
        if cmd[0] == "embed":
            toks = re.findall(r"([\d,]+) tokens/s", out)
            texts = sum(int(x.replace(",", "")) for x in re.findall(r"embedded ([\d,]+) texts in ", out))
            extra = f"{texts:,} texts; " + ", ".join(f"{t} tokens/s" for t in toks)
        if cmd[0] == "fit-head":
            m = re.search(r"on ([\d,]+) pairs", out)
            extra = f"{m.group(1)} training pairs" if m else ""
        if cmd[0] == "eval":
            m = re.search(r"accuracy\s+([\d.]+%)", out)
            extra = f"test pairwise accuracy {m.group(1)} (random weights: no signal expected)" if m else ""
        rows.append([name, f"{seconds:.1f}", extra])
    traces = sum(c["traces"] for c in counts.values())
    rows.append(["total (three commands, each a fresh process)", f"{total:.1f}",
                 f"target ≤ 60 s; the reference card: ~600 s ({600 / total:.0f}x)"])
    split_counts = ", ".join(f"{k} {v['traces']:,}" for k, v in counts.items())
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    body = (f"{dev}, OPT-1.3b architecture (random weights) in float16, synthetic traces: {traces:,} traces in "
            f"{n:,} problems ({split_counts}); building the model "
            f"files took {build:.0f} s and is not counted.\n\n"
            + table(["step", "seconds", "what it did"], rows) + "\n")
    publish("GPU: the reference workload end to end", body, args.write and not args.smoke)


if __name__ == "__main__":
    main()
