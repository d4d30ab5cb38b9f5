"""The reference model card's metric table, from a head and a split's cached vectors."""

from __future__ import annotations

import numpy as np

from . import metrics as M


def margins_of(scores: np.ndarray, ci: np.ndarray, ri: np.ndarray) -> np.ndarray:
    return scores[ci] - scores[ri]


def evaluate(head, sv, bootstrap: int = 1000, ci_level: float = 0.9, seed: int = 0,
             length_edges=(128, 256), temperature: float | None = None, by=(), answers=None,
             vote_temperature: float | None = None) -> dict:
    """Every metric of the card for one split. ``temperature`` (fitted elsewhere, e.g. on
    validation) is used for calibration; without one, calibration is reported for T = 1
    (uncalibrated), never fitted on the evaluated split behind the caller's back. ``by``: metadata
    columns to break the headline down by (``out["by"][column]``, see :mod:`.by`); a pointwise
    split must have been loaded with them in ``DataSpec.keep_columns``. ``answers``: each
    labelled trace's final answer (None: none), for answer-aware best-of-N (:mod:`.vote`), with
    weights exp(score / T) (T = ``vote_temperature``, else 1)."""
    from .by import by_column, check_columns

    by = list(dict.fromkeys([by] if isinstance(by, str) else by or ()))
    check_columns(sv.data, by)
    stepped = getattr(sv, "step_aggregate", None) is not None
    if head.members > 1 and not stepped:
        member = head.member_scores(sv.X)  # (U, K)
    # (U,): the head's score, as every other door computes it (or its step prefixes' aggregated)
    scores = sv.trace_scores(head) if stepped else head.score(sv.X)
    margins = margins_of(scores, sv.ci, sv.ri)  # (N,)
    swapped = margins_of(scores, sv.ri, sv.ci)  # the same pairs with chosen and rejected exchanged
    data = sv.data
    groups = data.pairs.group
    lengths = np.maximum(sv.n_tokens[sv.ci], sv.n_tokens[sv.ri])
    T = 1.0 if temperature is None else temperature
    out = {
        "split": data.split, "source": data.source, "pairs": int(len(margins)), "traces": len(sv.keys),
        "feature": sv.feature,
        "accuracy": M.pairwise_accuracy(margins),
        "ci": M.bootstrap_ci(margins > 0, groups, bootstrap, ci_level, seed),
        "margin": M.margin_stats(margins),
        "length_buckets": M.length_buckets(margins, lengths, length_edges),
        "length_bucket_rule": "bucket of the longer trace of each pair (tokens, after truncation)",
        "antisymmetry": M.antisymmetry(margins, swapped),
        "near_ties": M.near_ties(margins),
        "margin_histogram": dict(zip(("counts", "edges"), (x.tolist() for x in np.histogram(margins, 30)))),
        "calibration": {**M.calibration(margins, T), "fitted_on": None if temperature is None else "given"},
    }
    if stepped:
        out["step_aggregate"] = sv.step_aggregate[0]
    if head.members > 1 and not stepped:
        out["ensemble"] = M.ensemble_disagreement(member[sv.ci] - member[sv.ri], margins)
    out["head_kind"] = head.describe()
    row_scores = None
    if data.labels is not None:
        row_scores = scores[sv.rows(data.keys)]
        out["pointwise"] = M.pointwise(row_scores, data.labels)
    credits = idx = None
    if row_scores is not None and data.groups is not None:
        from . import vote

        idx = M.group_indices(data.groups)  # every group picked once, for best-of-N, its answers and --by
        credits = vote.group_credits(row_scores, data.labels, answers, idx, vote_temperature,
                                     vote.AGGREGATES if answers is not None else ("best",))
        out["best_of_n"] = vote.best_summary(credits, idx)
        out["best_of_n_curve"] = M.best_of_n_curve(row_scores, data.labels, data.groups)
        if answers is not None:
            out["best_of_n_answers"] = vote.summarize(credits, idx, answers, vote_temperature)
    if by:
        out["by"] = {c: by_column(data, c, margins, row_scores, bootstrap, ci_level, seed, credits, idx) for c in by}
    return out


