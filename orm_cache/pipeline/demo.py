"""``orm-cache demo``: the whole pipeline, offline, on a CPU, in a few minutes.

make data -> embed train/validation/test (bundled all-MiniLM-L6-v2; three poolings at two layers
in one pass) -> fit-head (the reference recipe) and a sweep over layers x poolings x heads,
selected on validation -> eval of the selected head on test -> verify -> rank. Everything runs in
this one process with one model load; a second run finds every vector in the cache and embeds
nothing.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import replace
from pathlib import Path

from ..models import BUNDLED_MINILM
from ..data.spec import DataSpec
from ..encode.spec import EncoderSpec, RunSpec
from ..head.config import HeadConfig

SIZES = {"train": 400, "validation": 100, "test": 200}
LEADERBOARD = 12  # rows of the sweep printed
CANDIDATES = 6
POOLING = ("mean", "last", "response_mean")  # mean first: the reference head's feature
LAYERS = (-1, -3)
# What the sweep tries on the cache, all selected on validation (never on test): exact linear heads
# along an L2 path on every pooling at both layers and on two layers concatenated; an MLP and a
# 3-member bootstrap ensemble; a pointwise (classification) head.
SWEEP_GRID = [
    {"solver": ["lbfgs"], "l2": [0.1, 1.0, 10.0],
     "feature": ["mean@-1", "last@-1", "response_mean@-1", "mean@-3", "response_mean@-3", "mean@-3+mean@-1"]},
    {"solver": ["adamw"], "head": ["mlp"], "hidden": [64], "lr": [1e-3], "steps": [600], "batch_size": [32],
     "feature": ["mean@-1", "mean@-3+mean@-1"]},
    {"solver": ["lbfgs"], "l2": [1.0], "ensemble": [3], "feature": ["mean@-1"]},
    {"solver": ["lbfgs"], "objective": ["pointwise"], "l2": [0.1, 1.0], "feature": ["mean@-1", "mean@-3+mean@-1"]},
]


def run_demo(out_dir="cache/demo", cache_dir="cache", quiet=False, say=print) -> dict:
    from ..data import load_split
    from ..data.synthetic import write_dataset
    from ..encode import embed_texts
    from ..encode.model import Encoder
    from ..evaluate import format_report
    from ..evaluate.baselines import shorter_wins, tfidf_pairwise
    from ..evaluate.verify import format_verify
    from .rank import rank_file
    from ..outputs import write_json
    from .evaluate import evaluate_split, verify_head
    from .fit import fit_head, sweep_heads

    t_start = time.perf_counter()
    out = Path(out_dir)
    data_dir = out / "data"
    say(f"[1/6] make data: synthetic arithmetic word problems, {CANDIDATES} candidate traces each -> {data_dir}")
    counts = write_dataset(data_dir, SIZES, seed=0, n_candidates=CANDIDATES)
    for split, c in counts.items():
        say(f"      {split:>10}: {c['problems']} problems, {c['traces']:,} traces ({c['correct']} correct), "
            f"{c['pairs']:,} pairs")
    pointwise = str(data_dir / "pointwise")

    say(f"[2/6] embed with the bundled all-MiniLM-L6-v2 (pooling {','.join(POOLING)} at layers "
        f"{','.join(map(str, LAYERS))}, one pass, CPU float32)")
    spec = EncoderSpec(model=BUNDLED_MINILM, pooling=POOLING, layers=LAYERS)
    encoder = Encoder(spec, "cpu")
    run = RunSpec(cache_dir=str(cache_dir), device="cpu", quiet=quiet)
    splits = {}
    for split in SIZES:
        d = splits[split] = load_split(DataSpec(data=pointwise, split=split))
        r = embed_texts(d.items(), encoder, run, desc=f"embed {split}")
        rate = f", {r.texts_per_s:,.0f} texts/s, {r.tokens_per_s:,.0f} tokens/s" if r.embedded else ""
        say(f"      {split:>10}: {r.texts:,} texts, {r.cached:,} cached, {r.embedded:,} embedded{rate}")

    say("[3/6] fit-head and sweep on cached vectors (no model needed from here on)")
    train_spec = DataSpec(data=pointwise, split="train")
    heads = out / "heads"
    ref = fit_head(train_spec, spec, HeadConfig(feature="mean@-1"), cache_dir, heads / "reference-adamw.pt")
    say(f"      reference recipe (AdamW lr 2e-5, 800 steps, batch 8, mean@-1): validation accuracy "
        f"{100 * ref.eval_report['accuracy']:.1f}%  ({ref.head.meta['train']['seconds']:.2f}s)")
    say("      (lr 2e-5 for 800 steps suits OPT-1.3b's large hidden states; MiniLM's small vectors barely move")
    say("       such a head, so the demo sweeps instead)")
    grid_file = out / "sweep_grid.json"
    write_json(grid_file, SWEEP_GRID)
    sw = sweep_heads(train_spec, spec, HeadConfig(feature="mean@-1"), SWEEP_GRID, cache_dir,
                     select_on="validation", out=heads / "sweep-best.pt", quiet=quiet)
    rows = sw.rows
    say(f"      sweep: {len(rows)} configurations (layers x poolings x heads) in {sw.seconds:.1f}s, "
        "ranked on validation:")
    say(f"      {'rank':>4}  {'feature':<18} {'head':<16} {'objective':<9} {'solver':<6} {'l2':>5}  "
        f"{'val acc':>7}  {'val loss':>8}")
    for rank, r in enumerate(sw.rows[:LEADERBOARD], 1):
        c = r.config
        say(f"      {rank:>4}  {c.feature:<18} {c.describe():<16} {c.objective:<9} {c.solver:<6} "
            f"{c.l2 if c.solver == 'lbfgs' else '':>5}  {100 * r.select_accuracy:6.1f}%  {r.select_loss:8.4f}")
    if len(rows) > LEADERBOARD:
        say(f"      … {len(rows) - LEADERBOARD} more rows")
    best = sw

    say("[4/6] eval the selected head on test (the reference card's metric table; test was not used to select)")
    report = evaluate_split(best.path, replace(train_spec, split="test"), cache_dir, by=["fault"])
    say(format_report(report, max_groups=10))
    tfidf = tfidf_pairwise(splits["train"], splits["test"])
    ref_test = evaluate_split(ref.path, replace(train_spec, split="test"), cache_dir, bootstrap=200)
    say(f"      on the same test pairs: selected head {100 * report['accuracy']:.1f}%, reference recipe "
        f"{100 * ref_test['accuracy']:.1f}%, TF-IDF + logistic regression {100 * tfidf:.1f}%, "
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
    say(f"  heads        {ref.path}, {best.path} (selected: {best.best.meta['config']['feature']}, "
        f"{best.best.describe()})")
    say(f"  ranking      {ranked}")
    say("\nrerun each stage by hand:")
    for cmd in (
        f"orm-cache make-data --out {q(str(data_dir))} --train {SIZES['train']} --validation {SIZES['validation']} "
        f"--test {SIZES['test']} --candidates {CANDIDATES}",
        *(f"orm-cache embed --data {p} --split {s_} --model {m} --pooling {','.join(POOLING)} "
          f"--layers={','.join(map(str, LAYERS))} --cache-dir {c}" for s_ in SIZES),
        f"orm-cache sweep --data {p} --model {m} --pooling {','.join(POOLING)} --layers={','.join(map(str, LAYERS))} "
        f"--feature mean@-1 --cache-dir {c} --grid-file {q(str(grid_file))} --out {q(str(best.path))}",
        f"orm-cache eval --head {q(str(best.path))} --data {p} --split test --by fault --cache-dir {c}",
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

