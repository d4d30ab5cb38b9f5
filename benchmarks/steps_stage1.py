"""Stage-1 cost of step prefixes: whole traces vs `embed --steps` vs embedding every prefix alone.

On GSM8K traces (question + a model solution; steps = lines) when ../shared/data/gsm8k is present,
else the synthetic set, into empty caches, in one process with one loaded encoder:

  (a) whole traces only;
  (b) `embed --steps`: every line's prefix pooled from its trace's own forward pass (each prefix
      tokenized alone to check its ids are the trace's first, then a row in the store);
  (c) every prefix embedded as a text of its own, the trace too (what scoring every prefix
      separately costs: the same rows as (b)).

Reports forward passes, rows stored, tokens run through the model, time (median of --repeats),
rows/s, tokens/s and store size, and the tokenizer's share (tokenizing the traces, and the
prefixes too, timed apart). --model: tiny-opt, opt-1.3b-arch (facebook/opt-1.3b's architecture,
random weights; float16 on a GPU), bundled-smollm2 or a model directory.

    python benchmarks/steps_stage1.py --model opt-1.3b-arch --device cuda --limit 4000 --write   # on a GPU
    python benchmarks/steps_stage1.py --model bundled-smollm2 --limit 60 --write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import GSM8K, build_model, gsm8k_pointwise, publish, table  # noqa: E402


def traces(limit: int):
    """``(items, source)``: stage 1's ``(key, text, start, special, prefixes)`` of ``limit`` traces."""
    from orm_cache.text import TextBuilder, TextRecipe

    if (GSM8K / "model_solutions_dev.jsonl").exists():
        rows, source = gsm8k_pointwise(), "GSM8K model solutions (question + solution, steps = lines)"
    else:
        from orm_cache.data.synthetic import make_pointwise

        rows, source = make_pointwise(max(1, limit // 6 + 1), 0, 6), "synthetic set (GSM8K data absent)"
    b = TextBuilder(TextRecipe(kind="template"))
    items, seen = [], set()
    for r in rows:
        text, start = b.build(r["text"], r["prompt"], "row", "text")
        k = b.key(text)
        if k in seen:
            continue
        seen.add(k)
        steps = tuple((b.key(t), t) for t, _ in b.build_steps(r["text"], r["prompt"], "row", "text"))
        items.append((k, text, start, True, tuple(p for p in steps if p[0] != k)))
        if len(items) == limit:
            break
    return items, source


def dir_mib(d: Path) -> float:
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file()) / 2**20


def run(args) -> str:
    import torch

    from orm_cache.encode import embed_texts
    from orm_cache.encode.model import Encoder
    from orm_cache.encode.spec import EncoderSpec, RunSpec

    work = Path(tempfile.mkdtemp(prefix="steps-stage1-"))
    model = build_model(args.model, work)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    enc = Encoder(EncoderSpec(model=model, pooling=tuple(args.pooling.split(",")), layers=(-1,)), device)
    items, source = traces(args.limit)
    prefixes = {k: t for it in items for k, t in it[4]}
    modes = {
        "(a) whole traces": [it[:4] for it in items],
        "(b) embed --steps (prefixes from the trace's pass)": items,
        "(c) every prefix embedded alone": [it[:4] for it in items] + [(k, t, it[2], True) for it in items
                                                                         for k, t in it[4]],
    }
    embed_texts(items[:8], enc, RunSpec(cache_dir=str(work / "warm"), device=device, quiet=True))  # load, warm up
    rows, base = [], None
    for name, todo in modes.items():
        times, report = [], None
        for rep in range(args.repeats):
            cache = work / f"c{len(rows)}-{rep}"
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            report = embed_texts(todo, enc, RunSpec(cache_dir=str(cache), device=device, quiet=True,
                                                    batch_tokens=args.batch_tokens))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(report.encode_seconds)
        t = statistics.median(times)
        base = base or t
        stored = report.embedded + report.prefixes
        rows.append([name, report.embedded, stored, f"{report.tokens:,}", f"{t:.2f}s", f"{stored / t:,.0f}",
                     f"{report.tokens / t:,.0f}", f"{dir_mib(cache):.1f}", f"{t / base:.2f}x"])
    texts = [it[1] for it in items]
    t0 = time.perf_counter()
    enc.tokenize(texts, [it[2] for it in items], True)
    t_traces = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc.tokenize(list(prefixes.values()), None, True)
    t_prefixes = time.perf_counter() - t0
    n_tokens = sum(len(x) for x in enc.tokenize(texts, None, True)[0])
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    lines = [
        f"### Stage-1 cost of step prefixes ({args.model}, {enc.identity['dtype']}, {gpu})", "",
        f"{len(items):,} distinct traces of the {source} ({n_tokens / len(items):.0f} tokens on average), "
        f"{len(prefixes):,} distinct step prefixes besides them; poolings {args.pooling} at layer -1; "
        f"median of {args.repeats} runs into empty caches, one loaded encoder, same process.", "",
        table(["stage 1", "forward passes", "rows stored", "tokens run", "time", "rows/s", "tokens/s",
               "store MiB", "time vs (a)"], rows), "",
        f"Tokenizer (single process, timed apart): the traces {t_traces:.2f}s, their prefixes (each alone, to check "
        f"its ids are its trace's first) {t_prefixes:.2f}s.",
    ]
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-opt")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=400, help="distinct traces")
    p.add_argument("--pooling", default="last,mean")
    p.add_argument("--batch-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    out = run(args)
    publish(f"steps-stage1-{args.model}-{'gpu' if 'cuda' in args.device else 'cpu'}", out, args.write)
    return out


if __name__ == "__main__":
    main()
