"""Two-stage anchors: the decoder's anchors are the dense head's best proposals.

Two-stage query selection as in Deformable DETR, and DINO's mixed query selection (Zhang et al.,
2022): each of the model's queries gets as its anchor the box of one of the best-scoring encoder
tokens of the dense head (:mod:`detr.options.dense`), one token per query; the queries' content
stays learned. Positions so come from the image, from the first layer on. Needs anchor-box
refinement (:mod:`detr.options.refinement`) and the dense head, which then runs at inference too.

Adds no parameters. With query groups every group gets the same anchors.

``distinct_iou``: choose distinct proposals, as DDQ-DETR's distinct queries (Zhang et al., 2023): a
proposal overlapping a better one by more than this IoU is passed over while distinct ones remain
(class-agnostic, fast-NMS style over the best candidates: fixed shapes, exportable). Without it (the
default, DINO's rule), large regions whose every token proposes the same box (panoptic "stuff") take
most of the anchors and leave the smaller objects none.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..models.layers import broadcast_box_iou
from .base import DETROption, OptionState
from .dense import Proposals

if TYPE_CHECKING:
    from ..models.detr import DETR


def select_anchors(
    proposals: Proposals, learned: Tensor, num_queries: int, groups: int, distinct_iou: float | None = None
) -> Tensor:
    """The boxes of the best-scoring valid tokens, one per query, the same for each query group;
    the learned anchors, in order, stand in for missing valid tokens (a map with fewer unpadded
    tokens than queries). ``distinct_iou``: proposals that overlap a better one by more than this
    come after every distinct one (see the module docstring).

    proposals: the dense head's (logits (B, HW, K), boxes (B, HW, 4), anchors, valid (B, HW));
    learned: (B, G*Q, 4). Returns (B, G*Q, 4) normalized cxcywh, without gradient.
    """
    logits, boxes, _, valid = proposals
    score = logits.float().max(-1).values.masked_fill(~valid, -math.inf)  # (B, HW) best class score per token
    if distinct_iou is not None:
        score = demote_duplicates(score, boxes.float(), distinct_iou, candidates=4 * num_queries)
    # the learned anchors as Q more candidates, ranked below every valid token and above padding,
    # so that top-Q always has Q candidates (a fixed k, whatever the image size: ONNX export)
    # (-1e6: far below any real logit, yet distinct steps of 1 in float32, so their order holds)
    reserve = -1e6 - torch.arange(num_queries, device=score.device, dtype=torch.float32)  # (Q,)
    score = torch.cat([score, reserve.expand(score.shape[0], -1)], dim=1)  # (B, HW+Q)
    candidates = torch.cat([boxes, learned[:, :num_queries].to(boxes.dtype)], dim=1)  # (B, HW+Q, 4)
    index = score.topk(num_queries, dim=1).indices  # (B, Q)
    chosen = candidates.gather(1, index.unsqueeze(-1).expand(-1, -1, 4)).detach()  # (B, Q, 4)
    return chosen.repeat(1, groups, 1)  # (B, G*Q, 4)


def demote_duplicates(score: Tensor, boxes: Tensor, iou_threshold: float, candidates: int) -> Tensor:
    """``score`` (B, N) with every one of the best ``candidates`` tokens that overlaps a better-scored one by
    more than ``iou_threshold`` (boxes (B, N, 4) cxcywh) moved below all the others, its order among the
    demoted kept (fast NMS: a box demoted still demotes those below it, which only makes the choice more
    distinct). Tokens beyond the candidates are left as they are; -inf (padding) stays -inf."""
    from torchvision.ops import box_convert

    k = min(candidates, score.shape[1])
    top, index = score.topk(k, dim=1)  # (B, k), best first
    xyxy = box_convert(boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4)), "cxcywh", "xyxy")  # (B, k, 4)
    iou = broadcast_box_iou(xyxy[:, :, None], xyxy[:, None])  # (B, k, k)
    better = torch.ones(k, k, dtype=torch.bool, device=score.device).triu(1)  # [i, j]: i ranks above j
    duplicate = (iou.masked_fill(~better, 0).amax(1) > iou_threshold) & torch.isfinite(top)  # (B, k)
    # demoted below every real score and above the learned anchors' reserve (-1e6)
    demoted = torch.where(duplicate, top.clamp(min=-1e4) - 1e5, top)
    return score.scatter(1, index, demoted)


class TwoStageAnchors(DETROption):
    """Anchors of the model's queries from the dense head's best proposals (see the module docstring)."""

    name = "two_stage"
    order = 4
    used_at_inference = True
    requires = ("refinement", "dense_head")
    may_leave_parameters_unused = True  # the learned anchors only stand in for missing tokens

    def __init__(self, distinct_iou: float | None = None) -> None:
        super().__init__()
        if distinct_iou is not None and not 0 < distinct_iou < 1:
            raise ValueError(f"distinct_iou must be in (0, 1) or None, got {distinct_iou}")
        self.distinct_iou = distinct_iou

    def spec(self) -> dict[str, Any]:
        return {"distinct_iou": self.distinct_iou}

    def missing_requirement_message(self, missing: list[str]) -> str:
        return (
            "two_stage selects anchor boxes from the dense head: set box_refinement=True and dense_aux_loss=True "
            "too (the AnchorRefinement and DenseHead options)"
        )

    def read_encoder(self, model: DETR, state: OptionState) -> None:
        if state.proposals is None:
            state.proposals = model.dense_head.propose(state)

    def add_queries(self, model: DETR, state: OptionState) -> None:
        span = state.spans["matching"]
        assert state.proposals is not None and span.anchors is not None
        groups = len(span) // model.num_queries
        span.anchors = select_anchors(state.proposals, span.anchors, model.num_queries, groups, self.distinct_iou)
