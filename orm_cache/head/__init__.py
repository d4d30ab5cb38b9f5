"""Stage 2: the linear head, its loss, trainers and checkpoints (vectors only; no model)."""

from .checkpoint import CheckpointError, Head
from .losses import pairwise_loss
from .train import TrainResult, train

__all__ = ["CheckpointError", "Head", "TrainResult", "pairwise_loss", "train"]
