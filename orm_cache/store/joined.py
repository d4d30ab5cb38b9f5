"""Several encoders' stores read as one, for a feature that concatenates their columns.

``mean@-4+bundled-smollm2:mean@-16`` reads ``mean@-4`` from the first encoder's store (the
head's ``--model``) and ``mean@-16`` from bundled-smollm2's. Every encoder embeds the same text
of a trace (built once by the head's recipe), so one key names the trace in every store and a
row of the joined matrix is the same trace in each. :class:`JoinedStore` answers the calls stage
2 makes of a :class:`~orm_cache.store.shards.VectorStore` (find, locate, missing, columns_at,
part), sending each part to its own store; the scalars (token counts, response starts) are the
first store's.
"""

from __future__ import annotations

import numpy as np

from .columns import encoder_parts
from .rows import ConcatRows, Rows
from .shards import StoreError, VectorStore


class JoinedStore:
    """The first encoder's store plus ``others`` (model name as the feature writes it -> store)."""

    def __init__(self, primary: VectorStore, others: dict[str, VectorStore]):
        self.primary, self.others = primary, dict(others)
        self.dir, self.fp = primary.dir, primary.fp

    def __getattr__(self, name):  # everything else (scalars, identity, spec, shards…) is the first store's
        return getattr(self.primary, name)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.primary.columns + tuple(f"{m}:{c}" for m, vs in self.others.items() for c in vs.columns)

    def part(self, part: str) -> tuple[VectorStore, str]:
        (model, column), = encoder_parts(part)
        if model is None:
            return self.primary, column
        if model not in self.others:
            raise StoreError(f"feature part {part!r}: no store of encoder {model!r} was given "
                             f"(have: {', '.join(self.others) or 'none'})")
        return self.others[model], column

    def feature_columns(self, feature: str) -> tuple[str, ...]:
        parts = tuple(c if m is None else f"{m}:{c}" for m, c in encoder_parts(feature))
        for p in parts:
            vs, c = self.part(p)
            if vs.columns:  # a column that store lacks: one line listing the ones it has (an empty one fills on a miss)
                vs.feature_columns(c)
        return parts

    def feature_dim(self, feature: str | None) -> int | None:
        dims = [vs.column_dim(c) for vs, c in map(self.part, self.feature_columns(feature or self.columns[0]))]
        return None if None in dims else int(sum(dims))

    def refresh(self) -> None:
        for vs in (self.primary, *self.others.values()):
            vs.refresh()

    def _find(self, keys, column: str | None = None) -> np.ndarray:
        if column is None:
            return self.primary._find(keys)
        vs, c = self.part(column)
        return vs._find(keys, c)

    def locate(self, keys, column: str | None = None) -> np.ndarray:
        if column is None:
            return self.primary.locate(keys)
        vs, c = self.part(column)
        return vs.locate(keys, c)

    def missing(self, keys, columns=None) -> list[str]:
        keys = list(keys)
        lacking = np.zeros(len(keys), bool)
        for p in columns or self.columns:
            lacking |= self._find(keys, p) < 0
        return [keys[i] for i in np.flatnonzero(lacking)]

    def columns_at(self, gids_per_column: list[np.ndarray], feature: str) -> Rows:
        parts = []
        for p, gids in zip(self.feature_columns(feature), gids_per_column):
            vs, c = self.part(p)
            parts.append(vs.columns_at([gids], c))
        return parts[0] if len(parts) == 1 else ConcatRows(parts)

    def matrix(self, keys, column: str | None = None) -> Rows:
        keys = list(keys)
        feature = column or self.columns[0]
        return self.columns_at([self.locate(keys, p) for p in self.feature_columns(feature)], feature)
