"""Best-of-N by final answer, and several frozen encoders in one head, on real GSM8K model solutions.

Reads ../shared/data/gsm8k/model_solutions_dev.jsonl by path (skips cleanly where absent), split by
problem as benchmarks/gsm8k_eval.py does (60/20/20, seed 0; ``--problems N`` keeps the first N
problems of each split in proportion, for a CPU). For each encoder set — bundled-minilm
(all-MiniLM-L6-v2), bundled-smollm2 (SmolLM2-135M-Instruct) and both in one head — a sweep of
linear heads (L-BFGS, L2 x feature) is selected on validation only; test is touched once per
selected head:

* pairwise accuracy on all test pairs and on pairs of two model-written solutions;
* best-of-N over the model-written solutions only (ground truth removed): the top-scored
  candidate, the majority vote on final answers (``A: <answer>``), the score-weighted vote
  (exp(score / T), T = 1 and T = the head's calibration on validation), random and oracle;
* the frozen LM's likelihood (``embed --likelihood``: mean, min, sum of the response tokens'
  log-probabilities) as a scorer alone, as a head's only feature, and beside hidden states;
* stage 1 per encoder, and with and without the likelihood (texts/s, tokens/s, same texts, same run).

    python benchmarks/gsm8k_encoders.py --problems 400 --write
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import GSM8K, gsm8k_args, gsm8k_main, table, write_gsm8k_splits  # noqa: E402

PATTERN = r"A:\s*(.+)"
S = "bundled-smollm2"
ENCODERS = {  # model -> (poolings, layers) embedded, features swept, likelihood stored (a causal LM)
    "bundled-minilm": (("mean", "last", "response_mean"), (-1, -2, -4),
                       ["mean@-1", "mean@-4", "last@-1", "response_mean@-4"], False),
    S: (("mean", "last", "response_mean"), (-1, -8, -16),
        ["mean@-16", "mean@-8", "last@-1", "response_mean@-16"], True),
}
BOTH = ["mean@-4+" + S + ":mean@-16", "mean@-1+" + S + ":mean@-16", "mean@-4+" + S + ":mean@-8",
        "response_mean@-4+" + S + ":response_mean@-16"]
L2 = [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]


def subset(data_dir: Path, out: Path, problems: int | None) -> Path:
    """The first ``problems`` problems (60/20/20 of them per split), or every one."""
    if not problems:
        return data_dir
    out.mkdir(parents=True, exist_ok=True)
    for split, frac in (("train", 0.6), ("validation", 0.2), ("test", 0.2)):
        rows = [json.loads(line) for line in open(data_dir / f"{split}.jsonl")]
        keep = set(sorted({r["group"] for r in rows})[:int(frac * problems)])
        with open(out / f"{split}.jsonl", "w") as f:
            for r in rows:
                if r["group"] in keep:
                    f.write(json.dumps(r) + "\n")
    return out


def run(args) -> str:
    import numpy as np

    from orm_cache.config import DataSpec, EncoderSpec, HeadConfig, RunSpec
    from orm_cache.data import load_split
    from orm_cache.encode import embed_texts
    from orm_cache.encode.model import Encoder
    from orm_cache.evaluate import vote as V
    from orm_cache.head import Head
    from orm_cache.pipeline.bind import store_for_head
    from orm_cache.pipeline.fit import sweep_heads
    from orm_cache.pipeline.vectors import split_vectors
    from orm_cache.store import find_store

    work = Path(tempfile.mkdtemp(prefix="gsm8k-enc-"))
    data_dir = subset(write_gsm8k_splits(work / "all", seed=args.seed), work / "data", args.problems)
    splits = {s: load_split(DataSpec(data=str(data_dir), split=s, keep_columns=("source",)))
              for s in ("train", "validation", "test")}
    stage1 = []
    sample = splits["test"].items()[:args.stage1_sample]  # timed into an empty cache, same run, same texts
    for model, (pooling, layers, _, likelihood) in ENCODERS.items():
        enc = Encoder(EncoderSpec(model=model, pooling=pooling, layers=layers, likelihood=likelihood), "cpu")
        for s, d in splits.items():
            embed_texts(d.items(), enc, RunSpec(cache_dir=args.cache_dir, device="cpu", quiet=True))
        for lk in dict.fromkeys((False, likelihood)) if sample else ():  # the LM head's cost, same texts, same run
            e = Encoder(EncoderSpec(model=model, pooling=pooling, layers=layers, likelihood=lk), "cpu")
            r = embed_texts(sample, e, RunSpec(cache_dir=str(work / f"timing-{lk}"), device="cpu", quiet=True))
            stage1.append([model, f"{len(pooling)} x {len(layers)}" + (" + logprob" if lk else ""), r.embedded,
                           f"{r.embedded / r.encode_seconds:.1f}", f"{r.tokens / r.encode_seconds:,.0f}",
                           f"{r.load_seconds:.1f}s"])
    train_spec = DataSpec(data=str(data_dir), split="train")
    test = splits["test"]
    src = test.trace_meta["source"]
    model_pair = np.array([src[m["chosen_row"]] != "ground_truth" and src[m["rejected_row"]] != "ground_truth"
                           for m in test.pairs.meta])
    model_rows = np.array([s != "ground_truth" for s in src])
    answers = [V.AnswerSource(pattern=PATTERN).from_text(V.response_part(test.texts[k], test.response_starts.get(k)))
               for k in test.keys]
    sets = {"bundled-minilm": ("bundled-minilm", ENCODERS["bundled-minilm"][2]),
            "bundled-smollm2": (S, ENCODERS[S][2]),
            "bundled-smollm2 logprob alone (a head on mean, min, sum)": (S, ["logprob"]),
            "bundled-smollm2 hidden states + logprob": (S, [f + "+logprob" for f in ENCODERS[S][2]]),
            "both (bundled-minilm + bundled-smollm2)": ("bundled-minilm", BOTH)}
    rows, bon_rows = [], []
    for name, (model, features) in sets.items():
        t0 = time.perf_counter()
        sw = sweep_heads(train_spec, EncoderSpec(model=model), HeadConfig(solver="lbfgs"),
                         [{"solver": ["lbfgs"], "l2": L2, "feature": features}], args.cache_dir, "validation",
                         out=work / f"{model}-{len(rows)}.pt", quiet=True)
        seconds = time.perf_counter() - t0
        head = Head.load(sw.path)
        sv = split_vectors(test, store_for_head(head, args.cache_dir), head.feature)
        s = head.score(sv.X)
        margins = s[sv.ci] - s[sv.ri]
        row_scores = s[sv.rows(test.keys)]
        rows.append([name, head.feature, f"{head.meta['config']['l2']:g}", f"{100 * sw.rows[0].select_accuracy:.1f}%",
                     f"{100 * (margins > 0).mean():.1f}%", f"{100 * (margins[model_pair] > 0).mean():.1f}%",
                     f"{seconds:.1f}s ({len(sw.rows)} heads)"])
        idx = np.flatnonzero(model_rows)
        groups = [test.groups[i] for i in idx]
        labels, sc, ans = test.labels[idx], row_scores[idx], [answers[i] for i in idx]
        T = head.temperature
        b1 = V.best_of_n_answers(sc, labels, groups, ans, None)
        bT = V.best_of_n_answers(sc, labels, groups, ans, T)
        bon_rows.append([name, f"{100 * b1['best']:.1f}%", f"{100 * b1['vote']:.1f}%", f"{100 * b1['weighted-vote']:.1f}%",
                         f"{100 * bT['weighted-vote']:.1f}% (T={T:.3g})" if T else "-",
                         f"{100 * b1['random']:.1f}%", f"{100 * b1['oracle']:.1f}%"])
    # the card's data check: the likelihood itself as a scorer (no head), on test
    lp = split_vectors(test, find_store(args.cache_dir, EncoderSpec(model=S), "logprob"), "logprob")
    L = lp.X.take(np.arange(len(lp.X)), dtype=np.float64)  # (U, 3)
    lp_rows = []
    for j, stat in enumerate(("mean", "min", "sum")):
        m = L[lp.ci, j] - L[lp.ri, j]
        lp_rows.append([f"{stat} logprob of the response", f"{100 * (m > 0).mean():.1f}%",
                        f"{100 * (m[model_pair] > 0).mean():.1f}%"])
    n_groups = len(set(test.groups))
    no_answer = sum(a is None for a, m in zip(answers, model_rows) if m)
    lines = [
        "### Several frozen encoders in one head, and best-of-N by final answer (GSM8K model solutions, CPU float32)",
        "",
        f"{args.problems or 'All'} problems split 60/20/20 by problem (seed {args.seed}); candidates = ground truth + "
        f"4 model solutions; pairs within problem. Each encoder set: {len(L2)} L2 values x its features (L-BFGS), "
        "selected on validation; test touched once per selected head. `S` = bundled-smollm2.", "",
        table(["encoders", "selected feature", "l2", "validation acc", "test: all pairs", "test: model vs model",
               "sweep"], rows), "",
        "The frozen LM's likelihood as a scorer by itself (no head; `orm-cache likelihood` gives the card's "
        "table for a split), pairwise accuracy on test:", "",
        table(["scorer", "all pairs", "model vs model"], lp_rows), "",
        f"Best-of-N on test over the **model-written solutions only** ({n_groups} problems, ~4 candidates each; "
        f"answers by `--answer-pattern '{PATTERN}'`, {no_answer} of {int(model_rows.sum())} candidates without one; "
        "ties fractional):", "",
        table(["encoders", "best (top score)", "majority vote", "weighted vote, T=1", "weighted vote, calibrated T",
               "random", "oracle"], bon_rows), "",
        f"Stage 1 on this machine (`embed` of the first {args.stage1_sample} test texts into an empty cache, float32, "
        "every pooling x layer above from one pass; `+ logprob`: `--likelihood` too, the LM head at the response's "
        "positions; the model load apart):", "",
        table(["encoder", "poolings x layers", "texts", "texts/s", "tokens/s", "model load"], stage1),
    ]
    return "\n".join(lines)


def parse(argv=None):
    return gsm8k_args(__doc__, argv, 100, "test texts timed through each encoder")


def main(argv=None):
    return gsm8k_main("gsm8k-encoders", run, parse(argv), GSM8K)


if __name__ == "__main__":
    main()
