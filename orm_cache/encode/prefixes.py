"""Step prefixes from one forward pass: which prefixes of a chunk's texts can be pooled from their
text's pass, and which must be embedded on their own.

In a causal model the hidden state at a token depends only on the tokens before it, so a prefix
whose tokens are the first tokens of its trace's tokens has, at every position, the states of the
trace's pass there: its vector is pooled from that pass (:func:`~.pooling.pool_prefixes`). The
check is exact, not assumed: each prefix is tokenized on its own, as embedding it alone would
tokenize it, and it is pooled from the trace's pass only when those ids are the trace's first ids
(and its text the trace text's beginning). A step boundary inside a token (the trace's tokenizer
merged the last characters of a step with the next one's first), a tokenizer that appends a
token at the end of every text, or truncation from the left make the ids differ: that prefix is
embedded on its own, as one more text of the chunk, and counted. Either way a prefix's vector is
the one embedding its text alone gives (within float tolerance: another batch shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ChunkPlan:
    """The texts one chunk runs through the encoder (its traces, then the prefixes embedded on
    their own) and the prefixes pooled from each text's pass."""

    keys: list[str]
    write: np.ndarray  # (N,) bool: the text's own row is stored (a trace run only for its prefixes: not)
    ids: list[list[int]]
    n_tokens: np.ndarray  # (N,)
    truncated: np.ndarray  # (N,)
    first: np.ndarray  # (N,) first response token
    starts: list  # (N,) the response's character offset
    prefixes: list | None = None  # N lists of (tokens, first response token), or None: no prefixes
    prefix_keys: list = field(default_factory=list)  # N lists of keys
    prefix_truncated: list = field(default_factory=list)  # N lists of bool
    pooled_prefixes: int = 0  # prefixes pooled from their trace's pass
    alone: int = 0  # prefixes embedded on their own

    def prefix_rows(self, which) -> tuple[list[str], np.ndarray, np.ndarray, list]:
        """``(keys, tokens, truncated, starts)`` of the prefixes ``which`` (``(text, slot)`` pairs)."""
        return ([self.prefix_keys[i][j] for i, j in which],
                np.array([self.prefixes[i][j][0] for i, j in which], dtype=np.int32),
                np.array([self.prefix_truncated[i][j] for i, j in which], dtype=bool),
                [self.starts[i] for i, _ in which])


def plan_chunk(encoder, chunk: list[tuple]) -> ChunkPlan:
    """The plan of a chunk of ``(key, text, start, special tokens, prefixes, write)`` items
    (``prefixes``: the ``(key, text)`` of each prefix to store; ``write``: store the text's own
    row too)."""
    texts = [it[1] for it in chunk]
    starts = [it[2] for it in chunk]
    special = [it[3] for it in chunk]
    ids, n, truncated, first = encoder.tokenize(texts, starts, special)
    plan = ChunkPlan([it[0] for it in chunk], np.array([it[5] for it in chunk], dtype=bool), ids, n, truncated,
                     first, starts)
    flat = [(i, k, t) for i, it in enumerate(chunk) for k, t in it[4]]
    if not flat:
        return plan
    p_ids, p_n, p_truncated, p_first = encoder.tokenize([t for _, _, t in flat], [starts[i] for i, _, _ in flat],
                                                        [special[i] for i, _, _ in flat])
    plan.prefixes = [[] for _ in chunk]
    plan.prefix_keys = [[] for _ in chunk]
    plan.prefix_truncated = [[] for _ in chunk]
    alone = []
    for j, (i, k, t) in enumerate(flat):
        m = int(p_n[j])
        if texts[i].startswith(t) and m <= n[i] and ids[i][:m] == list(p_ids[j]):
            plan.prefixes[i].append((m, int(p_first[j])))
            plan.prefix_keys[i].append(k)
            plan.prefix_truncated[i].append(bool(p_truncated[j]))
            plan.pooled_prefixes += 1
        else:
            alone.append(j)
    if alone:  # one more text each, stored as its own row
        a = np.array(alone, dtype=np.int64)
        plan.keys += [flat[j][1] for j in alone]
        plan.write = np.concatenate([plan.write, np.ones(len(alone), bool)])
        plan.ids = list(plan.ids) + [p_ids[j] for j in alone]
        plan.n_tokens = np.concatenate([plan.n_tokens, p_n[a]])
        plan.truncated = np.concatenate([plan.truncated, p_truncated[a]])
        plan.first = np.concatenate([plan.first, p_first[a]])
        plan.starts = plan.starts + [starts[flat[j][0]] for j in alone]
        plan.prefixes += [[] for _ in alone]
        plan.prefix_keys += [[] for _ in alone]
        plan.prefix_truncated += [[] for _ in alone]
        plan.alone = len(alone)
    return plan


def prefix_args(b: np.ndarray, prefixes: list | None):
    """The ``(rows, ends, firsts)`` tensors of the prefixes of batch texts ``b`` (``prefixes[i]``:
    text i's ``(tokens, first response token)`` pairs), and ``(text, slot)`` of each; None without."""
    if prefixes is None:
        return None, []
    rows, ends, firsts, which = [], [], [], []
    for row, i in enumerate(b):
        for j, (n, f) in enumerate(prefixes[i]):
            rows.append(row), ends.append(n), firsts.append(f), which.append((int(i), j))
    if not rows:
        return None, []
    return (torch.tensor(rows), torch.tensor(ends), torch.tensor(firsts)), which


def batch_rows(b: np.ndarray, which: list) -> np.ndarray:
    """``(P,)`` the row of batch ``b`` holding each prefix's text (``which``: ``(text, slot)``)."""
    row_of = {int(i): r for r, i in enumerate(b)}
    return np.array([row_of[i] for i, _ in which], dtype=np.int64)
