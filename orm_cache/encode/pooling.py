"""Pooling: pure functions from hidden states and an attention mask to one vector per text."""

from __future__ import annotations

import torch

from .spec import POOLINGS
from ..errors import ConfigError


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the final non-padding token of each row, whatever the padding side.

    ``mask`` is ``(B, T)`` with 1 for real tokens. The last 1 is the argmax of ``position * mask``:
    with right padding that is ``mask.sum(1) - 1``, with left padding it is ``T - 1``.
    """
    B, T = mask.shape
    positions = torch.arange(T, device=mask.device).expand(B, T)  # (B, T)
    return (positions * mask.long()).argmax(dim=1)  # (B,)


def response_mask(mask: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
    """``mask`` (B, T) restricted to each row's response: its real tokens from the ``start[b]``-th
    on (counted among real tokens, so either padding side gives the same tokens). ``start`` is
    ``(B,)``; 0, a negative value (response not found) or None keep every real token."""
    if start is None:
        return mask
    B, T = mask.shape
    assert start.shape == (B,), (mask.shape, start.shape)
    real = mask > 0  # (B, T)
    rank = real.long().cumsum(dim=1) - 1  # (B, T) index of each real token among its row's real tokens
    keep = real & (rank >= start.to(mask.device).clamp(min=0).unsqueeze(1))  # (B, T)
    return keep.to(mask.dtype)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str,
         response_start: torch.Tensor | None = None) -> torch.Tensor:
    """``hidden`` (B, T, D), ``mask`` (B, T) -> (B, D) by ``last`` token, ``mean`` over tokens, or
    ``response_mean``: the mean over the tokens of :func:`response_mask` (``response_start`` (B,)
    is each row's first response token among its real tokens; None: every token, as ``mean``)."""
    B, T, D = hidden.shape
    assert mask.shape == (B, T), (hidden.shape, mask.shape)
    if how == "last":
        idx = last_token_index(mask)  # (B,)
        return hidden[torch.arange(B, device=hidden.device), idx]  # (B, D)
    if how == "response_mean":
        return pool(hidden, response_mask(mask, response_start), "mean")  # (B, D)
    if how == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        # Sum in float32: an fp16 sum over 512 tokens loses precision.
        total = (hidden.float() * m.float()).sum(dim=1)  # (B, D)
        return (total / m.float().sum(dim=1).clamp(min=1.0)).to(hidden.dtype)  # (B, D)
    raise ConfigError(f"pooling {how!r} is not one of {', '.join(POOLINGS)}")


def pool_prefixes(hidden: torch.Tensor, mask: torch.Tensor, how: str, rows: torch.Tensor, ends: torch.Tensor,
                  firsts: torch.Tensor | None = None) -> torch.Tensor:
    """``(P, D)``: what :func:`pool` gives each of ``P`` prefixes of the batch's texts, from the
    same forward pass. Prefix ``p`` is the first ``ends[p]`` real tokens of batch row ``rows[p]``
    (``rows`` sorted); in a causal model their hidden states are the prefix's own, whatever
    follows. ``firsts[p]``: its first response token among its real tokens (response_mean; < 0 or
    None: every token). Either padding side (positions are counted among real tokens)."""
    B, T, D = hidden.shape
    P = rows.shape[0]
    assert mask.shape == (B, T) and ends.shape == (P,), (hidden.shape, mask.shape, rows.shape, ends.shape)
    real = mask > 0  # (B, T)
    rank = real.long().cumsum(dim=1) - 1  # (B, T) index of each real token among its row's real tokens
    r = rank[rows]  # (P, T)
    keep = real[rows] & (r < ends.unsqueeze(1))  # (P, T) the prefix's tokens
    if how == "last":
        pos = (keep & (r == (ends - 1).unsqueeze(1))).long().argmax(dim=1)  # (P,)
        return hidden[rows, pos]  # (P, D)
    if how == "response_mean" and firsts is not None:
        f = firsts.to(mask.device)
        keep &= (r >= f.clamp(min=0).unsqueeze(1)) | (f < 0).unsqueeze(1)
    elif how not in ("mean", "response_mean"):
        raise ConfigError(f"pooling {how!r} is not one of {', '.join(POOLINGS)}")
    w = keep.float() / keep.sum(dim=1, keepdim=True).clamp(min=1).float()  # (P, T)
    # one (P_b, T) @ (T, D) product per batch row, as a batched matmul over rows padded to the most prefixes
    counts = torch.bincount(rows, minlength=B)  # (B,)
    slot = torch.arange(P, device=rows.device) - (counts.cumsum(0) - counts)[rows]  # (P,) index within its row
    W = torch.zeros(B, int(counts.max()) if P else 0, T, device=hidden.device)  # (B, Pmax, T)
    W[rows, slot] = w
    return torch.bmm(W, hidden.float())[rows, slot].to(hidden.dtype)  # (P, D)


def response_logprob(hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                     response_start: torch.Tensor | None, lm_head, chunk: int = 1024
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3)`` float32 mean, min and sum of the log-probabilities of each row's response tokens,
    each predicted by ``lm_head`` (a function ``(M, D) -> (M, V)`` logits) from the final hidden
    state ``hidden`` (B, T, D) of the token before it, and ``(B,)`` how many tokens were scored.
    Response tokens are :func:`response_mask`'s, except that a row whose response was not found
    (``response_start < 0``: truncated away, or unrecognisable) has none: its likelihood is not
    the prompt's. A token whose previous position is padding (a row's first real token) has no
    prediction and is skipped. A row with no scored token gets zeros and a count of 0 (said at
    embed, left out of ``orm-cache likelihood``). ``lm_head`` runs on the scored positions only,
    ``chunk`` at a time, so the ``(T, V)`` logits of a whole batch never exist."""
    B, T, D = hidden.shape
    real = mask > 0  # (B, T)
    target = response_mask(mask, response_start) > 0  # (B, T)
    if response_start is not None:
        target &= (response_start.to(mask.device) >= 0).unsqueeze(1)  # not found: nothing is the response's
    target[:, 1:] &= real[:, :-1]  # predicted from the previous position: it must be a real token
    target[:, 0] = False
    rows, cols = target.nonzero(as_tuple=True)  # (M,), (M,)
    lp = torch.empty(len(rows), dtype=torch.float32, device=hidden.device)  # (M,)
    for a in range(0, len(rows), chunk):
        r, c = rows[a:a + chunk], cols[a:a + chunk]
        logits = lm_head(hidden[r, c - 1]).float()  # (m, V)
        lp[a:a + chunk] = logits.log_softmax(dim=-1).gather(1, input_ids[r, c].unsqueeze(1)).squeeze(1)
    count = torch.bincount(rows, minlength=B).to(torch.float32)  # (B,)
    total = torch.zeros(B, dtype=torch.float32, device=hidden.device).index_add_(0, rows, lp)  # (B,)
    low = torch.full((B,), float("inf"), device=hidden.device).scatter_reduce_(0, rows, lp, "amin")  # (B,)
    none = count == 0
    mean = torch.where(none, torch.zeros_like(total), total / count.clamp(min=1))
    low = torch.where(none, torch.zeros_like(low), low)
    return torch.stack([mean, low, total], dim=1), count  # (B, 3), (B,)
