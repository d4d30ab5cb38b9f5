"""Stage-1 throughput: the reference loop vs padded input-order batches vs `orm-cache embed`.

On the same texts (GSM8K traces from ../shared/data/gsm8k when present, else the synthetic set),
measures non-padding tokens/s and texts/s of

  (a) the reference card's loop: one text at a time, `score_trace` style;
  (b) padded batches of --batch-size texts in input order (a plain Hugging Face loop);
  (c) `orm-cache embed` (tokenize once, length-sorted token-budget batches, shards written);

with ratios c/a and c/b and the padding waste of (b) and (c). Medians of --repeats runs, all in
one process. --model: bundled-minilm, tiny-opt, opt-1.3b-arch (facebook/opt-1.3b's architecture
with random weights, float16 on a GPU) or a model directory. On CUDA it also measures the dense
fp16 matmul ceiling and reports achieved TFLOP/s (2 x non-embedding parameters per token).

    python benchmarks/embed_throughput.py --model bundled-minilm --write
    python benchmarks/embed_throughput.py --model tiny-opt --write
    python benchmarks/embed_throughput.py --model opt-1.3b-arch --device cuda --write   # on a GPU
    python benchmarks/embed_throughput.py --model bundled-minilm --levers --limit 400 --write
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import GSM8K, build_model, gsm8k_pointwise, median_time, publish, table  # noqa: E402


def long_tailed(texts: list[str], seed: int = 0) -> list[str]:
    """The same texts cut or joined to a long-tailed length distribution (the reference data's
    shape: many short traces, a tail to the 512-token cap): characters ~ 100·exp(1.1·N(0, 1))."""
    import math

    rng = random.Random(seed)
    out, pool = [], "\n".join(texts)
    for i, t in enumerate(texts):
        n = max(20, int(100 * math.exp(1.1 * rng.gauss(0, 1))))
        start = rng.randrange(max(1, len(pool) - n))
        out.append(f"{i}: " + pool[start:start + n])
    return out


def load_texts(limit: int, seed: int = 0, tail: bool = False) -> tuple[list[str], str]:
    from orm_cache.config import DEFAULT_TEMPLATE
    from orm_cache.text import TextRecipe

    if (GSM8K / "model_solutions_dev.jsonl").exists():
        rows, source = gsm8k_pointwise(), "GSM8K model solutions (question + solution)"
    else:
        from orm_cache.data.synthetic import make_pointwise

        rows, source = make_pointwise(max(1, limit // 6 + 1), seed, 6), "synthetic set (GSM8K data absent)"
    texts = list(dict.fromkeys(TextRecipe(DEFAULT_TEMPLATE).render(r["text"], r["prompt"]) for r in rows))
    random.Random(seed).shuffle(texts)
    if tail:
        return long_tailed(texts[:limit], seed), source + ", cut to a long-tailed length distribution"
    return texts[:limit], source


def non_embedding_params(model) -> int:
    emb = sum(p.numel() for n, p in model.named_parameters() if "embed" in n)
    return sum(p.numel() for p in model.parameters()) - emb


def loop_one_at_a_time(enc, texts):
    """(a) the reference loop: tokenize one text, run it, take its last token, copy to host."""
    tok, model = enc.tokenizer, enc.model
    out = []
    with torch.inference_mode():
        for t in texts:
            batch = tok(t, return_tensors="pt", truncation=True, max_length=enc.spec.max_length).to(enc.device)
            h = model(**batch).last_hidden_state  # (1, T, D)
            out.append(h[0, -1].float().cpu())
    return sum(len(x) for x in tok(texts, truncation=True, max_length=enc.spec.max_length)["input_ids"]), 0


def padded_input_order(enc, texts, batch_size):
    """(b) a plain HF loop: batches in input order, padded to their longest text."""
    from orm_cache.encode.pooling import pool

    tok, model = enc.tokenizer, enc.model
    real = padded = 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=enc.spec.max_length).to(enc.device)
            h = model(**batch).last_hidden_state  # (B, T, D)
            pool(h, batch["attention_mask"], "last").float().cpu()
            real += int(batch["attention_mask"].sum())
            padded += int(batch["attention_mask"].numel())
    return real, padded


def orm_cache_embed(enc, texts, batch_tokens):
    """(c) `orm-cache embed` into a fresh store."""
    from orm_cache.config import RunSpec
    from orm_cache.data import trace_key
    from orm_cache.encode import embed_texts

    with tempfile.TemporaryDirectory() as d:
        r = embed_texts({trace_key(t): t for t in texts}, enc,
                        RunSpec(cache_dir=d, device=enc.device, batch_tokens=batch_tokens, quiet=True))
    return r.tokens, r.padded_tokens


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(device: str, dtype) -> float:
    """TFLOP/s of a large dense matmul in ``dtype`` on ``device`` (median of 10)."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / float(np.median(times)) / 1e12


