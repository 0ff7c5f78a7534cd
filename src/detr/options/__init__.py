"""Training options beyond the paper, each a part of its own on one extension point (:mod:`.base`).

===================  ====================================  ==========================================
option               factory switch (``model_kwargs``)     what it does
===================  ====================================  ==========================================
QueryGroups          ``query_groups=G``                    Group DETR: G matched query groups in training
AnchorRefinement     ``box_refinement=True``               DAB-DETR: anchor-box queries refined per layer
DenoisingQueries     ``denoising_groups=G`` (+ noise)      DN-DETR: noised ground truth to reconstruct
DenseHead            ``dense_aux_loss=True``               Co-DETR: one-to-many head on the encoder
TwoStageAnchors      ``two_stage=True``                    DINO: anchors from the dense head's proposals
DeformableDecoder    ``deformable_decoder=True``           Deformable DETR: queries read points of their box
===================  ====================================  ==========================================

``DETR(config, options=[DenoisingQueries(groups=4), DenseHead()])`` builds a model with options;
the factories take the switches (:func:`from_switches`).
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import DETROption, OptionState, QuerySpan
from .deformable import DeformableDecoder
from .denoising import DenoisingQueries
from .dense import DenseHead
from .query_groups import QueryGroups
from .refinement import AnchorRefinement
from .two_stage import TwoStageAnchors

OPTION_TYPES: dict[str, type[DETROption]] = {
    cls.__name__: cls
    for cls in (QueryGroups, AnchorRefinement, DenoisingQueries, DenseHead, TwoStageAnchors, DeformableDecoder)
}


def _default(option: type[DETROption], argument: str) -> Any:
    """The default of an option's constructor argument: each default is written once, in the option's own file."""
    return inspect.signature(option.__init__).parameters[argument].default


def from_switches(
    query_groups: int = 1,
    denoising_groups: int = 0,
    denoising_box_noise: float = _default(DenoisingQueries, "box_noise"),
    denoising_label_noise: float = _default(DenoisingQueries, "label_noise"),
    box_refinement: bool = False,
    dense_aux_loss: bool = False,
    dense_center_cells: float = _default(DenseHead, "center_cells"),
    dense_varifocal: bool = _default(DenseHead, "varifocal"),
    dense_box_coding: str = _default(DenseHead, "box_coding"),
    dense_per_target: bool = _default(DenseHead, "per_target"),
    two_stage: bool = False,
    two_stage_distinct_iou: float | None = _default(TwoStageAnchors, "distinct_iou"),
    deformable_decoder: bool = False,
    deformable_points: int = _default(DeformableDecoder, "points"),
) -> list[DETROption]:
    """The options the factories' keyword switches turn on (all off: the paper's model)."""
    options: list[DETROption] = []
    if query_groups != 1:
        options.append(QueryGroups(query_groups))
    if box_refinement:
        options.append(AnchorRefinement())
    if denoising_groups:
        options.append(DenoisingQueries(denoising_groups, denoising_box_noise, denoising_label_noise))
    # the dense head's switches, by its constructor's names: one dict to build it and to refuse them without it
    dense = {
        "center_cells": dense_center_cells,
        "varifocal": dense_varifocal,
        "box_coding": dense_box_coding,
        "per_target": dense_per_target,
    }
    if dense_aux_loss:
        options.append(DenseHead(**dense))
    elif any(value != _default(DenseHead, name) for name, value in dense.items()):
        raise ValueError(
            "dense_center_cells, dense_varifocal, dense_box_coding and dense_per_target change the dense head: "
            "set dense_aux_loss=True with them"
        )
    if two_stage:
        options.append(TwoStageAnchors(two_stage_distinct_iou))
    elif two_stage_distinct_iou is not None:
        raise ValueError("two_stage_distinct_iou chooses among the two-stage anchors: set two_stage=True with it")
    if deformable_decoder:
        options.append(DeformableDecoder(deformable_points))
    return options


# the switches' names, as the factories take them (their defaults are from_switches')
OPTION_SWITCHES = tuple(inspect.signature(from_switches).parameters)

__all__ = [
    "OPTION_SWITCHES",
    "OPTION_TYPES",
    "AnchorRefinement",
    "DETROption",
    "DeformableDecoder",
    "DenoisingQueries",
    "DenseHead",
    "OptionState",
    "QueryGroups",
    "QuerySpan",
    "TwoStageAnchors",
    "from_switches",
]
