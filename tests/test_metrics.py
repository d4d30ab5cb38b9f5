"""Each metric against a reference: sklearn, scipy, brute force or a hand-checked example."""

import itertools

import numpy as np
import pytest

from orm_cache.evaluate import metrics as M


def test_accuracy_strict_and_ties():
    m = np.array([1.0, 0.0, -1.0, 2.0])
    assert M.pairwise_accuracy(m) == 0.5
    s = M.margin_stats(m)
    assert s["tie_rate"] == 0.25 and s["incorrect_or_tied"] == 0.5 and s["median"] == 0.5


def test_bootstrap_ci_pairs_and_groups():
    correct = np.r_[np.ones(80), np.zeros(20)]
    ci = M.bootstrap_ci(correct, n_boot=2000, ci=0.9, seed=0)
    assert ci["low"] < 0.8 < ci["high"] and ci["unit"] == "pair"
    # normal approximation: half-width ≈ 1.645 · sqrt(.8·.2/100) = 0.066
    assert (ci["high"] - ci["low"]) / 2 == pytest.approx(0.066, abs=0.012)
    groups = np.repeat(np.arange(10), 10)  # whole groups right or wrong: far fewer independent units
    cg = M.bootstrap_ci(correct, groups, n_boot=2000, seed=0)
    assert cg["unit"] == "group" and cg["high"] - cg["low"] > ci["high"] - ci["low"]
    assert M.bootstrap_ci(np.ones(5), seed=0)["low"] == 1.0


def test_length_buckets_and_near_ties():
    m = np.array([0.01, -0.03, 0.15, 0.4, -1.0])
    lengths = np.array([10, 127, 128, 300, 256])
    b = M.length_buckets(m, lengths, (128, 256))
    assert [(x["bucket"], x["count"]) for x in b] == [("0-128", 2), ("128-256", 1), ("256+", 2)]
    assert b[0]["accuracy"] == 0.5 and b[2]["accuracy"] == 0.5
    t = {x["threshold"]: (x["count"], x["accuracy"]) for x in M.near_ties(m)}
    assert t[0.05] == (2, 0.5) and t[0.2] == (3, 2 / 3) and t[0.5] == (4, 0.75)


def test_antisymmetry():
    m = np.array([1.0, -0.5, 2.0])
    a = M.antisymmetry(m, -m)
    assert a["swapped_accuracy"] == pytest.approx(1 / 3) and a["correlation"] == pytest.approx(-1.0)
    assert a["max_abs_sum"] == 0.0


def test_temperature_minimises_log_loss_by_grid():
    rng = np.random.default_rng(0)
    m = rng.normal(1.0, 2.0, 500)
    T = M.fit_temperature(m)
    grid = np.exp(np.linspace(np.log(0.05), np.log(50), 4001))
    nll = [np.logaddexp(0, -m / t).mean() for t in grid]
    assert T == pytest.approx(grid[int(np.argmin(nll))], rel=0.01)
    assert M.fit_temperature(np.array([1.0, 2.0])) == float("inf")


def test_ece_by_hand():
    m = np.array([2.0, -2.0])  # T=1: p = σ(2) = 0.881 for pair 1, σ(-2) for pair 2
    c = M.calibration(m, 1.0, n_bins=10)
    p = 1 / (1 + np.exp(-2.0))
    # both orientations: predictions {p, 1-p, 1-p, p} with outcomes {1, 1, 0, 0}
    # bin 0.8-0.9 holds p twice (outcomes 1, 0): |p - .5|; bin 0.1-0.2 holds 1-p twice: |1-p - .5|
    assert c["ece"] == pytest.approx(abs(p - 0.5))
    assert sum(r["count"] for r in c["reliability"]) == 4


def test_pointwise_against_scipy_and_mann_whitney():
    from scipy.stats import mannwhitneyu, spearmanr

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    p = M.pointwise(scores, labels)
    u = mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    assert p["auroc"] == pytest.approx(u / ((labels == 1).sum() * (labels == 0).sum()))
    assert p["spearman"] == pytest.approx(spearmanr(scores, labels).statistic)


def test_best_of_n_with_ties_by_hand():
    scores = np.array([3.0, 1.0, 2.0, 5.0, 5.0, 0.0, 1.0, 1.0])
    labels = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    groups = ["a", "a", "a", "b", "b", "b", "c", "c"]
    r = M.best_of_n(scores, labels, groups)
    # a: top is correct (1); b: tie of a wrong and a right (1/2); c: no correct (0)
    assert r["accuracy"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert r["random"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3) and r["oracle"] == pytest.approx(2 / 3)


def test_best_of_n_curve_equals_brute_force():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 4, 15).astype(float)  # many ties
    labels = rng.integers(0, 2, 15)
    groups = np.repeat(["x", "y", "z"], 5)
    curve = {c["n"]: c["accuracy"] for c in M.best_of_n_curve(scores, labels, groups)}
    for n in range(1, 6):
        per_group = []
        for g in "xyz":
            idx = np.flatnonzero(groups == g)
            vals = []
            for sub in itertools.combinations(idx, n):
                sub = np.array(sub)
                top = scores[sub] == scores[sub].max()
                vals.append(labels[sub][top].mean())
            per_group.append(np.mean(vals))
        assert curve[n] == pytest.approx(np.mean(per_group)), n
