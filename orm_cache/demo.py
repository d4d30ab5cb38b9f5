"""``orm-cache demo``: the whole pipeline, offline, on a CPU, in a few minutes.

make data -> embed train/validation/test (bundled all-MiniLM-L6-v2) -> fit-head -> eval -> verify
-> rank. Everything runs in this one process with one model load; a second run finds every
vector in the cache and embeds nothing.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import replace
from pathlib import Path

from .config import BUNDLED_MINILM, DataSpec, EncoderSpec, HeadConfig, RunSpec

SIZES = {"train": 400, "validation": 100, "test": 200}
CANDIDATES = 6
POOLING = ("mean", "last")  # mean first: the feature the demo trains on (about 6 points better)
DEMO_L2 = 0.1  # chosen on the validation split (see README); never on test


def run_demo(out_dir="cache/demo", cache_dir="cache", quiet=False, say=print) -> dict:
    from .data import load_split
    from .data.synthetic import write_dataset
    from .encode import embed_texts
    from .encode.model import Encoder
    from .evaluate import format_report
    from .evaluate.baselines import shorter_wins, tfidf_pairwise
    from .evaluate.verify import format_verify
    from .rescore import rank_file
    from .stage2 import evaluate_split, fit_head, verify_head

    t_start = time.perf_counter()
    out = Path(out_dir)
    data_dir = out / "data"
    say(f"[1/6] make data: synthetic arithmetic word problems, {CANDIDATES} candidate traces each -> {data_dir}")
    counts = write_dataset(data_dir, SIZES, seed=0, n_candidates=CANDIDATES)
    for split, c in counts.items():
        say(f"      {split:>10}: {c['problems']} problems, {c['traces']:,} traces ({c['correct']} correct), "
            f"{c['pairs']:,} pairs")
    pointwise = str(data_dir / "pointwise")

    say(f"[2/6] embed with the bundled all-MiniLM-L6-v2 (pooling {','.join(POOLING)}, CPU float32)")
    spec = EncoderSpec(model=BUNDLED_MINILM, pooling=POOLING)
    encoder = Encoder(spec, "cpu")
    run = RunSpec(cache_dir=str(cache_dir), device="cpu", quiet=quiet)
    splits = {}
    for split in SIZES:
        d = splits[split] = load_split(DataSpec(data=pointwise, split=split))
        r = embed_texts(d.texts, encoder, run, desc=f"embed {split}")
        rate = f", {r.texts_per_s:,.0f} texts/s, {r.tokens_per_s:,.0f} tokens/s" if r.embedded else ""
        say(f"      {split:>10}: {r.texts:,} texts, {r.cached:,} cached, {r.embedded:,} embedded{rate}")

    say("[3/6] fit-head on cached vectors (no model needed from here on)")
    train_spec = DataSpec(data=pointwise, split="train")
    heads = out / "heads"
    ref = fit_head(train_spec, spec, HeadConfig(feature="mean@-1"), cache_dir, heads / "reference-adamw.pt")
    say(f"      reference recipe (AdamW lr 2e-5, 800 steps, batch 8): validation accuracy "
        f"{100 * ref.eval_report['accuracy']:.1f}%  ({ref.head.meta['train']['seconds']:.2f}s)")
    best = fit_head(train_spec, spec, HeadConfig(solver="lbfgs", l2=DEMO_L2, feature="mean@-1"), cache_dir,
                    heads / "lbfgs.pt")
    say(f"      exact L-BFGS (l2 {DEMO_L2}):                       validation accuracy "
        f"{100 * best.eval_report['accuracy']:.1f}%  ({best.head.meta['train']['seconds']:.2f}s)")
    say("      (lr 2e-5 for 800 steps suits OPT-1.3b's large hidden states; MiniLM's small vectors barely move")
    say("       such a head, so the demo carries on with the L-BFGS head)")

    say("[4/6] eval on test (the reference card's metric table)")
    report = evaluate_split(best.path, replace(train_spec, split="test"), cache_dir)
    say(format_report(report))
    tfidf = tfidf_pairwise(splits["train"], splits["test"])
    say(f"      baselines on the same test pairs: TF-IDF + logistic regression {100 * tfidf:.1f}%, "
        f"shorter trace wins {100 * shorter_wins(splits['test']):.1f}%, chance 50.0%")

    say("[5/6] verify: cached scores == live end-to-end scores")
    v = verify_head(best.path, replace(train_spec, split="test"), cache_dir, sample=32, device="cpu")
    say(format_verify(v.report))

    say("[6/6] rank: best-of-N on the test problems")
    ranked = out / "ranked_test.jsonl"
    s = rank_file(best.path, data_dir / "pointwise" / "test.jsonl", ranked, "group", cache_dir=cache_dir,
                  device="cpu")
    b = s.extra["best_of_n"]
    say(f"      best-of-N accuracy {100 * b['accuracy']:.1f}% (random {100 * b['random']:.1f}%, oracle "
        f"{100 * b['oracle']:.1f}%) over {b['groups']} problems; {s.hits:,} texts from the cache, "
        f"{s.misses} embedded")

    q = shlex.quote
    m, c, p = BUNDLED_MINILM, q(str(cache_dir)), q(pointwise)
    say("\nartefacts:")
    say(f"  data         {data_dir}/pointwise/*.jsonl, {data_dir}/pairwise/*.jsonl")
    say(f"  vectors      {Path(cache_dir) / 'vectors' / encoder.fingerprint[:16]}/")
    say(f"  heads        {ref.path}, {best.path}")
    say(f"  ranking      {ranked}")
    say("\nrerun each stage by hand:")
    for cmd in (
        f"orm-cache make-data --out {q(str(data_dir))} --train {SIZES['train']} --validation {SIZES['validation']} "
        f"--test {SIZES['test']} --candidates {CANDIDATES}",
        *(f"orm-cache embed --data {p} --split {s_} --model {m} --pooling mean,last --cache-dir {c}" for s_ in SIZES),
        f"orm-cache fit-head --data {p} --model {m} --cache-dir {c} --solver lbfgs --l2 {DEMO_L2} "
        f"--feature mean@-1 --out {q(str(best.path))}",
        f"orm-cache eval --head {q(str(best.path))} --data {p} --split test --cache-dir {c}",
        f"orm-cache verify --head {q(str(best.path))} --data {p} --split test --cache-dir {c}",
        f"orm-cache rank --head {q(str(best.path))} --input {p}/test.jsonl --group-by group "
        f"--output {q(str(ranked))} --cache-dir {c}",
    ):
        say(f"  {cmd}")
    seconds = time.perf_counter() - t_start
    say(f"\ndemo finished in {seconds:.0f}s: test pairwise accuracy {100 * report['accuracy']:.1f}% "
        f"(TF-IDF baseline {100 * tfidf:.1f}%, chance 50%)")
    return {"report": report, "verify": v.report, "best_of_n": b, "tfidf": tfidf, "seconds": seconds,
            "reference_validation_accuracy": ref.eval_report["accuracy"]}