def run(args) -> str:
    from orm_cache.config import EncoderSpec, batch_tokens_for
    from orm_cache.encode.model import Encoder

    texts, source = load_texts(args.limit, args.seed, **({"tail": True} if args.long_tail else {}))
    loop_texts = texts[:args.loop_limit]
    with tempfile.TemporaryDirectory() as work:
        model = build_model(args.model, Path(work), args.dtype)
        enc = Encoder(EncoderSpec(model=model, dtype=args.dtype, max_length=args.max_length), args.device)
        enc.load()
        n_params = non_embedding_params(enc.model)

        def timed(fn, *a):
            def go():
                out = fn(enc, *a)
                sync(enc.device)
                return out
            return median_time(go, args.repeats, warmup=1)

        ta, (tok_a, _) = timed(loop_one_at_a_time, loop_texts)
        tb, (tok_b, pad_b) = timed(padded_input_order, texts, args.batch_size)
        tc, (tok_c, pad_c) = timed(orm_cache_embed, texts, args.batch_tokens)
        ceiling = matmul_ceiling(enc.device, enc.torch_dtype) if enc.device == "cuda" else None
        budget = batch_tokens_for(enc.device, args.batch_tokens)
    rate = {"a": tok_a / ta, "b": tok_b / tb, "c": tok_c / tc}
    tps = {"a": len(loop_texts) / ta, "b": len(texts) / tb, "c": len(texts) / tc}
    flop_per_token = 2 * n_params
    rows = [
        ["(a) one text at a time (reference loop)", len(loop_texts), rate["a"], tps["a"], "0%", "1.0x"],
        [f"(b) padded batches of {args.batch_size}, input order", len(texts), rate["b"], tps["b"],
         f"{100 * (1 - tok_b / pad_b):.1f}%", f"{rate['b'] / rate['a']:.1f}x"],
        [f"(c) orm-cache embed (--batch-tokens {budget})", len(texts), rate["c"], tps["c"],
         f"{100 * (1 - tok_c / pad_c):.1f}%", f"{rate['c'] / rate['a']:.1f}x"],
    ]
    headers = ["method", "texts", "tokens/s (non-padding)", "texts/s", "padding waste", "vs (a)"]
    lengths = [len(x) for x in enc.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    body = [f"### Stage 1 throughput: {args.model} ({enc.identity['dtype']}, {enc.device})", "",
            f"Texts: {source}; {len(texts):,} distinct texts for (b) and (c), the first {len(loop_texts):,} of them "
            f"for (a); tokens per text: median {int(np.median(lengths))}, p90 {int(np.percentile(lengths, 90))}, "
            f"max {max(lengths)} (max_length {args.max_length}). Medians of {args.repeats} runs after a warm-up run.",
            "", table(headers, rows), "",
            f"Ratios: c/a = {rate['c'] / rate['a']:.1f}x, c/b = {rate['c'] / rate['b']:.2f}x (non-padding tokens/s)."]
    if ceiling:
        achieved = rate["c"] * flop_per_token / 1e12
        body.append(f"Achieved by (c): {achieved:.0f} TFLOP/s ({flop_per_token / 1e9:.2f} GFLOP per token) against a "
                    f"measured {enc.identity['dtype']} matmul ceiling of {ceiling:.0f} TFLOP/s: "
                    f"{100 * achieved / ceiling:.0f}% of the ceiling.")
    return "\n".join(body)


def levers(args) -> str:
    """(c)'s throughput under each lever: token budget, attention implementation, torch.compile."""
    from transformers import AutoModel

    from orm_cache.config import EncoderSpec, batch_tokens_for
    from orm_cache.encode.model import Encoder

    texts, source = load_texts(args.limit, args.seed, **({"tail": True} if args.long_tail else {}))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        model = build_model(args.model, Path(work), args.dtype)

        def fresh(attn=None):
            enc = Encoder(EncoderSpec(model=model, dtype=args.dtype, max_length=args.max_length), args.device)
            enc.load()
            if attn:
                enc.model = AutoModel.from_pretrained(enc.path, attn_implementation=attn,
                                                      dtype=enc.torch_dtype).to(enc.device).eval()
            return enc

        def rate(enc, budget):
            t, (tok, _) = median_time(lambda: orm_cache_embed(enc, texts, budget), args.repeats, warmup=1)
            return tok / t

        enc = fresh()
        for budget in (1024, 2048, 4096, 8192, 16384, 65536):
            rows.append([f"token budget {budget}", "sdpa", "no", rate(enc, budget)])
        budget = batch_tokens_for(enc.device, args.batch_tokens)
        rows.append([f"token budget {budget}", "eager", "no", rate(fresh("eager"), budget)])
        enc = fresh()
        enc.model = torch.compile(enc.model, dynamic=True)
        t0 = time.perf_counter()
        orm_cache_embed(enc, texts, budget)
        first = time.perf_counter() - t0
        rows.append([f"token budget {budget}", "sdpa", f"yes (first run {first:.0f}s incl. compiling)",
                     rate(enc, budget)])
    return "\n".join([f"### Stage 1 levers: {args.model} ({enc.device})", "",
                      f"`orm-cache embed` over {len(texts):,} texts ({source}); non-padding tokens/s, medians of "
                      f"{args.repeats} runs after a warm-up.", "",
                      table(["batching", "attention", "torch.compile", "tokens/s"], rows)])


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundled-minilm")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    p.add_argument("--limit", type=int, default=1000, help="texts for (b) and (c)")
    p.add_argument("--loop-limit", type=int, default=200, help="texts for (a), the slow loop")
    p.add_argument("--batch-size", type=int, default=32, help="(b)'s batch size")
    p.add_argument("--batch-tokens", type=int, default=None, help="(c)'s token budget [default: orm-cache's for the device]")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--levers", action="store_true",
                   help="instead: (c) under each token budget, sdpa vs eager attention, torch.compile")
    p.add_argument("--long-tail", action="store_true", help="cut the texts to a long-tailed length distribution")
    p.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    out = levers(args) if args.levers else run(args)
    import torch

    where = torch.cuda.get_device_name(0).replace("NVIDIA ", "") if torch.cuda.is_available() else "CPU"
    dtype = args.dtype if args.dtype != "auto" else ("float16" if where != "CPU" else "float32")
    tail = ", long-tailed lengths" if args.long_tail else ""
    publish(f"embed_{'levers' if args.levers else 'throughput'}:{args.model} ({dtype}, {where}{tail})", out, args.write)
    return out


if __name__ == "__main__":
    main()