def _pct(x) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def format_report(r: dict, max_groups: int = 50) -> str:
    """A readable table of :func:`evaluate`'s result; a ``by`` column shows its ``max_groups``
    largest values (the JSON has all)."""
    from .by import format_by

    c, m, a = r["ci"], r["margin"], r["antisymmetry"]
    lines = [
        f"split {r['split']}  ({r['pairs']:,} pairs, {r['traces']:,} traces, feature {r['feature']}"
        + (f", scored by the {r['step_aggregate']} of their step prefixes' scores" if r.get("step_aggregate") else "")
        + (f", head {r['head_kind']})" if r.get("head_kind", "linear") != "linear" else ")"),
        f"  pairwise accuracy   {_pct(r['accuracy'])}   {int(c['level'] * 100)}% CI [{_pct(c['low']).strip()}, "
        f"{_pct(c['high']).strip()}]  (bootstrap, {c['resamples']} resamples by {c['unit']})",
        f"  margin              mean {m['mean']:.4f}  median {m['median']:.4f}  std {m['std']:.4f}",
        f"  incorrect or tied   {_pct(m['incorrect_or_tied'])}   (ties {_pct(m['tie_rate']).strip()})",
        "  by length (longer trace of the pair, tokens):",
    ]
    for b in r["length_buckets"]:
        lines.append(f"    {b['bucket']:>9}  {_pct(b['accuracy'])}  n={b['count']:,}")
    lines.append(f"  anti-symmetry       swapped accuracy {_pct(a['swapped_accuracy']).strip()}, mean swapped margin "
                 f"{a['mean_swapped_margin']:.4f}, corr {a['correlation']:.4f}")
    lines.append("  near-ties (|Δ| < t):")
    for t in r["near_ties"]:
        lines.append(f"    {t['threshold']:>9}  {_pct(t['accuracy'])}  n={t['count']:,}")
    cal = r["calibration"]
    fitted = f"fitted on {cal['fitted_on']}" if cal["fitted_on"] else "uncalibrated"
    lines.append(f"  calibration         T={cal['temperature']:.4g} ({fitted}), "
                 f"ECE {cal['ece']:.4f}" + (f", NLL {cal['nll']:.4f}" if cal["nll"] is not None else ""))
    if cal.get("note"):
        lines.append(f"    ({cal['note']})")
    if "pointwise" in r and r["pointwise"]["auroc"] is not None:
        lines.append(f"  pointwise           AUROC {r['pointwise']['auroc']:.4f}, Spearman {r['pointwise']['spearman']:.4f}")
    if "best_of_n" in r:
        b = r["best_of_n"]
        lines.append(f"  best-of-N           {_pct(b['accuracy']).strip()} over {b['groups']:,} groups "
                     f"(~{b['mean_candidates']:.1f} candidates; random {_pct(b['random']).strip()}, "
                     f"oracle {_pct(b['oracle']).strip()}; ties: fractional credit)")
    if "best_of_n_answers" in r:
        b = r["best_of_n_answers"]
        lines.append("  best-of-N by answer " + ", ".join(f"{k} {_pct(b[k]).strip()}" for k in
                                                         ("best", "vote", "weighted-vote", "random", "oracle")))
        a = r.get("answers") or {}
        lines.append(f"    (vote: majority of final answers, no scores; weighted-vote: {b['weights']}; "
                     f"~{b['mean_distinct_answers']:.1f} distinct answers per group"
                     + (f"; {a['without_answer']:,} of {a['candidates']:,} candidates without an answer, each its own"
                        if a else "") + "; ties: fractional credit)")
    if "ensemble" in r:
        e = r["ensemble"]
        auroc = "-" if e["error_auroc"] is None else f"{e['error_auroc']:.3f}"
        lines.append(f"  ensemble            {e['members']} members (mean member accuracy "
                     f"{_pct(float(np.mean(e['member_accuracy']))).strip()}); they split on "
                     f"{_pct(e['split_pairs']).strip()} of pairs: accuracy {_pct(e['accuracy_unanimous']).strip()} "
                     f"where unanimous, {_pct(e['accuracy_split']).strip()} where split; disagreement flags "
                     f"errors with AUROC {auroc}")
    for b in r.get("by", {}).values():
        lines.extend(format_by(b, max_groups))
    return "\n".join(lines)
