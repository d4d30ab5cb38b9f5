"""Where each text's response starts, in tokens: the tokens ``response_mean`` averages.

A text's response starts at a character offset (:attr:`~orm_cache.data.ingest.SplitData.response_starts`:
0 without a prompt, where the final assistant turn's content starts in a conversation, None when
unknown). Its *response tokens* are, among the tokens the encoder sees (after truncation):

* start 0: every token, special ones included, so ``response_mean`` equals ``mean`` exactly;
* otherwise, from the first token whose character span ends after the start (special tokens
  the tokenizer adds have an empty span at 0 and are never that token, so a leading BOS or
  [CLS] is left out) through the last one, trailing special tokens (EOS, [SEP]) included.
  Character spans are the fast tokenizer's ``offset_mapping``, which refers to the original text
  whichever side truncation cut;
* a slow tokenizer (no offsets) counts the tokens of the text before the start instead, which
  agrees with the offsets where the text tokenizes the same on either side of the start (a
  whitespace-splitting tokenizer at a word boundary), not where a token straddles it or BPE
  merges differ across it;
* none, when the start is unknown or truncation removed every response token: the row falls
  back to every token (``mean``), and is counted (``EmbedReport.response_fallback``).

Indices here count a text's own tokens from its first (padding never enters), so they hold for
either padding side; :func:`~orm_cache.encode.pooling.response_mask` places them in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NOT_FOUND = -1  # a first response token that could not be found: pool every token


def first_response_token(offsets: Sequence[tuple[int, int]], start: int | None) -> int:
    """Index of the first token whose character span ends after ``start`` (0 for start 0;
    :data:`NOT_FOUND` when the start is unknown or no token reaches past it)."""
    if start is None:
        return NOT_FOUND
    if start == 0:
        return 0
    return next((i for i, (_, end) in enumerate(offsets) if end > start), NOT_FOUND)


def first_response_token_slow(tok, text: str, start: int | None, ids: list[int], n_full: int) -> int:
    """:func:`first_response_token` without offsets: the leading special tokens of ``ids`` (the
    kept token ids) plus the tokens of ``text[:start]``, less those left truncation cut
    (``n_full`` is the length before truncation); :data:`NOT_FOUND` when it lands on or past the
    trailing special tokens (right truncation removed the response)."""
    if start is None:
        return NOT_FOUND
    if start == 0:
        return 0
    special = set(tok.all_special_ids)
    lead = next((i for i, t in enumerate(ids) if t not in special), len(ids))
    trail = next((i for i, t in enumerate(reversed(ids)) if t not in special), len(ids))
    n_prefix = len(tok(text[:start], add_special_tokens=False)["input_ids"])
    if tok.truncation_side == "left":
        n_prefix = max(n_prefix - (n_full - len(ids)), 0)
    first = lead + n_prefix
    return first if first < len(ids) - trail else NOT_FOUND


def response_token_starts(tok, texts: Sequence[str], starts: Sequence[int | None], ids: list[list[int]],
                          offsets: list | None, n_full: Sequence[int]) -> np.ndarray:
    """``(N,)`` int32 index of each text's first response token in its kept ``ids`` (see the
    module docstring), :data:`NOT_FOUND` where there is none. ``offsets`` are the fast
    tokenizer's offset mappings of ``ids`` (None for a slow tokenizer); ``n_full`` the token
    counts before truncation."""
    if offsets is not None:
        found = [first_response_token(o, s) for o, s in zip(offsets, starts)]
    else:
        found = [first_response_token_slow(tok, t, s, x, n) for t, s, x, n in zip(texts, starts, ids, n_full)]
    return np.asarray(found, dtype=np.int32).reshape(len(texts))
