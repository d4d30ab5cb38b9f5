"""The realistic benchmark: heads on frozen all-MiniLM-L6-v2 over real GSM8K model solutions.

Reads ../shared/data/gsm8k/model_solutions_dev.jsonl by path (skips cleanly where absent): 1,000
problems, each with its ground-truth solution and four model-written ones, labelled. Problems
(never traces) are split 60/20/20 into train/validation/test; pairs are built within problem.
Every choice (layer, pooling, objective, head, L2…) is made on validation by one sweep; test is
touched once per reported head.

Reports the sweep's leaderboard and time, each stored column's best linear head on validation,
then on test — all pairs, pairs between two model-written solutions only, best-of-N — the
selected configuration, the best plain linear head on mean@-1, the reference recipe and TF-IDF +
pairwise logistic regression; the selected head's full table by source; and re-scoring
throughput of cached traces (rows/s, median of 3).

    python benchmarks/gsm8k_eval.py --write
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import GSM8K, gsm8k_main, median_time, table, write_gsm8k_splits  # noqa: E402

POOLING, LAYERS = ("mean", "last", "response_mean"), (-1, -2, -4)
COLUMNS = [f"{p}@{l}" for l in LAYERS for p in POOLING]
# The full sweep, all selected on validation. The reference recipe (AdamW lr 2e-5, last@-1) is in it.
GRID = [
    {"solver": ["lbfgs"], "l2": [0.01, 0.1, 1.0, 10.0, 100.0],
     "feature": COLUMNS + ["mean@-4+mean@-1", "response_mean@-4+response_mean@-1"]},
    {"solver": ["lbfgs"], "objective": ["pointwise"], "l2": [0.1, 1.0, 10.0],
     "feature": ["mean@-1", "mean@-4", "response_mean@-4+response_mean@-1"]},
    {"solver": ["adamw"], "head": ["mlp"], "hidden": [256], "lr": [3e-4, 1e-3], "steps": [1500], "batch_size": [32],
     "weight_decay": [0.01], "feature": ["mean@-1", "mean@-4+mean@-1"]},
    {"solver": ["lbfgs"], "ensemble": [5], "l2": [1.0], "feature": ["mean@-1", "mean@-4+mean@-1"]},
    {"solver": ["adamw"], "feature": ["last@-1", "mean@-1"]},
]


def run(args) -> str:
    import time

    import numpy as np

    from orm_cache.config import BUNDLED_MINILM, DataSpec, EncoderSpec, HeadConfig, RunSpec
    from orm_cache.data import load_split
    from orm_cache.encode import embed_texts
    from orm_cache.encode.model import Encoder
    from orm_cache.evaluate import format_report
    from orm_cache.evaluate import metrics as M
    from orm_cache.evaluate.baselines import shorter_wins, tfidf_scorer
    from orm_cache.pipeline.rescore import score_file
    from orm_cache.pipeline.evaluate import evaluate_split
    from orm_cache.pipeline.fit import sweep_heads
    from orm_cache.store import find_store
    from orm_cache.pipeline.vectors import split_vectors

    work = Path(tempfile.mkdtemp(prefix="gsm8k-"))
    data_dir = write_gsm8k_splits(work / "data", seed=args.seed)
    spec = EncoderSpec(model=BUNDLED_MINILM, pooling=POOLING, layers=LAYERS)
    enc = Encoder(spec, "cpu")
    run_spec = RunSpec(cache_dir=args.cache_dir, device="cpu", quiet=True)
    splits, embed_lines = {}, []
    for s in ("train", "validation", "test"):
        d = splits[s] = load_split(DataSpec(data=str(data_dir), split=s, keep_columns=("source",)))
        r = embed_texts(d.items(), enc, run_spec)
        embed_lines.append([s, len({g for g in d.groups}), len(d.keys), int(d.labels.sum()), len(d.pairs), r.embedded])
    train_spec = DataSpec(data=str(data_dir), split="train")
    heads = work / "heads"

    t0 = time.perf_counter()
    sw = sweep_heads(train_spec, spec, HeadConfig(feature="mean@-1"), GRID, args.cache_dir, "validation",
                     out=heads / "selected.pt")
    sweep_seconds = time.perf_counter() - t0
    rows = sw.rows  # best first (validation accuracy, ties: loss)

    def plain_linear(c: HeadConfig) -> bool:
        return c.head == "linear" and c.ensemble == 1 and c.objective == "pairwise"

    picks = {
        "selected configuration of the full sweep": rows[0],
        "best plain linear head on mean@-1 (lbfgs, l2 chosen on validation)":
            next(r for r in rows if r.config.feature == "mean@-1" and plain_linear(r.config) and r.config.solver == "lbfgs"),
        "reference recipe (AdamW lr 2e-5, 800 steps, batch 8, last@-1)":
            next(r for r in rows if r.config == HeadConfig(feature="last@-1").effective()),
    }
    test = splits["test"]
    vs = find_store(args.cache_dir, spec, "mean@-1")
    src = test.trace_meta["source"]
    model_only = np.array([src[m["chosen_row"]] != "ground_truth" and src[m["rejected_row"]] != "ground_truth"
                           for m in test.pairs.meta])

    def line(name, margins, row_scores):
        right = margins > 0
        b = M.best_of_n(row_scores, test.labels, test.groups)
        return [name, f"{100 * right.mean():.1f}%", f"{100 * right[model_only].mean():.1f}%", f"{100 * b['accuracy']:.1f}%"]

    table_rows = []
    for name, row in picks.items():
        sv = split_vectors(test, vs, row.config.feature)
        s = row.result.head.score(sv.X)
        table_rows.append(line(f"{name}: {row.config.feature}, {row.config.describe()}, {row.config.objective}, "
                               f"{row.config.solver}" + (f" l2={row.config.l2:g}" if row.config.solver == "lbfgs" else ""),
                               s[sv.ci] - s[sv.ri], s[sv.rows(test.keys)]))
    tfidf = tfidf_scorer(splits["train"])
    tk = list(test.texts)
    ts = dict(zip(tk, tfidf(test.texts[k] for k in tk)))
    tm = np.array([ts[c] - ts[r] for c, r in zip(test.pairs.chosen, test.pairs.rejected)])
    table_rows.append(line("TF-IDF (1-2 grams) + pairwise logistic regression", tm, np.array([ts[k] for k in test.keys])))
    b = M.best_of_n(np.zeros(len(test.keys)), test.labels, test.groups)
    table_rows.append(["chance", "50.0%", "50.0%", f"{100 * b['random']:.1f}% (oracle {100 * b['oracle']:.1f}%)"])
    rep = evaluate_split(sw.path, replace(train_spec, split="test"), args.cache_dir, by=["source"])

    leaderboard = [[i + 1, r.config.feature, r.config.describe(), r.config.objective, r.config.solver,
                    "" if r.config.solver != "lbfgs" else f"{r.config.l2:g}",
                    "" if r.config.solver != "adamw" else f"{r.config.lr:g}",
                    f"{100 * r.select_accuracy:.1f}%", f"{r.select_loss:.4f}"] for i, r in enumerate(rows[:25])]
    by_feature = {}
    for r in rows:  # each feature's best plain linear head on validation: which layer / pooling carries the signal
        if plain_linear(r.config) and r.config.solver == "lbfgs":
            by_feature.setdefault(r.config.feature, r)
    feat_rows = [[f, f"{100 * r.select_accuracy:.1f}%", f"{r.config.l2:g}"] for f, r in by_feature.items()]

    # re-scoring throughput: every test trace repeated to --rescore-rows rows, all cache hits
    big = work / "rescore_input.jsonl"
    test_rows = [json.loads(line) for line in open(data_dir / "test.jsonl")]
    with open(big, "w") as fh:
        for i in range(args.rescore_rows):
            fh.write(json.dumps(test_rows[i % len(test_rows)]) + "\n")
    t_score, summ = median_time(lambda: score_file(sw.path, big, work / "scored.parquet", args.cache_dir), 3)

    n_mm = int(model_only.sum())
    lines = [
        "### GSM8K model solutions, frozen all-MiniLM-L6-v2 (CPU float32)", "",
        "Problems split 60/20/20 by problem (seed 0); candidates = ground truth + 4 model solutions; pairs within "
        "problem (8 negatives per positive for train, 4 otherwise, i.e. all of them here). Stored columns: "
        f"{', '.join(COLUMNS)} (one forward pass).", "",
        table(["split", "problems", "traces", "correct", "pairs", "embedded this run"], embed_lines), "",
        f"The sweep: {len(rows)} configurations (layers x poolings x combined features x objectives x heads x "
        f"ensembles, and the reference recipe), trained on train and ranked on validation only, in "
        f"{sweep_seconds:.1f}s on this machine. Top 25:", "",
        table(["rank", "feature", "head", "objective", "solver", "l2", "lr", "validation acc", "validation loss"],
              leaderboard), "",
        "Each stored column's best plain linear head (lbfgs, l2 on validation): where the signal is", "",
        table(["feature", "validation acc", "l2"], feat_rows), "",
        f"Test, touched once per head ({len(test.pairs):,} pairs; {n_mm:,} of them between two model-written "
        f"solutions; best-of-N over {len(set(test.groups))} problems, ties fractional):", "",
        table(["head (selected on validation)", "all pairs", "model vs model pairs", "best-of-N"], table_rows), "",
        "The selected head's full table on test, with `--by source`:", "",
        "```", format_report(rep, max_groups=20), "```", "",
        f"Shorter trace wins: {100 * shorter_wins(test):.1f}% of all test pairs.", "",
        f"Re-scoring cached traces (`orm-cache score`, {args.rescore_rows:,} rows .jsonl -> .parquet, all cache hits, "
        f"no model loaded: {not summ.model_loaded}): {args.rescore_rows / t_score:,.0f} rows/s (median of 3, "
        f"{t_score:.2f}s).",
    ]
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default="cache", help="vector store (re-runs embed nothing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rescore-rows", type=int, default=100_000)
    p.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv=None):
    return gsm8k_main("gsm8k", run, parse(argv), GSM8K)


if __name__ == "__main__":
    main()
