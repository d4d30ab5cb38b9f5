"""Pointwise (text, label, group) rows -> pairwise comparisons, as the reference data was built.

For every positive, ``k`` negatives are drawn without replacement from the negatives of its group
(from all negatives when there are no groups), with a seeded generator; a positive with fewer
than ``k`` available negatives is paired with all of them. Pairs whose two texts are identical
are skipped and counted.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def pairs_from_pointwise(keys: list[str], labels: np.ndarray, groups: list | None, k: int, seed: int):
    """Return ``(Pairs, stats)``; ``keys``, ``labels`` and ``groups`` are aligned per row."""
    from .split import Pairs

    rng = np.random.default_rng(seed)
    group_of = groups if groups is not None else [None] * len(keys)
    negatives: dict = defaultdict(list)
    for i, (lab, g) in enumerate(zip(labels, group_of)):
        if lab == 0:
            negatives[g].append(i)
    chosen, rejected, pair_groups, metas = [], [], [], []
    no_negative = same_text = 0
    for i, (lab, g) in enumerate(zip(labels, group_of)):
        if lab != 1:
            continue
        pool = negatives.get(g, [])
        if not pool:
            no_negative += 1
            continue
        take = pool if len(pool) <= k else [pool[j] for j in rng.choice(len(pool), size=k, replace=False)]
        for j in take:
            if keys[i] == keys[j]:
                same_text += 1
                continue
            chosen.append(keys[i])
            rejected.append(keys[j])
            pair_groups.append(g)
            metas.append({"chosen_row": i, "rejected_row": j})
    stats = {
        "positives": int((labels == 1).sum()),
        "negatives": int((labels == 0).sum()),
        "positives_without_negative": no_negative,
        "same_text_pairs_skipped": same_text,
        "negatives_per_positive": k,
    }
    return Pairs(chosen, rejected, pair_groups if groups is not None else None, metas), stats
