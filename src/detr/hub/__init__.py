"""Weights: published checkpoints as data (:mod:`.pretrained`), cached downloads (:mod:`.download`),
safe reading and layout conversion (:mod:`.checkpoints`), and saving and rebuilding models
(:mod:`.serialization`, imported on its own: it needs the model's parts, which need the others)."""

from .checkpoints import CheckpointError, fetch_checkpoint, load_weights, read_state_dict
from .pretrained import PRETRAINED, PretrainedWeights, list_pretrained

__all__ = [
    "PRETRAINED",
    "CheckpointError",
    "PretrainedWeights",
    "fetch_checkpoint",
    "list_pretrained",
    "load_weights",
    "read_state_dict",
]
