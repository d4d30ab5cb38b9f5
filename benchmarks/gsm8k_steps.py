"""Step-level scores on real GSM8K model solutions (steps = lines), with a real decoder.

Reads ../shared/data/gsm8k/model_solutions_dev.jsonl by path (skips cleanly where absent), split
60/20/20 by problem (seed 0; ``--problems N`` keeps the first N problems, as
benchmarks/gsm8k_encoders.py does, so the two share a cache). The encoder is bundled-smollm2
(SmolLM2-135M-Instruct, float32 on the CPU). It measures:

* stage 1: ``embed`` of the first ``--stage1-sample`` test traces into an empty cache, whole traces
  only and with ``--steps`` (every line's prefix pooled from the trace's own pass), same run: time,
  rows, store size;
* heads (L-BFGS, L2 x feature, selected on validation whole traces, test touched once per selected
  head) trained on complete traces, and on every prefix labelled with its trace's outcome (Cobbe
  et al.'s outcome-supervised verifier), pointwise and pairwise within a problem: full-trace
  pairwise accuracy (all pairs, model vs model) and best-of-N over the model-written solutions;
* step-score aggregations (last, min, mean, product of σ) as each trace's score, per head.

    python benchmarks/gsm8k_steps.py --problems 400 --cache-dir C --write
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import GSM8K, gsm8k_args, gsm8k_main, table, write_gsm8k_splits  # noqa: E402
from gsm8k_encoders import subset  # noqa: E402

S = "bundled-smollm2"
POOLING, LAYERS = ("mean", "last", "response_mean"), (-1, -8, -16)
FEATURES = ["mean@-16", "mean@-8", "last@-1", "response_mean@-16"]
L2 = [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())


def run(args) -> str:
    import numpy as np

    from orm_cache.config import DataSpec, EncoderSpec, HeadConfig, RunSpec
    from orm_cache.data import load_split
    from orm_cache.encode import embed_texts
    from orm_cache.encode.model import Encoder
    from orm_cache.evaluate import metrics as M
    from orm_cache.head import Head
    from orm_cache.pipeline.bind import load_vectors, store_for_head
    from orm_cache.pipeline.fit import sweep_heads

    work = Path(tempfile.mkdtemp(prefix="gsm8k-steps-"))
    data_dir = subset(write_gsm8k_splits(work / "all", seed=args.seed), work / "data", args.problems)
    spec = EncoderSpec(model=S, pooling=POOLING, layers=LAYERS)
    splits = {s: load_split(DataSpec(data=str(data_dir), split=s, step_prefixes=True, keep_columns=("source",)))
              for s in ("train", "validation", "test")}
    enc = Encoder(spec, "cpu")
    fill = []
    for s, d in splits.items():  # whole traces and every line's prefix
        r = embed_texts(d.items(), enc, RunSpec(cache_dir=args.cache_dir, device="cpu", quiet=True))
        fill.append([s, len(d.texts), len(d.step_texts), r.embedded, r.prefixes, r.prefixes_alone,
                     f"{r.encode_seconds:.0f}s"])

    # stage 1: the same test traces into empty caches, whole traces only vs with --steps (same run)
    sample = splits["test"].items()[:args.stage1_sample]
    stage1 = []
    for name, items in (("whole traces", [it[:4] for it in sample]), ("--steps (every line's prefix)", sample)):
        cache = work / f"timing-{len(stage1)}"
        r = embed_texts(items, Encoder(spec, "cpu"), RunSpec(cache_dir=str(cache), device="cpu", quiet=True))
        rows = r.embedded + r.prefixes
        stage1.append([name, len(items), rows, r.prefixes_alone, f"{r.encode_seconds:.1f}s",
                       f"{r.embedded / r.encode_seconds:.2f}", f"{r.tokens / r.encode_seconds:,.0f}",
                       f"{dir_bytes(cache) / 2**20:.2f} MiB"])
    base_s = float(stage1[0][4][:-1])
    stage1[1].append(f"{float(stage1[1][4][:-1]) / base_s:.2f}x")
    stage1[0].append("1.00x")

    test = splits["test"]
    src = test.trace_meta["source"]
    model_pair = np.array([src[m["chosen_row"]] != "ground_truth" and src[m["rejected_row"]] != "ground_truth"
                           for m in test.pairs.meta])
    model_rows = np.flatnonzero([s != "ground_truth" for s in src])
    groups = [test.groups[i] for i in model_rows]
    labels = test.labels[model_rows]
    heads = {"complete traces (pairwise)": ("traces", "pairwise"),
             "all prefixes, outcome labels (pointwise, Cobbe)": ("prefixes", "pointwise"),
             "all prefixes, outcome labels (pairwise within problem)": ("prefixes", "pairwise")}
    rows, agg_rows = [], []
    for name, (train_on, objective) in heads.items():
        t0 = time.perf_counter()
        train = DataSpec(data=str(data_dir), split="train", train_on=train_on)
        sw = sweep_heads(train, EncoderSpec(model=S), HeadConfig(solver="lbfgs", objective=objective),
                         [{"l2": L2, "feature": FEATURES}], args.cache_dir, "validation",
                         out=work / f"head-{len(rows)}.pt", quiet=True)
        seconds = time.perf_counter() - t0
        head = Head.load(sw.path)
        vs = store_for_head(head, args.cache_dir)
        for how in (None, "last", "min", "mean", "product"):
            sv = load_vectors(DataSpec(data=str(data_dir), split="test", keep_columns=("source",)), vs, head.feature,
                              args.cache_dir, step_aggregate=how)
            s = sv.trace_scores(head)
            margins = s[sv.ci] - s[sv.ri]
            row_scores = s[sv.rows(test.keys)][model_rows]
            bon = M.best_of_n(row_scores, labels, groups)
            line = [f"{100 * (margins > 0).mean():.1f}%", f"{100 * (margins[model_pair] > 0).mean():.1f}%",
                    f"{100 * bon['accuracy']:.1f}%"]
            if how is None:
                rows.append([name, head.feature, f"{head.meta['config']['l2']:g}",
                             f"{100 * sw.rows[0].select_accuracy:.1f}%", *line, f"{seconds:.1f}s ({len(sw.rows)} heads)"])
                random_acc, oracle = bon["random"], bon["oracle"]
            else:
                agg_rows.append([name, how, *line])
    st = splits["train"]
    lines = [
        "### Step-level scores: prefixes from one forward pass, and heads trained on them (GSM8K, steps = lines)",
        "",
        f"{args.problems or 'All'} problems split 60/20/20 by problem (seed {args.seed}); candidates = ground truth + "
        f"4 model solutions; encoder `{S}` (float32, CPU), poolings {','.join(POOLING)} at layers "
        f"{','.join(map(str, LAYERS))}; a step is a line (`--step-pattern '\\n'`). Training split: "
        f"{len(st.texts):,} traces, {len(st.step_texts):,} distinct prefixes. Each head: {len(L2)} L2 values x "
        f"{len(FEATURES)} features (L-BFGS), selected on validation by whole-trace pairwise accuracy; test "
        "touched once per selected head.", "",
        "Stage 1, the first test traces into an empty cache, whole traces only vs `embed --steps` (same texts, same "
        "run; the prefixes cost no forward pass of their own, only rows in the store):", "",
        table(["embed", "traces", "rows stored", "prefixes embedded alone", "time", "traces/s", "tokens/s",
               "store size", "time vs whole"], stage1), "",
        "Heads, whole-trace scores on test:", "",
        table(["trained on", "selected feature", "l2", "validation acc", "test: all pairs", "test: model vs model",
               "best-of-N (model solutions)", "sweep"], rows), "",
        f"Best-of-N over the model-written solutions only ({len(set(groups))} problems, ~4 candidates; random "
        f"{100 * random_acc:.1f}%, oracle {100 * oracle:.1f}%). Each trace scored by its step prefixes' scores "
        "(`eval --step-aggregate`):", "",
        table(["head", "aggregate", "test: all pairs", "test: model vs model", "best-of-N (model solutions)"],
              agg_rows), "",
        "Filling the cache (all splits; texts already there from benchmarks/gsm8k_encoders.py are not embedded "
        "again, but a trace whose prefixes are missing is run once more):", "",
        table(["split", "traces", "prefixes", "forward passes", "prefixes pooled from them", "prefixes alone",
               "time"], fill),
    ]
    return "\n".join(lines)


def parse(argv=None):
    return gsm8k_args(__doc__, argv, 60, "test traces timed with and without --steps")


def main(argv=None):
    return gsm8k_main("gsm8k-steps", run, parse(argv), GSM8K)


if __name__ == "__main__":
    main()
