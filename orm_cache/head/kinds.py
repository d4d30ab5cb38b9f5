"""The head kinds: what a head computes from a vector, and the tensors it is saved as.

* :class:`LinearHead` — ``score = w · x + b`` (the reference). ``K`` members (an ensemble) are
  ``W`` ``(K, D)`` and ``b`` ``(K,)``; their mean score is the linear head ``(mean W, mean b)``,
  which is what ``score.weight``/``score.bias`` hold, so the reference snippet scores an
  ensemble exactly. ``members.weight``/``members.bias`` keep the members (for disagreement).
* :class:`MLPHead` — ``score = w2 · relu(W1 x + b1) + b2``, one hidden layer; trained on
  standardised features, with the standardisation folded into ``W1`` and ``b1`` so it scores
  raw vectors. ``K`` members are stacked: ``hidden.weight`` ``(K, H, D)``, ``hidden.bias``
  ``(K, H)``, ``out.weight`` ``(K, H)``, ``out.bias`` ``(K,)``.

Every member set is computed block by block over a store's rows (:meth:`Rows.apply`), so no
kind ever holds the whole matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from ..store.rows import as_rows
from .checkpoint import KINDS, CheckpointError, Head, check_tensor, check_weights, register  # noqa: F401 (KINDS re-exported)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy().copy()


@register
class LinearHead(Head):
    """``score(x) = weight · x + bias``; an ensemble's members are rows of ``W``."""

    kind = "linear"

    def __init__(self, weight, bias, meta: dict | None = None, source: str | None = None):
        super().__init__(meta, source)
        W = np.asarray(weight, dtype=np.float32)
        self.W = W.reshape(1, -1) if W.ndim == 1 else W  # (K, D)
        self.b = np.asarray(bias, dtype=np.float32).reshape(-1)  # (K,)
        assert self.W.ndim == 2 and self.b.shape == (self.W.shape[0],), (self.W.shape, self.b.shape)

    @property
    def weight(self) -> np.ndarray:
        """``(D,)``: the members' mean weight (the head itself when there is one member)."""
        return self.W[0] if self.members == 1 else self.W.mean(axis=0, dtype=np.float64).astype(np.float32)

    @property
    def bias(self) -> float:
        return float(self.b.astype(np.float64).mean())

    @property
    def dim(self) -> int:
        return int(self.W.shape[1])

    @property
    def members(self) -> int:
        return int(self.W.shape[0])

    def member_scores(self, X) -> np.ndarray:
        return as_rows(X) @ self.W.T + self.b  # (N, K)

    def score(self, X) -> np.ndarray:
        """One product with the mean weight (equal to the members' mean score), each row's dot
        product summed in a fixed order (:meth:`Rows.row_dot`): a text's score is the same bits
        whatever chunk, batch, order or door it is scored through."""
        assert X.ndim == 2 and X.shape[1] == self.dim, (X.shape, self.dim)
        return self.finite(as_rows(X).row_dot(self.weight) + np.float32(self.bias))  # (N,)

    def state(self) -> dict[str, torch.Tensor]:
        out = {"score.weight": torch.from_numpy(self.weight.copy()).reshape(1, -1),
               "score.bias": torch.tensor([self.bias], dtype=torch.float32)}
        if self.members > 1:
            out |= {"members.weight": torch.from_numpy(self.W.copy()), "members.bias": torch.from_numpy(self.b.copy())}
        return out

    @classmethod
    def from_state(cls, path, state: dict, meta: dict) -> "LinearHead":
        if "score.weight" not in state or "score.bias" not in state:
            raise CheckpointError(f"{path}: no model_state with score.weight and score.bias")
        w, b = state["score.weight"], state["score.bias"]
        check_weights(path, w, b)
        if "members.weight" not in state:
            return cls(_np(w)[0], _np(b), meta)
        W = check_tensor(path, "members.weight", state["members.weight"], (None, w.shape[1]))
        B = check_tensor(path, "members.bias", state.get("members.bias"), (W.shape[0],))
        head = cls(_np(W), _np(B), meta)
        if not np.allclose(head.weight, _np(w)[0], rtol=1e-4, atol=1e-6 * float(np.abs(head.W).max() + 1)):
            raise CheckpointError(f"{path}: score.weight is not the mean of members.weight (edited by hand?); "
                                  "the reference snippet and orm-cache would score differently")
        return head

    def with_meta(self, meta: dict) -> "LinearHead":
        return LinearHead(self.W, self.b, meta, self.source)

    def member(self, k: int) -> "LinearHead":
        return LinearHead(self.W[k], self.b[k:k + 1])

    def shifted(self, delta) -> "LinearHead":
        return LinearHead(self.W, self.b + np.asarray(delta, np.float32), self.meta, self.source)

    @classmethod
    def combine(cls, members: list["LinearHead"], meta: dict | None = None) -> "LinearHead":
        return cls(np.concatenate([m.W for m in members]), np.concatenate([m.b for m in members]), meta)


