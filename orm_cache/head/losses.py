"""The pairwise loss, written as the papers write it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin=0.0, center_coef=0.0) -> torch.Tensor:
    """Bradley-Terry ``-log σ(r_c - r_r - margin)``, plus ``center_coef · mean((r_c + r_r)²)``
    (TRL's ``center_rewards_coefficient``). ``margin`` and ``center_coef`` may be ``(K, 1)``
    tensors when K heads train at once; scores are ``(B,)`` or ``(K, B)``; returns the mean (per head)."""
    loss = -F.logsigmoid(r_chosen - r_rejected - margin).mean(dim=-1)
    if torch.is_tensor(center_coef) or center_coef:
        loss = loss + (center_coef * (r_chosen + r_rejected) ** 2).mean(dim=-1)
    return loss
