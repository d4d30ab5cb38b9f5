"""The head interface and its checkpoint file.

``torch.load(path, weights_only=True)`` gives ``{"model_state": tensors, "orm_cache": plain
data}``. For a linear head ``model_state`` holds ``score.weight`` ``[1, D]`` and ``score.bias``
``[1]``, the keys the reference model card's snippet loads (an ensemble of linear heads stores
their mean there, which is exactly the ensemble's score, and its members beside it); an MLP head
is orm-cache's own type (:mod:`orm_cache.head.kinds`). Everything else (head kind, encoder
fingerprint and spec, feature column, training config, data identity, metrics, calibration)
sits under ``"orm_cache"``. A reference-format file holding only ``model_state`` loads too:
that is how a published head is imported.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError  # noqa: F401 (re-exported: its old import location)
from ..store import StoreError, short

FORMAT_VERSION = 1


# The head kinds by the name a checkpoint records (``["orm_cache"]["head"]["kind"]``); each kind
# registers itself (:mod:`.kinds`), so loading dispatches on the name without importing the kinds.
KINDS: dict[str, type] = {}


def register(cls):
    """Class decorator: make ``cls`` the head kind named ``cls.kind`` for :meth:`Head.load`."""
    KINDS[cls.kind] = cls
    return cls


class Head:
    """A scorer of cached vectors of one encoder fingerprint and feature column: the interface
    every command goes through. Each kind (:mod:`orm_cache.head.kinds`: ``linear``, ``mlp``)
    holds ``K >= 1`` members; a text's score is the mean of its members' scores.

    A kind gives :meth:`member_scores` (vectors -> ``(N, K)``), :meth:`state` (its tensors for
    ``model_state``) and :meth:`from_state` (those tensors, validated, back into a head); the
    rest — checkpoint files, recorded metadata, store checks — is shared here."""

    kind = "?"

    def __init__(self, meta: dict | None = None, source: str | None = None):
        self.meta = dict(meta or {})
        self.source = source  # the file it was loaded from, for messages

    # -- what a kind gives -------------------------------------------------------------------
    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def members(self) -> int:
        raise NotImplementedError

    @property
    def bias(self) -> float:
        """The members' mean output bias."""
        raise NotImplementedError

    def member_scores(self, X) -> np.ndarray:
        """``(N, D)`` vectors (an array, or a store's rows read in blocks) -> ``(N, K)`` float32."""
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, path, state: dict, meta: dict) -> "Head":
        raise NotImplementedError

    def with_meta(self, meta: dict) -> "Head":
        """The same weights with other metadata."""
        raise NotImplementedError

    def member(self, k: int) -> "Head":
        """Member ``k`` alone, as a one-member head of the same kind (no metadata)."""
        raise NotImplementedError

    def shifted(self, delta) -> "Head":
        """The same head with ``delta`` (``(K,)``) added to each member's output bias."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def score(self, X) -> np.ndarray:
        """``(N, D)`` vectors -> ``(N,)`` scores: the members' mean."""
        return self.finite(self.member_scores(X).mean(axis=1, dtype=np.float64).astype(np.float32))

    def finite(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` when every one is a number; else a one-line error saying where NaN or Inf
        came from: the head's own weights (training diverged) or the vectors (a corrupted store)."""
        bad = int(np.size(scores) - np.isfinite(scores).sum())
        if not bad:
            return scores
        if not all(torch.isfinite(t).all() for t in self.state().values()):
            raise CheckpointError("the head's weights hold NaN or Inf: training diverged (lower --lr, or keep "
                                  "--grad-clip on); no head was saved")
        raise StoreError(f"{bad:,} of {np.size(scores):,} scores are NaN or Inf because their cached vectors are: "
                         "the store is corrupted; run orm-cache cache check --fix, then embed again")

    def describe(self) -> str:
        """e.g. "linear", "mlp(256) x5"."""
        return self.kind + (f" x{self.members}" if self.members > 1 else "")

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of its encoder's store. A head trained before poolings and layers
        became columns recorded its store's schema-1 fingerprint; its recorded identity names
        the same encoder's store today."""
        fp = self.meta.get("fingerprint")
        ident = self.meta.get("encoder_identity")
        if fp and isinstance(ident, dict) and "pooling" in ident:
            from ..store.fingerprint import encoder_fingerprint, fingerprint

            if fingerprint(ident) == fp:
                return encoder_fingerprint(ident)
        return fp

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

    def check_store(self, store) -> None:
        """Refuse vectors of another encoder (naming both fingerprints) or of another width."""
        if self.fingerprint is not None and store.fp != self.fingerprint:
            raise StoreError(f"the head was trained on encoder {short(self.fingerprint)} but these vectors are "
                             f"from encoder {short(store.fp)}; embed with the head's encoder or use a head "
                             "trained on this one")
        width = store.feature_dim(self.feature) if self.feature and store.dim is not None else store.dim
        if width is not None and width != self.dim:
            raise CheckpointError(f"{self.source or 'head'}: it takes {self.dim}-dim vectors but "
                                  f"{self.feature or 'the vectors'} of store {short(store.fp)} are {width}-dim; "
                                  "this head is for another encoder or feature")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically: a complete new file replaces the old one, or nothing does."""
        from ..outputs import atomic_path

        meta = {"format_version": FORMAT_VERSION, **self.meta,
                "head": {**(self.meta.get("head") or {}), "kind": self.kind, "members": self.members}}
        with atomic_path(path) as tmp:
            torch.save({"model_state": self.state(), "orm_cache": meta}, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Head":
        """A checkpoint of any kind (the kind its metadata records; a reference-format file
        holding only ``model_state`` is a linear head), its tensors and metadata validated."""
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
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: no model_state (expected score.weight and score.bias)")
        meta = ckpt.get("orm_cache", {})
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: its 'orm_cache' entry is a {type(meta).__name__}, not a mapping")
        check_meta(path, meta)
        kind = (meta.get("head") or {}).get("kind", "linear")
        if kind not in KINDS:
            raise CheckpointError(f"{path}: head kind {kind!r} is not one of {', '.join(KINDS)} "
                                  "(written by a newer orm-cache?)")
        head = KINDS[kind].from_state(path, state, dict(meta))
        recorded = (meta.get("head") or {}).get("members")
        if recorded is not None and recorded != head.members:
            raise CheckpointError(f"{path}: it records {recorded!r} member(s) but its tensors hold {head.members}; "
                                  "the file was edited or damaged (train or save the head again)")
        head.source = str(path)
        return head


def check_tensor(path, name: str, t, shape: tuple) -> torch.Tensor:
    """``t`` must be a finite floating-point tensor of ``shape`` (None: any size there)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        got = type(t).__name__ + ("" if not isinstance(t, torch.Tensor) else " " + str(t.dtype))
        raise CheckpointError(f"{path}: {name} must be a floating-point tensor, got {got}")
    want = "[" + ", ".join("n" if s is None else str(s) for s in shape) + "]"
    if t.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)) or 0 in t.shape:
        raise CheckpointError(f"{path}: {name} has shape {list(t.shape)}, expected {want}")
    bad = int((~torch.isfinite(t.float())).sum())
    if bad:
        raise CheckpointError(f"{path}: {name} has {bad} non-finite value(s) (NaN or Inf); "
                              "the head would write NaN scores")
    return t.float()


def check_meta(path, meta: dict) -> None:
    """The recorded entries every command relies on must have their types: mappings where a
    mapping is read, strings where a name is, a calibration temperature finite and positive,
    a format this code knows."""
    version = meta.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: its format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} was written by a newer orm-cache; this one "
                              f"reads format {FORMAT_VERSION} and older (upgrade orm-cache)")
    for key in ("recipe", "calibration", "encoder_spec", "train", "config", "head"):
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
    for name, t in (("score.weight", w), ("score.bias", b)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = type(t).__name__ + ("" if not isinstance(t, torch.Tensor) else " " + str(t.dtype))
            raise CheckpointError(f"{path}: {name} must be a floating-point tensor, got {got}")
    if w.ndim != 2 or w.shape[0] != 1 or w.shape[1] < 1:
        raise CheckpointError(f"{path}: score.weight has shape {list(w.shape)}, expected [1, D] (one score per text)")
    check_tensor(path, "score.bias", b, (1,))
    check_tensor(path, "score.weight", w, (1, None))
