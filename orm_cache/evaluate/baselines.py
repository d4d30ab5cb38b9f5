"""Baselines to print beside a head, on the same pairs: TF-IDF + pairwise logistic regression,
and "shorter trace wins". They read texts only (no encoder, no store)."""

from __future__ import annotations

import numpy as np


def tfidf_pairwise(train, test, C: float = 1.0, max_features: int = 50_000) -> float:
    """Pairwise accuracy on ``test`` of a logistic regression on TF-IDF(chosen) - TF-IDF(rejected)
    (word 1-2 grams fitted on the training texts; both orientations, no intercept)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from scipy.sparse import vstack

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=max_features, sublinear_tf=True)
    vec.fit(list(train.texts.values()))

    def diffs(d):
        keys = list(d.texts)
        M = vec.transform([d.texts[k] for k in keys])
        pos = {k: i for i, k in enumerate(keys)}
        c = np.array([pos[k] for k in d.pairs.chosen])
        r = np.array([pos[k] for k in d.pairs.rejected])
        return M[c] - M[r]

    D = diffs(train)
    y = np.r_[np.ones(D.shape[0]), np.zeros(D.shape[0])]
    model = LogisticRegression(C=C, fit_intercept=False, max_iter=5000).fit(vstack([D, -D]), y)
    return float((diffs(test) @ model.coef_[0] > 0).mean())


def shorter_wins(test) -> float:
    """Accuracy of preferring the shorter text (characters); ties count wrong."""
    lc = np.array([len(test.texts[k]) for k in test.pairs.chosen])
    lr = np.array([len(test.texts[k]) for k in test.pairs.rejected])
    return float((lc < lr).mean())
