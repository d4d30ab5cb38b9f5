"""The trained head and its checkpoint.

``torch.load(path, weights_only=True)["model_state"]`` holds ``score.weight`` ``[1, D]`` and
``score.bias`` ``[1]``, the keys the reference model card's snippet loads; everything else
(encoder fingerprint and spec, feature column, training config, data identity, metrics,
calibration) sits beside it under ``"orm_cache"`` as plain data. A reference-format file holding
only ``model_state`` loads too: that is how a published head is imported.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..store import StoreError, short

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or does not fit the vectors it is used with."""


@dataclass
class Head:
    """``score(x) = weight · x + bias`` over vectors of one encoder fingerprint and feature column."""

    weight: np.ndarray  # (D,) float32
    bias: float
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def fingerprint(self) -> str | None:
        return self.meta.get("fingerprint")

    @property
    def feature(self) -> str | None:
        return self.meta.get("feature")

    @property
    def temperature(self) -> float | None:
        return (self.meta.get("calibration") or {}).get("temperature")

    @property
    def score_std(self) -> float | None:
        return (self.meta.get("train") or {}).get("score_std")

    def score(self, X: np.ndarray) -> np.ndarray:
        """``(N, D)`` vectors -> ``(N,)`` scores."""
        assert X.ndim == 2 and X.shape[1] == self.dim, (X.shape, self.dim)
        return X @ self.weight + np.float32(self.bias)

    def check_store(self, store) -> None:
        """Refuse vectors of another encoder, naming both fingerprints."""
        if self.fingerprint is None:
            if store.dim != self.dim:
                raise CheckpointError(f"head expects {self.dim}-dim vectors, the store has {store.dim}")
            return
        if store.fp != self.fingerprint:
            raise StoreError(f"the head was trained on encoder {short(self.fingerprint)} but these vectors are "
                             f"from encoder {short(store.fp)}; embed with the head's encoder or use a head "
                             "trained on this one")

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"score.weight": torch.from_numpy(self.weight.astype(np.float32)).reshape(1, -1),
                 "score.bias": torch.tensor([self.bias], dtype=torch.float32)}
        tmp = path.with_name(f".tmp-{path.name}")
        torch.save({"model_state": state, "orm_cache": {"format_version": FORMAT_VERSION, **self.meta}}, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Head":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: refused: the file holds pickled objects, not plain data "
                                  f"(loaded with weights_only=True): {str(e).splitlines()[0]}") from None
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
        state = ckpt.get("model_state") if isinstance(ckpt, dict) else None
        if not state or "score.weight" not in state or "score.bias" not in state:
            raise CheckpointError(f"{path}: no model_state with score.weight and score.bias")
        w = state["score.weight"].float().reshape(-1).numpy()
        b = float(state["score.bias"].float().reshape(-1)[0])
        return cls(w, b, dict(ckpt.get("orm_cache", {})))
