"""A split's cached vectors, gathered once: distinct traces ``X`` and the pair -> row indices.

Used by every stage-2 command; it reads only the store (no model).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import numpy as np

from .data import SplitData
from .store import StoreError, VectorStore


@dataclass
class SplitVectors:
    data: SplitData
    keys: list[str]  # distinct trace keys, row order of X
    X: np.ndarray  # (U, D) float32
    ci: np.ndarray  # (N,) row of each pair's chosen trace
    ri: np.ndarray  # (N,) row of each pair's rejected trace
    n_tokens: np.ndarray  # (U,)
    feature: str

    def rows(self, keys) -> np.ndarray:
        pos = {k: i for i, k in enumerate(self.keys)}
        return np.fromiter((pos[k] for k in keys), dtype=np.int64, count=len(keys))


def embed_command(data_spec, model: str, cache_dir, feature: str | None) -> str:
    cmd = ["orm-cache", "embed", "--data", data_spec.data, "--split", data_spec.split, "--model", model,
           "--cache-dir", str(cache_dir)]
    if feature:
        pooling, layer = feature.split("@")
        cmd += ["--pooling", pooling] + (["--layers", layer] if layer != "-1" else [])
    return shlex.join(cmd)


def split_vectors(data: SplitData, store: VectorStore, feature: str | None, hint: str = "") -> SplitVectors:
    """Gather the vectors of every trace of ``data``; a missing vector stops with the command to run."""
    keys = list(data.texts)
    missing = store.missing(keys)
    if missing:
        raise StoreError(f"{len(missing):,} of {len(keys):,} traces of split {data.split!r} have no cached "
                         f"vector in {store.dir}; run first: {hint or 'orm-cache embed'}")
    feature = feature or store.columns[0]
    X = store.vectors(keys, feature)
    sv = SplitVectors(data, keys, X, np.empty(0, np.int64), np.empty(0, np.int64), store.n_tokens(keys), feature)
    sv.ci, sv.ri = sv.rows(data.pairs.chosen), sv.rows(data.pairs.rejected)
    return sv
