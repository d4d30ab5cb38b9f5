"""Metrics: pure functions of arrays (no I/O), each tested against a reference implementation.

Conventions: a pair's margin is ``Δ = score(chosen) - score(rejected)``; a pair is correct when
``Δ > 0`` strictly (a tie counts as wrong, and the tie rate is reported).
"""

from __future__ import annotations

import numpy as np

NEAR_TIE_THRESHOLDS = (0.05, 0.1, 0.2, 0.5)


def pairwise_accuracy(margins: np.ndarray) -> float:
    return float((np.asarray(margins) > 0).mean()) if len(margins) else float("nan")


def margin_stats(margins: np.ndarray) -> dict:
    m = np.asarray(margins, dtype=np.float64)
    return {"mean": float(m.mean()), "median": float(np.median(m)), "std": float(m.std()),
            "incorrect_or_tied": float((m <= 0).mean()), "tie_rate": float((m == 0).mean())}


BOOTSTRAP_DRAWS = 1 << 22  # indices drawn at once (32 MB): resamples are drawn in chunks of this size


def bootstrap_ci(correct: np.ndarray, groups=None, n_boot: int = 1000, ci: float = 0.9, seed: int = 0) -> dict:
    """Percentile bootstrap CI of the mean of ``correct``; resamples whole groups when given
    (pairs of one problem are not independent), otherwise single pairs. Resamples are drawn a
    chunk at a time (the same numbers as drawing them at once), so memory stays bounded when
    ``n_boot`` times the number of pairs or groups is large."""
    correct = np.asarray(correct, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if groups is None:
        n, values, weights = len(correct), correct, None
    else:
        g = group_codes(groups)
        n = g.max() + 1
        values = np.bincount(g, correct, n)  # per group: sum of correct
        weights = np.bincount(g, minlength=n).astype(np.float64)  # per group: pairs
    stats = np.empty(n_boot)
    step = max(1, BOOTSTRAP_DRAWS // max(n, 1))
    for a in range(0, n_boot, step):
        draw = rng.integers(0, n, size=(min(step, n_boot - a), n))  # (chunk, n)
        if weights is None:
            stats[a:a + len(draw)] = values[draw].mean(axis=1)
        else:
            stats[a:a + len(draw)] = values[draw].sum(axis=1) / weights[draw].sum(axis=1)
    lo, hi = np.quantile(stats, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return {"low": float(lo), "high": float(hi), "level": ci, "resamples": n_boot,
            "unit": "group" if groups is not None else "pair"}


def length_buckets(margins: np.ndarray, lengths: np.ndarray, edges=(128, 256)) -> list[dict]:
    """Accuracy and count per token-length bucket ``[0, e1), [e1, e2), …, [e_k, ∞)``; ``lengths``
    is the longer trace of each pair."""
    margins, lengths = np.asarray(margins), np.asarray(lengths)
    bounds = [0, *edges, None]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sel = (lengths >= lo) & ((lengths < hi) if hi is not None else True)
        out.append({"bucket": f"{lo}-{hi}" if hi is not None else f"{lo}+", "count": int(sel.sum()),
                    "accuracy": pairwise_accuracy(margins[sel]) if sel.any() else None})
    return out


def antisymmetry(margins: np.ndarray, swapped: np.ndarray) -> dict:
    """Swapping chosen and rejected must flip every margin: swapped accuracy ≈ 1 - accuracy - ties,
    mean swapped margin ≈ -mean margin, correlation ≈ -1."""
    margins, swapped = np.asarray(margins, np.float64), np.asarray(swapped, np.float64)
    corr = float(np.corrcoef(margins, swapped)[0, 1]) if len(margins) > 1 and margins.std() > 0 else float("nan")
    return {"swapped_accuracy": pairwise_accuracy(swapped), "mean_swapped_margin": float(swapped.mean()),
            "correlation": corr, "max_abs_sum": float(np.abs(margins + swapped).max()) if len(margins) else 0.0}


def near_ties(margins: np.ndarray, thresholds=NEAR_TIE_THRESHOLDS) -> list[dict]:
    """Accuracy and count among pairs with ``|Δ| < t``."""
    m = np.asarray(margins)
    out = []
    for t in thresholds:
        sel = np.abs(m) < t
        out.append({"threshold": t, "count": int(sel.sum()),
                    "accuracy": pairwise_accuracy(m[sel]) if sel.any() else None})
    return out


def fit_temperature(margins: np.ndarray) -> float:
    """T minimising the log loss of ``P(chosen wins) = σ(Δ/T)`` over the pairs (both orientations
    give the same loss). Returns ``inf`` when no pair is wrong (no finite T is optimal)."""
    from scipy.optimize import minimize_scalar

    m = np.asarray(margins, dtype=np.float64)
    if not (m <= 0).any():
        return float("inf")
    if not (m > 0).any() or not np.any(m):
        return 1.0
    scale = np.median(np.abs(m[m != 0])) or 1.0

    def nll(log_inv_t):
        return np.logaddexp(0.0, -m * np.exp(log_inv_t) / scale).mean()

    res = minimize_scalar(nll, bounds=(-20, 20), method="bounded", options={"xatol": 1e-8})
    return float(scale / np.exp(res.x))


def calibration(margins: np.ndarray, temperature: float, n_bins: int = 10) -> dict:
    """Expected calibration error and reliability table of ``σ(Δ/T)`` over both orientations of
    each pair (prediction p with outcome 1, and 1-p with outcome 0), equal-width bins."""
    m = np.asarray(margins, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-m / temperature)) if np.isfinite(temperature) else (m > 0).astype(float)
    probs = np.concatenate([p, 1 - p])
    outcome = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    table, ece = [], 0.0
    for b in range(n_bins):
        sel = bins == b
        if not sel.any():
            continue
        conf, acc = probs[sel].mean(), outcome[sel].mean()
        ece += sel.mean() * abs(conf - acc)
        table.append({"bin": f"{b / n_bins:.1f}-{(b + 1) / n_bins:.1f}", "count": int(sel.sum()),
                      "confidence": float(conf), "accuracy": float(acc)})
    nll = float(np.logaddexp(0.0, -m / temperature).mean()) if np.isfinite(temperature) else None
    return {"temperature": temperature, "ece": float(ece), "nll": nll, "reliability": table}


def pointwise(scores: np.ndarray, labels: np.ndarray) -> dict:
    """AUROC and Spearman correlation of scores against 0/1 labels."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return {"auroc": None, "spearman": None}
    return {"auroc": float(roc_auc_score(labels, scores)), "spearman": float(spearmanr(scores, labels).statistic)}


def group_codes(groups) -> np.ndarray:
    """``(N,)`` code of each row's group: the rank of ``str(group)`` among the distinct ones, as
    ``np.unique(np.asarray(groups, dtype=str), return_inverse=True)`` gives, but sorting only the
    distinct names (a few per million rows) instead of every row's."""
    first: dict[str, int] = {}
    code = np.fromiter((first.setdefault(x, len(first)) for x in map(str, groups)), dtype=np.int64, count=len(groups))
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(np.array(list(first), dtype=str), kind="stable")] = np.arange(len(first))
    return rank[code]


def group_indices(groups) -> list[np.ndarray]:
    """Row indices of each group (groups in sorted order, rows in input order), by one sort."""
    g = group_codes(groups)
    order = np.argsort(g, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(g[order])) + 1)


