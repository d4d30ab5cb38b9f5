"""The live scorer: text -> tokenizer -> frozen encoder -> pooling -> head, end to end.

It rebuilds the encoder a checkpoint was trained on from the spec the store recorded, and
refuses to score if the rebuilt encoder's fingerprint differs from the head's (the model
directory changed, another dtype, …). It is the project's answer to the reference card's
``score_trace`` / ``rank_candidates``::

    scorer = LiveScorer("cache/heads/….pt")
    scorer.score(["Step 1: …", "Step 1: …"])          # np.ndarray of scores
    scorer.rank(candidates)                            # [(index, score)], best first
    scorer.prefer(a, b)                                # P(a beats b) = σ((s_a - s_b) / T)
"""

from __future__ import annotations

import math

import numpy as np

from .config import EncoderSpec
from .encode.embedder import encode_texts
from .head import CheckpointError, Head
from .store import StoreError, short


class LiveScorer:
    def __init__(self, head: Head | str, device: str = "auto", batch_tokens: int | None = None,
                 max_batch_size: int = 256, model: str | None = None):
        from .encode.model import Encoder

        self.head = head if isinstance(head, Head) else Head.load(head)
        spec = dict(self.head.meta.get("encoder_spec") or {})
        if not spec:
            raise CheckpointError("this head carries no encoder spec (a reference-format import); "
                                  "score its traces through a store, or train a head with fit-head")
        if model:
            spec["model"] = model
        self.encoder = Encoder(EncoderSpec(**spec), device)
        if self.head.fingerprint and self.encoder.fingerprint != self.head.fingerprint:
            raise StoreError(f"the rebuilt encoder has fingerprint {short(self.encoder.fingerprint)} but the head "
                             f"was trained on {short(self.head.fingerprint)} (model files, dtype or tokenizer "
                             "changed); scores would not match")
        self.batch_tokens, self.max_batch_size = batch_tokens, max_batch_size

    def vectors(self, texts: list[str], one_at_a_time: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(N, D)`` pooled vectors of the head's feature column, and token counts."""
        max_batch = 1 if one_at_a_time else self.max_batch_size
        return encode_texts(self.encoder, list(texts), self.head.feature, self.batch_tokens, max_batch)

    def score(self, texts: list[str], one_at_a_time: bool = False) -> np.ndarray:
        if not texts:
            return np.empty(0, dtype=np.float32)
        return self.head.score(self.vectors(texts, one_at_a_time)[0])

    def rank(self, candidates: list[str]) -> list[tuple[int, float]]:
        """Candidates' indices and scores, best first (ties keep input order)."""
        s = self.score(candidates)
        order = np.argsort(-s, kind="stable")
        return [(int(i), float(s[i])) for i in order]

    def prefer(self, a: str, b: str) -> float:
        """P(a beats b) = σ((s_a - s_b) / T), with the checkpoint's calibration T (else T = 1)."""
        sa, sb = self.score([a, b])
        T = self.head.temperature or 1.0
        return 1.0 / (1.0 + math.exp(-(float(sa) - float(sb)) / T))
