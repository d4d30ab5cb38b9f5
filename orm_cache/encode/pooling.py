"""Pooling: pure functions from hidden states and an attention mask to one vector per text."""

from __future__ import annotations

import torch


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the final non-padding token of each row, whatever the padding side.

    ``mask`` is ``(B, T)`` with 1 for real tokens. The last 1 is the argmax of ``position * mask``:
    with right padding that is ``mask.sum(1) - 1``, with left padding it is ``T - 1``.
    """
    B, T = mask.shape
    positions = torch.arange(T, device=mask.device).expand(B, T)  # (B, T)
    return (positions * mask.long()).argmax(dim=1)  # (B,)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """``hidden`` (B, T, D), ``mask`` (B, T) -> (B, D) by ``last`` token or ``mean`` over tokens."""
    B, T, D = hidden.shape
    assert mask.shape == (B, T), (hidden.shape, mask.shape)
    if how == "last":
        idx = last_token_index(mask)  # (B,)
        return hidden[torch.arange(B, device=hidden.device), idx]  # (B, D)
    if how == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        # Sum in float32: an fp16 sum over 512 tokens loses precision.
        total = (hidden.float() * m.float()).sum(dim=1)  # (B, D)
        return (total / m.float().sum(dim=1).clamp(min=1.0)).to(hidden.dtype)  # (B, D)
    raise ValueError(f"pooling {how!r} is not one of last, mean")