def best_of_n(scores: np.ndarray, labels: np.ndarray, groups) -> dict:
    """Per group, is the top-scored candidate correct? A shared top score gets fractional credit
    (correct among the tied / number tied, as RewardBench v2). Beside it: random pick (mean
    fraction correct per group) and oracle (the group has a correct candidate)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    picked, rand, oracle, sizes = [], [], [], []
    for idx in group_indices(groups):
        s, y = scores[idx], labels[idx]
        top = s == s.max()
        picked.append(y[top].mean())
        rand.append(y.mean())
        oracle.append(float(y.max()))
        sizes.append(len(idx))
    return {"accuracy": float(np.mean(picked)), "random": float(np.mean(rand)), "oracle": float(np.mean(oracle)),
            "groups": len(picked), "mean_candidates": float(np.mean(sizes)), "tie_policy": "fractional"}


def best_of_n_curve(scores: np.ndarray, labels: np.ndarray, groups, max_n: int | None = None) -> list[dict]:
    """Expected best-of-N accuracy for N = 1..max over uniformly random N-subsets of each group's
    candidates (exact, by counting: a subset's pick is its top-scored member)."""
    from math import comb

    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    per_group = group_indices(groups)
    max_n = max_n or max(len(i) for i in per_group)
    out = []
    for n in range(1, max_n + 1):
        vals = []
        for idx in per_group:
            m = len(idx)
            if m < n:
                continue
            order = idx[np.argsort(-scores[idx], kind="stable")]
            # P(candidate at rank r is the top of a random n-subset) = C(m-1-r, n-1) / C(m, n);
            # tied scores share their credit evenly.
            s_sorted, y_sorted = scores[order], labels[order].astype(float)
            w = np.array([comb(m - 1 - r, n - 1) for r in range(m)], dtype=float) / comb(m, n)
            for val in np.unique(s_sorted):
                tie = s_sorted == val
                y_sorted[tie] = y_sorted[tie].mean()
            vals.append(float((w * y_sorted).sum()))
        if vals:
            out.append({"n": n, "accuracy": float(np.mean(vals)), "groups": len(vals)})
    return out


def _by_size(labels) -> list[tuple[str, np.ndarray]]:
    """``(label, row indices)`` of each distinct label, largest first (ties: by label); indices
    in input order."""
    first: dict = {}
    codes = np.fromiter((first.setdefault(x, len(first)) for x in labels), dtype=np.int64, count=len(labels))
    order = np.argsort(codes, kind="stable")
    idx = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1) if len(order) else []
    names = list(first)
    return sorted(((names[codes[i[0]]], i) for i in idx), key=lambda t: (-len(t[1]), t[0]))


