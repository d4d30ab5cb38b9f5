"""Stage 2: the heads (linear, MLP, ensembles of either), their losses, trainers and checkpoints
(vectors only; no model)."""

from .checkpoint import CheckpointError, Head
from .kinds import KINDS, LinearHead, MLPHead
from .losses import pairwise_loss
from .train import TrainResult, train

__all__ = ["CheckpointError", "Head", "KINDS", "LinearHead", "MLPHead", "TrainResult", "pairwise_loss", "train"]
