"""Step scores -> one score per trace: the aggregations of the process-reward literature.

A trace with steps has one score per step prefix (a PRM's, or an outcome head's on partial
traces). Ranking whole traces by them takes one number each:

* ``last``: the final step's score (the whole solution as the head sees it, without closing tokens);
* ``min``: the weakest step (a chain is as good as its worst link; Lightman et al. 2023);
* ``mean``: the average step score;
* ``product``: the probability that every step is correct, ``Π σ(s_i)``, returned as its log
  ``Σ log σ(s_i)`` (the same order, no underflow over many steps). σ(s) is a step's probability
  of being correct for a pointwise head (its score is a log-odds); for a pairwise head, whose
  scores are relative, it is a ranking heuristic. No calibration enters: a trace's aggregate is a
  function of its text and the head alone.

Pure NumPy over a flat ``(M,)`` array of step scores and ``(N + 1,)`` offsets: trace ``i``'s
steps are ``scores[offsets[i]:offsets[i + 1]]``, at least one each.
"""

from __future__ import annotations

import numpy as np

STEP_AGGREGATES = ("last", "min", "mean", "product")


def check_step_aggregate(how: str) -> str:
    if how not in STEP_AGGREGATES:
        from ..errors import ConfigError

        raise ConfigError(f"--step-aggregate {how!r} is not one of {', '.join(STEP_AGGREGATES)}")
    return how


def aggregate_steps(scores: np.ndarray, offsets: np.ndarray, how: str, temperature: float | None = None) -> np.ndarray:
    """``(N,)`` float64: each trace's step scores aggregated by ``how`` (see the module)."""
    check_step_aggregate(how)
    s = np.asarray(scores, dtype=np.float64)  # (M,)
    offsets = np.asarray(offsets, dtype=np.int64)  # (N + 1,)
    counts = np.diff(offsets)  # (N,)
    if len(counts) and counts.min() < 1:
        raise ValueError("every trace needs at least one step score")
    if not len(counts):
        return np.empty(0)
    starts = offsets[:-1]
    if how == "last":
        return s[offsets[1:] - 1]
    if how == "min":
        return np.minimum.reduceat(s, starts)
    if how == "mean":
        return np.add.reduceat(s, starts) / counts
    T = temperature or 1.0
    return np.add.reduceat(-np.logaddexp(0.0, -s / T), starts)  # Σ log σ(s / T)


def offsets_of(step_keys: list[list]) -> np.ndarray:
    """``(N + 1,)`` offsets of traces with ``len(step_keys[i])`` steps each."""
    return np.concatenate([[0], np.cumsum([len(k) for k in step_keys])]).astype(np.int64)