def pairwise_by(margins: np.ndarray, labels, groups=None, n_boot: int = 1000, ci: float = 0.9, seed: int = 0,
                max_ci: int = 1000) -> list[dict]:
    """The headline pairwise metrics per value of ``labels`` (one string per pair), largest
    first: pairs, accuracy (strict >), bootstrap CI (resampling ``groups`` within the value when
    given, as the headline does; the same seed), tie rate, mean margin. The CI is computed for
    the ``max_ci`` largest values and is None beyond; a value whose pairs are all right (or all
    wrong) has the CI every resample gives, [acc, acc], without drawing."""
    margins = np.asarray(margins, dtype=np.float64)
    groups = None if groups is None else np.asarray(groups, dtype=object)
    out = []
    for rank, (label, idx) in enumerate(_by_size(labels)):
        m = margins[idx]
        correct = m > 0
        if rank >= max_ci:
            c = None
        elif correct.all() or not correct.any():
            c = {"low": float(correct[0]), "high": float(correct[0]), "level": ci, "resamples": n_boot,
                 "unit": "group" if groups is not None else "pair"}
        else:
            c = bootstrap_ci(correct, None if groups is None else groups[idx], n_boot, ci, seed)
        out.append({"value": label, "pairs": int(len(idx)), "accuracy": float(correct.mean()), "ci": c,
                    "tie_rate": float((m == 0).mean()), "margin_mean": float(m.mean())})
    return out


def pointwise_by(scores: np.ndarray, labels01: np.ndarray, values) -> list[dict]:
    """Per value of ``values`` (one string per trace), largest first: traces, correct ones, and
    AUROC and Spearman (None where the value's traces have one label only)."""
    scores, labels01 = np.asarray(scores, np.float64), np.asarray(labels01)
    return [{"value": v, "traces": int(len(idx)), "correct": int(labels01[idx].sum()),
             **pointwise(scores[idx], labels01[idx])} for v, idx in _by_size(values)]


def ensemble_disagreement(member_margins: np.ndarray, margins: np.ndarray) -> dict:
    """How an ensemble's members disagree on each pair, and whether that flags its errors.
    ``member_margins`` ``(N, K)``: each member's margin on each pair; ``margins`` ``(N,)``: the
    ensemble's (their mean). Reports the members' mean accuracy, the mean std of their margins,
    the fraction of pairs where they do not all agree on the preference, the ensemble's accuracy
    on unanimous and on split pairs, and the AUROC of the margin std (relative to |margin|, so a
    confident pair is not flagged for being large) as a detector of the ensemble's errors."""
    from sklearn.metrics import roc_auc_score

    N, K = member_margins.shape
    right = margins > 0
    votes = (member_margins > 0).sum(axis=1)  # (N,)
    split = (votes > 0) & (votes < K)
    spread = member_margins.std(axis=1)  # (N,)
    relative = spread / (np.abs(margins) + spread + 1e-12)  # in [0, 1): disagreement against confidence
    wrong = ~right
    detect = float(roc_auc_score(wrong, relative)) if 0 < wrong.sum() < N else None
    acc = lambda sel: float(right[sel].mean()) if sel.any() else None  # noqa: E731
    return {"members": int(K), "member_accuracy": [float(x) for x in (member_margins > 0).mean(axis=0)],
            "mean_margin_std": float(spread.mean()) if N else None,
            "split_pairs": float(split.mean()) if N else None,
            "accuracy_unanimous": acc(~split), "accuracy_split": acc(split),
            "error_auroc": detect,
            "error_auroc_rule": "AUROC of std/(|margin| + std) of the members' margins for the ensemble's errors "
                                "(0.5: disagreement says nothing)"}
