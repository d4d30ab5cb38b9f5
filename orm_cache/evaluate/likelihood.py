"""The reference card's data check: does the frozen LM's own likelihood of a response track its
label? Pure: arrays in, a table out (``orm-cache likelihood`` reads the arrays from the store)."""

from __future__ import annotations

import numpy as np

STATS = ("mean", "min", "sum")  # of the response tokens' log-probabilities, as the store holds them


def likelihood_table(values: np.ndarray, rows: np.ndarray, labels: np.ndarray, ci: np.ndarray,
                     ri: np.ndarray) -> dict:
    """``values`` (U, 3): each distinct text's mean, min and sum log-probability; ``rows`` (N,)
    and ``labels`` (N,): the labelled occurrences (a text's row of ``values`` and its 0/1 label;
    for pairwise data every chosen side is 1 and every rejected side 0); ``ci``/``ri`` (P,): the
    pairs. Per statistic: its mean over positive and negative occurrences, its Pearson and
    Spearman correlation with the label, and the pairwise accuracy of the statistic as a scorer
    (chosen strictly above rejected; ties counted apart)."""
    from scipy.stats import pearsonr, spearmanr

    values, labels = np.asarray(values, np.float64), np.asarray(labels, np.float64)
    out = {"occurrences": int(len(rows)), "positives": int(labels.sum()), "pairs": int(len(ci)), "stats": {}}
    both = 0 < labels.sum() < len(labels)
    for j, name in enumerate(STATS):
        v = values[rows, j]  # (N,)
        m = values[ci, j] - values[ri, j]  # (P,)
        varied = both and v.std() > 0
        out["stats"][name] = {
            "positive_mean": float(v[labels == 1].mean()) if labels.any() else None,
            "negative_mean": float(v[labels == 0].mean()) if (labels == 0).any() else None,
            "pearson": float(pearsonr(v, labels).statistic) if varied else None,
            "spearman": float(spearmanr(v, labels).statistic) if varied else None,
            "pairwise_accuracy": float((m > 0).mean()) if len(m) else None,
            "pairwise_ties": float((m == 0).mean()) if len(m) else None,
        }
    return out


def format_likelihood(r: dict) -> str:
    fmt = lambda x, pct=False: "      -" if x is None else (f"{100 * x:6.1f}%" if pct else f"{x:7.3f}")  # noqa: E731
    lines = [f"split {r['split']} of {r['source']}: {r['occurrences']:,} labelled responses ({r['positives']:,} "
             f"positive), {r['pairs']:,} pairs; log-probabilities of the response tokens under {r['model']}",
             f"  {'statistic':<14}{'positives':>10}{'negatives':>10}{'Pearson':>9}{'Spearman':>9}{'pairwise acc':>14}"
             f"{'ties':>8}"]
    for name, s in r["stats"].items():
        lines.append(f"  {name + ' logprob':<14}{fmt(s['positive_mean']):>10}{fmt(s['negative_mean']):>10}"
                     f"{fmt(s['pearson']):>9}{fmt(s['spearman']):>9}{fmt(s['pairwise_accuracy'], True):>14}"
                     f"{fmt(s['pairwise_ties'], True):>8}")
    lines.append("  (correlations with the 0/1 label over every labelled response; pairwise: the statistic of the "
                 "chosen response strictly above the rejected one's)")
    if r.get("left_out"):
        lines.append(f"  left out: {r['left_out']:,} texts whose response had no token to score (a one-token response "
                     "with nothing before it, or one truncated away or not found), and their pairs")
    return "\n".join(lines)
