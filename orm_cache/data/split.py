"""A split, validated: its distinct texts by key, its pairs, its labelled traces (the types
:mod:`.ingest` builds and :mod:`.pairs` fills in), and merging two splits (a refit)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from ..text import TextRecipe


@dataclass
class Pairs:
    """Pairwise comparisons by key; ``chosen[i]`` should outscore ``rejected[i]``."""

    chosen: list[str]
    rejected: list[str]
    group: list | None = None
    meta: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.chosen)


@dataclass
class SplitData:
    """One split, validated: the distinct texts by key, the pointwise rows if any, the pairs."""

    source: str
    split: str
    kind: str  # "pairwise" | "pointwise"
    texts: dict[str, str]  # key -> text, distinct, in first-seen order
    pairs: Pairs
    keys: list[str] | None = None  # pointwise: one key per row
    labels: np.ndarray | None = None  # pointwise: (N,) int8 in {0, 1}
    groups: list | None = None  # pointwise: one group per row (None when no group column)
    stats: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=lambda: TextRecipe(prompt_col=None, kind="template").to_dict())  # how rows became texts
    # key -> character offset where the response (a conversation's final assistant content) starts
    # in the text; None where a chat template changed that content beyond recognition
    response_starts: dict[str, int | None] = field(default_factory=dict)
    # pointwise: every metadata column (not text, label, prompt or group) that some row has
    trace_columns: list[str] = field(default_factory=list)
    # pointwise: column -> one value per row (None where absent), for DataSpec.keep_columns only
    trace_meta: dict[str, list] = field(default_factory=dict)
    # key -> every response start the split gives it, for texts whose rows disagree (a bare string
    # in one row, the same text built from a prompt and a response in another)
    start_conflicts: dict[str, set] = field(default_factory=dict)
    # DataSpec.step_prefixes: trace key -> the keys of its step prefixes (in step order), and their texts
    steps: dict[str, list[str]] = field(default_factory=dict)
    step_texts: dict[str, str] = field(default_factory=dict)

    @property
    def special_tokens(self) -> bool:
        """Whether this split's texts are tokenized with the tokenizer's special tokens (not
        when a chat template rendered them)."""
        return TextRecipe.from_dict(self.recipe).special_tokens

    def items(self) -> list[tuple[str, str, int | None, bool]]:
        """``(key, text, response start, special tokens)`` of every distinct text, as stage 1
        takes them (:func:`~orm_cache.encode.embedder.embed_texts`, which reads them twice)."""
        special = self.special_tokens
        return [(k, t, self.response_starts.get(k, 0), special,
                 tuple((p, self.step_texts[p]) for p in self.steps.get(k, ()))) for k, t in self.texts.items()]

    @property
    def identity(self) -> dict:
        """What identifies this data in a checkpoint: source, split and a digest of the pairs."""
        h = hashlib.sha256()
        for c, r in zip(self.pairs.chosen, self.pairs.rejected):
            h.update(f"{c}{r}".encode())
        return {"source": self.source, "split": self.split, "kind": self.kind,
                "n_pairs": len(self.pairs), "n_texts": len(self.texts),
                "pairs_sha256": h.hexdigest(),
                **({k: self.stats[k] for k in ("step_points", "step_pattern") if k in self.stats})}


def merge_splits(a: SplitData, b: SplitData) -> SplitData:
    """One split holding both splits' texts and pairs (and labelled traces), e.g. train +
    validation for a refit; named ``"<a>+<b>"``. Pairwise with pointwise is refused."""
    if a.kind != b.kind:
        raise DataError(f"cannot merge split {a.split!r} ({a.kind}) with {b.split!r} ({b.kind})")
    join = lambda x, y, n, m: None if x is None and y is None else (x or [None] * n) + (y or [None] * m)  # noqa: E731
    pairs = Pairs(a.pairs.chosen + b.pairs.chosen, a.pairs.rejected + b.pairs.rejected,
                  join(a.pairs.group, b.pairs.group, len(a.pairs), len(b.pairs)),
                  (a.pairs.meta or [{}] * len(a.pairs)) + (b.pairs.meta or [{}] * len(b.pairs)))
    merged = SplitData(a.source if a.source == b.source else f"{a.source} + {b.source}", f"{a.split}+{b.split}",
                       a.kind, {**a.texts, **b.texts}, pairs, stats={"pairs": len(pairs)}, recipe=a.recipe,
                       response_starts={**a.response_starts, **b.response_starts})
    merged.start_conflicts = {**a.start_conflicts, **b.start_conflicts}
    for k in a.response_starts.keys() & b.response_starts.keys():
        if a.response_starts[k] != b.response_starts[k]:
            merged.start_conflicts[k] = {a.response_starts[k], b.response_starts[k]}
    if a.kind == "pointwise":
        merged.keys = a.keys + b.keys
        merged.labels = np.concatenate([a.labels, b.labels])
        merged.groups = join(a.groups, b.groups, len(a.keys), len(b.keys))
    return merged
