"""The trained head and its checkpoint.

``torch.load(path, weights_only=True)["model_state"]`` holds ``score.weight`` ``[1, D]`` and
``score.bias`` ``[1]``, the keys the reference model card's snippet loads; everything else
(encoder fingerprint and spec, feature column, training config, data identity, metrics,
calibration) sits beside it under ``"orm_cache"`` as plain data. A reference-format file holding
only ``model_state`` loads too: that is how a published head is imported.
"""

from __future__ import annotations

import math
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
    source: str | None = None  # the file it was loaded from, for messages

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
    def recipe(self) -> dict | None:
        """How its training texts were built (template, prompt column); None for heads saved
        before recipes were recorded and for reference-format imports."""
        return self.meta.get("recipe")

    @property
    def temperature(self) -> float | None:
        return (self.meta.get("calibration") or {}).get("temperature")

    @property
    def score_std(self) -> float | None:
        return (self.meta.get("train") or {}).get("score_std")

    def score(self, X) -> np.ndarray:
        """``(N, D)`` vectors (an array, or a store's rows read in blocks) -> ``(N,)`` scores."""
        assert X.ndim == 2 and X.shape[1] == self.dim, (X.shape, self.dim)
        return X @ self.weight + np.float32(self.bias)

    def check_store(self, store) -> None:
        """Refuse vectors of another encoder (naming both fingerprints) or of another width."""
        if self.fingerprint is not None and store.fp != self.fingerprint:
            raise StoreError(f"the head was trained on encoder {short(self.fingerprint)} but these vectors are "
                             f"from encoder {short(store.fp)}; embed with the head's encoder or use a head "
                             "trained on this one")
        if store.dim is not None and store.dim != self.dim:
            raise CheckpointError(f"{self.source or 'head'}: score.weight has {self.dim} columns but the vectors "
                                  f"of store {short(store.fp)} are {store.dim}-dim; this head is for another encoder")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically: a complete new file replaces the old one, or nothing does."""
        from ..outputs import atomic_path

        state = {"score.weight": torch.from_numpy(self.weight.astype(np.float32)).reshape(1, -1),
                 "score.bias": torch.tensor([self.bias], dtype=torch.float32)}
        with atomic_path(path) as tmp:
            torch.save({"model_state": state, "orm_cache": {"format_version": FORMAT_VERSION, **self.meta}}, tmp)
        return Path(path)

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
        if not isinstance(state, dict) or "score.weight" not in state or "score.bias" not in state:
            raise CheckpointError(f"{path}: no model_state with score.weight and score.bias")
        w, b = state["score.weight"], state["score.bias"]
        check_weights(path, w, b)
        meta = ckpt.get("orm_cache", {})
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: its 'orm_cache' entry is a {type(meta).__name__}, not a mapping")
        check_meta(path, meta)
        return cls(w.float().reshape(-1).numpy(), float(b.float().reshape(-1)[0]), dict(meta), str(path))


def check_meta(path, meta: dict) -> None:
    """The recorded entries every command relies on must have their types: mappings where a
    mapping is read, strings where a name is, a calibration temperature finite and positive."""
    for key in ("recipe", "calibration", "encoder_spec", "train", "config"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise CheckpointError(f"{path}: its recorded {key!r} is a {type(meta[key]).__name__}, not a mapping")
    for key in ("fingerprint", "feature"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise CheckpointError(f"{path}: its recorded {key!r} is a {type(meta[key]).__name__}, not a string")
    T = (meta.get("calibration") or {}).get("temperature")
    if T is not None and (isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T <= 0):
        raise CheckpointError(f"{path}: calibration temperature {T!r} is not a positive finite number; "
                              "refit it with eval --save-calibration")


def check_weights(path, w, b) -> None:
    """score.weight must be a finite ``[1, D]`` tensor and score.bias a finite ``[1]`` tensor."""
    for name, t, shape in (("score.weight", w, "[1, D]"), ("score.bias", b, "[1]")):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise CheckpointError(f"{path}: {name} must be a floating-point tensor, got "
                                  f"{type(t).__name__}{'' if not isinstance(t, torch.Tensor) else ' ' + str(t.dtype)}")
    if w.ndim != 2 or w.shape[0] != 1 or w.shape[1] < 1:
        raise CheckpointError(f"{path}: score.weight has shape {list(w.shape)}, expected [1, D] (one score per text)")
    if tuple(b.shape) != (1,):
        raise CheckpointError(f"{path}: score.bias has shape {list(b.shape)}, expected [1]")
    for name, t in (("score.weight", w), ("score.bias", b)):
        bad = int((~torch.isfinite(t.float())).sum())
        if bad:
            raise CheckpointError(f"{path}: {name} has {bad} non-finite value(s) (NaN or Inf); "
                                  "the head would write NaN scores")
