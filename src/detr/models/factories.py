"""Registered model factories: ``detr_r18`` ... ``detr_r101_dc5``, thin entry points over :func:`build_detr`.

Each builds the reference architecture (ResNet with frozen batch norm, 6 + 6 layer
post-norm transformer, d_model 256, 8 heads, FFN 2048, dropout 0.1, sine position
encoding) and optionally loads a checkpoint through ``weights=``; keyword switches turn on
the training options of :mod:`detr.options`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ..data.coco_categories import COCO_CLASS_NAMES, COCO_PANOPTIC_CLASS_NAMES
from ..hub.checkpoints import load_weights
from ..options import OPTION_SWITCHES, from_switches
from ..processing.preprocess import ImagePreprocessor
from .architectures import ARCHITECTURES, PANOPTIC_ARCHITECTURES
from .backbone import ResNetBackbone
from .detr import DETR, DETRConfig
from .position_encoding import build_position_encoding
from .registry import create_model, register_model
from .segmentation import DETRSegmentation
from .transformer import Transformer


def build_detr(
    backbone_name: str,
    dilation: bool,
    *,
    pretrained_backbone: bool = False,
    num_classes: int = 91,
    num_queries: int = 100,
    aux_loss: bool = True,
    weights: str | Path | Mapping[str, Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    preprocessing: ImagePreprocessor | Mapping[str, Any] | None = None,
    reinit_heads: bool = True,
    train_backbone: bool = True,
    backbone_norm: str = "frozen_bn",
    position_embedding: str = "sine",
    d_model: int = 256,
    nhead: int = 8,
    num_encoder_layers: int = 6,
    num_decoder_layers: int = 6,
    dim_feedforward: int = 2048,
    dropout: float = 0.1,
    normalize_before: bool = False,
    freeze_stem: bool = True,
    backbone_layers: int = 4,
    backbone_blocks: int | None = None,
    backbone_width: float = 1.0,
    backbone_pyramid: bool = False,
    masks: bool = False,
    freeze_detector: bool = False,
    **kwargs: Any,
) -> DETR | DETRSegmentation:
    """Build a DETR from its parts; the registered factories fix the backbone.

    ``kwargs``: the training options' switches (:data:`detr.options.OPTION_SWITCHES`: ``query_groups``,
    ``denoising_groups``, ``box_refinement``, ``two_stage``, ``deformable_decoder`` ..., their defaults in
    :func:`detr.options.from_switches`), the rest to :class:`DETRConfig` (``matcher``, ``class_loss_coef``,
    ``bbox_loss_coef``, ``giou_loss_coef``, ``eos_coef``, ``iou_class_targets``). The label space (``class_names``, ``category_ids``) is the one
    given, else the checkpoint's (``weights``), else COCO's for 91 classes (class index = category id).
    ``reinit_heads``: with ``weights`` of other ``num_classes`` / ``num_queries``, fine-tune (rows of
    classes known by name kept, the others new) rather than refuse (see :func:`load_weights`).
    ``masks``: add the paper's mask head (:class:`~detr.models.segmentation.DETRSegmentation`);
    ``freeze_detector`` then trains the mask head only (the reference's second stage).
    """
    if freeze_detector and not masks:
        raise ValueError("freeze_detector trains a mask head on a fixed detector: it needs masks=True")
    backbone = ResNetBackbone(
        backbone_name,
        pretrained=pretrained_backbone and weights is None,  # full weights overwrite the backbone anyway
        dilation=dilation,
        train_backbone=train_backbone,
        norm=backbone_norm,
        freeze_stem=freeze_stem,
        num_layers=backbone_layers,
        blocks_per_stage=backbone_blocks,
        width=backbone_width,
        pyramid=backbone_pyramid,
    )
    transformer = Transformer(
        d_model=d_model,
        nhead=nhead,
        num_encoder_layers=num_encoder_layers,
        num_decoder_layers=num_decoder_layers,
        dim_feedforward=dim_feedforward,
        dropout=dropout,
        normalize_before=normalize_before,
    )
    switches = {name: kwargs.pop(name) for name in OPTION_SWITCHES if name in kwargs}
    unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(DETRConfig)})
    if unknown:
        raise TypeError(
            f"unknown model arguments {unknown}: a factory takes build_detr's arguments, the options' switches "
            f"{list(OPTION_SWITCHES)} and DETRConfig's loss settings"
        )
    config = DETRConfig(backbone, transformer, num_classes, num_queries=num_queries, aux_loss=aux_loss, **kwargs)
    labels_given = class_names is not None
    if class_names is None and num_classes == len(COCO_CLASS_NAMES):
        class_names, category_ids = COCO_CLASS_NAMES, category_ids or list(range(num_classes))
    options = from_switches(**switches)
    model = DETR(
        config,
        position_encoding=build_position_encoding(position_embedding, d_model),
        class_names=class_names,
        category_ids=category_ids,
        preprocessing=ImagePreprocessor.from_dict(preprocessing)
        if isinstance(preprocessing, Mapping)
        else preprocessing,
        options=options,
    )
    if masks:
        model = DETRSegmentation(model, freeze_detr=freeze_detector)
    if weights is not None:
        load_weights(model, weights, reinit_heads=reinit_heads, keep_labels=labels_given)
    return model


def _register_architecture(name: str) -> Callable[..., DETR]:
    """Define and register the factory ``name`` of :data:`ARCHITECTURES`: DETR on its ResNet (with DC5 dilation)."""
    backbone, dilation, doc = ARCHITECTURES[name]

    def factory(
        pretrained_backbone: bool = False,
        num_classes: int = 91,
        num_queries: int = 100,
        aux_loss: bool = True,
        weights: Any = None,
        **kwargs: Any,
    ) -> DETR:
        model = build_detr(
            backbone,
            dilation,
            pretrained_backbone=pretrained_backbone,
            num_classes=num_classes,
            num_queries=num_queries,
            aux_loss=aux_loss,
            weights=weights,
            **kwargs,
        )
        # how to rebuild this model (save_pretrained); the weights are saved separately, and how to load them
        # (reinit_heads) is not part of the model
        build_args = {k: v for k, v in kwargs.items() if k != "reinit_heads"}
        model.factory_spec = {
            "model": name,
            "kwargs": {"num_classes": num_classes, "num_queries": num_queries, "aux_loss": aux_loss, **build_args},
        }
        return model

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc + (
        "\n\n    Arguments: ``pretrained_backbone`` (ImageNet ResNet), ``num_classes``, ``num_queries``,"
        "\n    ``aux_loss``, ``weights`` (see :func:`detr.hub.checkpoints.fetch_checkpoint`), and any argument of"
        "\n    :func:`build_detr`."
    )
    return register_model(factory)


detr_r18 = _register_architecture("detr_r18")
detr_r34 = _register_architecture("detr_r34")
detr_r50 = _register_architecture("detr_r50")
detr_r101 = _register_architecture("detr_r101")
detr_r50_dc5 = _register_architecture("detr_r50_dc5")
detr_r101_dc5 = _register_architecture("detr_r101_dc5")


def _register_panoptic(name: str) -> Callable[..., DETRSegmentation]:
    """Define and register the panoptic factory ``name`` of :data:`PANOPTIC_ARCHITECTURES`: its detector
    factory with ``masks=True`` and COCO panoptic's 250-class label space (class index = category id)."""
    detector, doc = PANOPTIC_ARCHITECTURES[name]

    def factory(num_classes: int = 250, **kwargs: Any) -> DETRSegmentation:
        if not kwargs.pop("masks", True):
            raise ValueError(f"{name} is a mask model; for boxes only use {detector}")
        labels = {}
        if num_classes == len(COCO_PANOPTIC_CLASS_NAMES) and "class_names" not in kwargs:
            labels = {"class_names": COCO_PANOPTIC_CLASS_NAMES, "category_ids": list(range(num_classes))}
        model = create_model(detector, num_classes=num_classes, masks=True, **labels, **kwargs)
        rebuild = {k: v for k, v in model.factory_spec["kwargs"].items() if k != "masks" and k not in labels}
        model.factory_spec = {"model": name, "kwargs": rebuild}  # the default labels come back by themselves
        return model

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        doc + f"\n\n    Arguments: those of ``{detector}`` (``masks`` is always on); ``num_classes`` defaults to 250."
    )
    return register_model(factory)


detr_r50_panoptic = _register_panoptic("detr_r50_panoptic")
detr_r50_dc5_panoptic = _register_panoptic("detr_r50_dc5_panoptic")
detr_r101_panoptic = _register_panoptic("detr_r101_panoptic")


# ``detr.from_pretrained(directory)``: a model of any registered factory (or of parts) back from its directory
from_pretrained = DETR.from_pretrained
