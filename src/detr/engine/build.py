"""The model a training config describes: one builder for the trainer and for loading a run's ``checkpoint.pth``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from ..models.detr import DETR
from ..models.registry import create_model
from ..processing.preprocess import ImagePreprocessor
from .config import TrainConfig


def run_preprocessing(config: TrainConfig) -> ImagePreprocessor:
    """How a run reads images at evaluation, and how its model reads them afterwards (predict, eval): short
    side ``eval_size``, long side at most ``max_size``, ImageNet mean and std, padding to a multiple of 32."""
    return ImagePreprocessor(short_side=config.eval_size, max_size=config.max_size)


def build_model(
    config: TrainConfig,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None,
    weights: str | Mapping[str, Tensor] | None = None,
    **overrides: Any,
) -> DETR:
    """The model of ``config`` (its factory, queries, auxiliary loss, ``model_kwargs``, a mask head with
    ``masks`` or ``panoptic``) for the label space ``class_names`` / ``category_ids``, reading images as
    :func:`run_preprocessing` says, with ``weights`` loaded when given (``overrides``: more factory
    arguments, e.g. ``reinit_heads``). The ImageNet backbone is loaded only when the run starts without
    weights and asks for it."""
    args: dict[str, Any] = dict(
        num_classes=len(class_names),
        class_names=list(class_names),
        category_ids=None if category_ids is None else list(category_ids),
        preprocessing=run_preprocessing(config),
        num_queries=config.num_queries,
        aux_loss=config.aux_loss,
        pretrained_backbone=config.pretrained_backbone and weights is None,
        weights=weights,
        **({"masks": True} if config.masks or config.panoptic else {}),
        **config.model_kwargs,
    )
    return create_model(config.model, **{**args, **overrides})


__all__ = ["build_model", "run_preprocessing"]
