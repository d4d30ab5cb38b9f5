"""Baselines to print beside a head, on the same pairs: TF-IDF + pairwise logistic regression,
and "shorter trace wins". They read texts only (no encoder, no store)."""

from __future__ import annotations

import numpy as np


def tfidf_scorer(train, C: float = 1.0, max_features: int = 50_000):
    """A text -> score function: logistic regression on TF-IDF(chosen) - TF-IDF(rejected) (word
    1-2 grams fitted on the training texts; both orientations, no intercept), fitted on
    ``train``'s pairs; a text's score is its TF-IDF vector times the coefficients."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from scipy.sparse import vstack

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=max_features, sublinear_tf=True)
    vec.fit(list(train.texts.values()))
    keys = list(train.texts)
    M = vec.transform([train.texts[k] for k in keys])
    pos = {k: i for i, k in enumerate(keys)}
    D = M[[pos[k] for k in train.pairs.chosen]] - M[[pos[k] for k in train.pairs.rejected]]
    y = np.r_[np.ones(D.shape[0]), np.zeros(D.shape[0])]
    coef = LogisticRegression(C=C, fit_intercept=False, max_iter=5000).fit(vstack([D, -D]), y).coef_[0]
    return lambda texts: vec.transform(list(texts)) @ coef


def tfidf_margins(train, test, **kw) -> np.ndarray:
    """``(N,)`` margins of :func:`tfidf_scorer` (fitted on ``train``) on ``test``'s pairs."""
    score = tfidf_scorer(train, **kw)
    keys = list(test.texts)
    s = dict(zip(keys, score(test.texts[k] for k in keys)))
    return np.array([s[c] - s[r] for c, r in zip(test.pairs.chosen, test.pairs.rejected)])


def tfidf_pairwise(train, test, C: float = 1.0, max_features: int = 50_000) -> float:
    """Pairwise accuracy on ``test`` of :func:`tfidf_scorer` fitted on ``train``."""
    return float((tfidf_margins(train, test, C=C, max_features=max_features) > 0).mean())


def shorter_wins(test) -> float:
    """Accuracy of preferring the shorter text (characters); ties count wrong."""
    lc = np.array([len(test.texts[k]) for k in test.pairs.chosen])
    lr = np.array([len(test.texts[k]) for k in test.pairs.rejected])
    return float((lc < lr).mean())