@register
class MLPHead(Head):
    """``score(x) = w2 · relu(W1 x + b1) + b2`` per member, the members' scores averaged."""

    kind = "mlp"

    def __init__(self, W1, b1, w2, b2, meta: dict | None = None, source: str | None = None):
        super().__init__(meta, source)
        self.W1 = np.asarray(W1, np.float32)  # (K, H, D)
        self.b1 = np.asarray(b1, np.float32)  # (K, H)
        self.w2 = np.asarray(w2, np.float32)  # (K, H)
        self.b2 = np.asarray(b2, np.float32).reshape(-1)  # (K,)
        K, H, D = self.W1.shape
        assert self.b1.shape == (K, H) and self.w2.shape == (K, H) and self.b2.shape == (K,)
        self._W1t = np.ascontiguousarray(self.W1.reshape(K * H, D).T)  # (D, K·H): one product for every member

    @property
    def dim(self) -> int:
        return int(self.W1.shape[2])

    @property
    def bias(self) -> float:
        """The members' mean output bias."""
        return float(self.b2.astype(np.float64).mean())

    @property
    def hidden(self) -> int:
        return int(self.W1.shape[1])

    @property
    def members(self) -> int:
        return int(self.W1.shape[0])

    def describe(self) -> str:
        return f"mlp({self.hidden})" + (f" x{self.members}" if self.members > 1 else "")

    def _block_scores(self, block: np.ndarray) -> np.ndarray:
        K, H = self.w2.shape
        h = block @ self._W1t  # (b, K·H)
        h += self.b1.reshape(-1)
        np.maximum(h, 0.0, out=h)
        return np.einsum("bkh,kh->bk", h.reshape(-1, K, H), self.w2) + self.b2  # (b, K)

    def member_scores(self, X) -> np.ndarray:
        X = as_rows(X)
        assert X.shape[1] == self.dim, (X.shape, self.dim)
        return X.apply(self._block_scores, self.members)

    def state(self) -> dict[str, torch.Tensor]:
        return {"hidden.weight": torch.from_numpy(self.W1.copy()), "hidden.bias": torch.from_numpy(self.b1.copy()),
                "out.weight": torch.from_numpy(self.w2.copy()), "out.bias": torch.from_numpy(self.b2.copy())}

    @classmethod
    def from_state(cls, path, state: dict, meta: dict) -> "MLPHead":
        missing = [k for k in ("hidden.weight", "hidden.bias", "out.weight", "out.bias") if k not in state]
        if missing:
            raise CheckpointError(f"{path}: an mlp head's model_state lacks {', '.join(missing)}")
        W1 = check_tensor(path, "hidden.weight", state["hidden.weight"], (None, None, None))
        K, H, _ = W1.shape
        b1 = check_tensor(path, "hidden.bias", state["hidden.bias"], (K, H))
        w2 = check_tensor(path, "out.weight", state["out.weight"], (K, H))
        b2 = check_tensor(path, "out.bias", state["out.bias"], (K,))
        return cls(_np(W1), _np(b1), _np(w2), _np(b2), meta)

    def with_meta(self, meta: dict) -> "MLPHead":
        return MLPHead(self.W1, self.b1, self.w2, self.b2, meta, self.source)

    def member(self, k: int) -> "MLPHead":
        return MLPHead(self.W1[k:k + 1], self.b1[k:k + 1], self.w2[k:k + 1], self.b2[k:k + 1])

    def shifted(self, delta) -> "MLPHead":
        return MLPHead(self.W1, self.b1, self.w2, self.b2 + np.asarray(delta, np.float32), self.meta, self.source)

    @classmethod
    def combine(cls, members: list["MLPHead"], meta: dict | None = None) -> "MLPHead":
        cat = lambda name: np.concatenate([getattr(m, name) for m in members])  # noqa: E731
        return cls(cat("W1"), cat("b1"), cat("w2"), cat("b2"), meta)



__all__ = ["KINDS", "LinearHead", "MLPHead"]
