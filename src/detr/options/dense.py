"""Dense auxiliary head on the encoder output: one-to-many supervision of every image token.

DETR supervises its backbone and encoder only through a handful of matched queries, which is a
large part of why it learns slowly from scratch. Co-DETR (Zong et al., 2023) adds one-stage
detector heads with one-to-many label assignment on the encoder output, for training only. This
option is the simplest such head: each encoder token (a cell of the feature map) predicts
sigmoid class scores and a box relative to its cell, and is assigned to a target by FCOS-style
centre sampling (Tian et al., 2019):

- a token is positive for a target when its cell centre lies in the target's central region
  (the box shrunk ``center_radius`` times around its centre) or is the cell the centre falls in;
  with ``center_cells`` > 0 also every token whose cell centre is within that many cells of the
  target's centre in both axes, inside the box or not (FCOS's radius of 1.5 strides: a 3 x 3
  neighbourhood, so that an object smaller than a cell has nine positives, not one), among the
  tokens that no target's central region or centre cell claims;
- a token claimed by several targets goes to the one of smallest area;
- every other valid (unpadded) token is background.

Adds: ``class_head`` (d -> K) and ``box_head`` (MLP d -> 4). Loss: sigmoid focal loss
(torchvision's) over all valid tokens and classes (or, with ``varifocal``, VarifocalNet's loss (Zhang
et al., 2021): a positive's target on its class is the IoU of its box with the target's, so that the
score ranks proposals by how well their boxes fit, which is what two-stage anchors take), L1 and
GIoU on the positive tokens' boxes, each divided by the number of positives (averaged over processes
under DDP; with ``per_target``, each target's tokens averaged first, then the targets): ``loss_dense_ce``,
``loss_dense_bbox``, ``loss_dense_giou``. Inference does not use the head, unless the model's two-stage anchors
(:mod:`detr.options.two_stage`) take its best proposals as the decoder's anchors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from ..distributed import mean_count_across_processes
from ..models.layers import MLP, broadcast_box_iou, inverse_sigmoid
from ..processing.checks import Target
from .base import DETROption, OptionState

if TYPE_CHECKING:
    from ..models.detr import DETR

Proposals = tuple[Tensor, Tensor, Tensor, Tensor]
BOX_CODINGS = ("logit", "cells")
# "cells": the most a side may grow or shrink from its anchor's, as a log-scale (e^5: 148x), so that exp stays finite
MAX_LOG_SCALE = 5.0


def varifocal_loss(logits: Tensor, quality: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """VarifocalNet's loss, summed: logits and quality (N, K), quality the IoU target on a positive's class and
    0 elsewhere. A positive's binary cross-entropy is weighted by its quality, a negative's down-weighted as
    focal loss does (alpha * p^gamma); alpha and gamma as in the paper (and RT-DETR)."""
    p = logits.sigmoid().detach()
    weight = torch.where(quality > 0, quality, alpha * p.pow(gamma))  # (N, K)
    return F.binary_cross_entropy_with_logits(logits, quality, weight=weight, reduction="sum")


class DenseHead(DETROption):
    """Class scores and boxes for every encoder token, and their one-to-many loss.

    Args:
        class_coef, bbox_coef, giou_coef: weights of the focal, L1 and GIoU terms; the L1 and GIoU
            weights default to the model's ``bbox_loss_coef`` and ``giou_loss_coef``.
        center_radius: the central region of a target spans this fraction of its width and height.
        anchor_cells: side of each token's initial box, in cells (the head predicts corrections).
        center_cells: tokens within this many cells of a target's centre are positive too (0: off).
        varifocal: the varifocal class loss (IoU targets on positives) instead of the focal one.
        box_coding: how the box head's four outputs make a box from a token's anchor: ``"logit"`` (Deformable
            DETR's: added to the anchor's cx, cy, w, h in logit space) or ``"cells"`` (the centre moved by
            that many cells, the sides scaled by their exponentials, as one-stage detectors do: the same
            output moves a box the same pixels anywhere in the image).
        per_target: the box terms average each target's positive tokens first, then the targets, so that an
            object of one positive token weighs as much as one of fifty (default: every positive token alike).
    """

    name = "dense_head"
    order = 3

    def __init__(
        self,
        class_coef: float = 2.0,
        bbox_coef: float | None = None,
        giou_coef: float | None = None,
        center_radius: float = 0.5,
        anchor_cells: float = 2.0,
        center_cells: float = 0.0,
        varifocal: bool = False,
        box_coding: str = "logit",
        per_target: bool = False,
    ) -> None:
        super().__init__()
        if box_coding not in BOX_CODINGS:
            raise ValueError(f"box_coding must be one of {', '.join(map(repr, BOX_CODINGS))}, got {box_coding!r}")
        self.box_coding = box_coding
        self.per_target = per_target
        if center_cells < 0:
            raise ValueError(f"center_cells must be >= 0 (0: off), got {center_cells}")
        self.center_cells = center_cells
        self.varifocal = varifocal
        self.class_coef, self.bbox_coef, self.giou_coef = class_coef, bbox_coef, giou_coef
        self.center_radius = center_radius
        self.anchor_cells = anchor_cells

    def spec(self) -> dict[str, Any]:
        return {
            "class_coef": self.class_coef,
            "bbox_coef": self.bbox_coef,
            "giou_coef": self.giou_coef,
            "center_radius": self.center_radius,
            "anchor_cells": self.anchor_cells,
            "center_cells": self.center_cells,
            "varifocal": self.varifocal,
            "box_coding": self.box_coding,
            "per_target": self.per_target,
        }

    def attach(self, model: DETR) -> None:
        d_model, config = model.transformer.d_model, model.config
        self.num_classes = model.num_classes
        self.class_head = nn.Linear(d_model, model.num_classes)
        self.box_head = MLP(d_model, d_model, 4, num_layers=3)
        self.weights = {
            "loss_dense_ce": self.class_coef,
            "loss_dense_bbox": config.bbox_loss_coef if self.bbox_coef is None else self.bbox_coef,
            "loss_dense_giou": config.giou_loss_coef if self.giou_coef is None else self.giou_coef,
        }
        nn.init.constant_(self.class_head.bias, -math.log(99.0))  # prior 0.01: the focal loss's start
        nn.init.zeros_(self.box_head.layers[-1].weight)  # first boxes are the anchors
        nn.init.zeros_(self.box_head.layers[-1].bias)

    def anchors(self, h: int, w: int, feat_mask: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
        """Each token's cell as a normalized cxcywh box of the image's valid region, and which tokens are valid.

        Returns anchors (B or 1, h*w, 4) and valid (B or 1, h*w) bool.
        """
        if feat_mask is None:
            valid_h = torch.full((1,), float(h), device=device)
            valid_w = torch.full((1,), float(w), device=device)
            valid = torch.ones(1, h * w, dtype=torch.bool, device=device)
        else:
            valid_h = (~feat_mask[:, :, 0]).sum(1).clamp(min=1).float()  # (B,)
            valid_w = (~feat_mask[:, 0, :]).sum(1).clamp(min=1).float()  # (B,)
            valid = ~feat_mask.flatten(1)  # (B, h*w)
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device, dtype=torch.float32) + 0.5,
            torch.arange(w, device=device, dtype=torch.float32) + 0.5,
            indexing="ij",
        )  # (h, w) cell centres in cells
        cx = xs.flatten()[None] / valid_w[:, None]  # (B, h*w)
        cy = ys.flatten()[None] / valid_h[:, None]  # (B, h*w)
        bw = (self.anchor_cells / valid_w[:, None]).expand_as(cx)  # may exceed 1 on tiny maps (clamped in forward)
        bh = (self.anchor_cells / valid_h[:, None]).expand_as(cy)
        return torch.stack([cx, cy, bw, bh], dim=-1), valid  # (B, h*w, 4), (B, h*w)

    def forward(self, memory: Tensor, h: int, w: int, feat_mask: Tensor | None) -> Proposals:
        """memory (B, h*w, d) encoder output, feat_mask (B, h, w) True on padding or None.

        Returns logits (B, h*w, K), boxes (B, h*w, 4) normalized cxcywh, anchors (B, h*w, 4)
        and valid (B, h*w) bool.
        """
        batch = memory.shape[0]
        anchors, valid = self.anchors(h, w, feat_mask, memory.device)
        anchors, valid = anchors.expand(batch, -1, -1), valid.expand(batch, -1)  # (B, h*w, 4), (B, h*w)
        delta = self.box_head(memory).float()  # (B, h*w, 4)
        if self.box_coding == "cells":
            cell = anchors[..., 2:] / self.anchor_cells  # (B, h*w, 2) one cell's normalized width and height
            centre = anchors[..., :2] + delta[..., :2] * cell  # (B, h*w, 2)
            sides = anchors[..., 2:] * delta[..., 2:].clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE).exp()  # (B, h*w, 2)
            boxes = torch.cat([centre, sides], dim=-1)  # (B, h*w, 4), may reach past the image (the targets do not)
        else:
            boxes = (delta + inverse_sigmoid(anchors.clamp(max=1.0))).sigmoid()
        return self.class_head(memory).float(), boxes, anchors, valid

    def propose(self, state: OptionState) -> Proposals:
        """The head's outputs on the pass's encoder output (see :meth:`forward`)."""
        return self(state.memory, *state.feature_size, state.feature_mask)

    def read_encoder(self, model: DETR, state: OptionState) -> None:
        if state.targets is not None:  # a loss is wanted
            state.proposals = self.propose(state)

    def assign(self, anchors: Tensor, valid: Tensor, target: Target) -> Tensor:
        """Index of the target each token is assigned to, -1 for background: (h*w,) int64.

        anchors (h*w, 4) and valid (h*w,) of one image; target boxes normalized cxcywh.
        """
        boxes = target["box"].to(anchors.dtype)  # (N, 4)
        assigned = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
        if len(boxes) == 0:
            return assigned
        centre = anchors[:, None, :2]  # (T, 1, 2) token cell centres
        offset = (centre - boxes[None, :, :2]).abs()  # (T, N, 2)
        half = boxes[None, :, 2:] / 2  # (1, N, 2)
        inside = (offset < half).all(-1)  # (T, N) cell centre inside the box
        central = (offset < half * self.center_radius).all(-1)  # (T, N) ... and in its central region
        cell_half = anchors[:, None, 2:] / (2 * self.anchor_cells)  # (T, 1, 2) half a cell
        own_cell = (offset <= cell_half).all(-1)  # (T, N) the cell the target's centre falls in
        candidate = ((inside & central) | own_cell) & valid[:, None]  # (T, N)
        if self.center_cells > 0:  # the neighbourhood only takes tokens no target's central region holds
            radius = cell_half * (2 * self.center_cells)  # (T, 1, 2) center_cells cells
            near = (offset < radius).all(-1) & valid[:, None]  # (T, N)
            candidate = candidate | (near & ~candidate.any(1, keepdim=True))
        area = (boxes[:, 2] * boxes[:, 3])[None].expand_as(candidate)  # (T, N)
        area = torch.where(candidate, area, torch.full_like(area, math.inf))
        smallest = area.argmin(1)  # (T,)
        return torch.where(candidate.any(1), smallest, assigned)

    def loss(
        self, logits: Tensor, boxes: Tensor, anchors: Tensor, valid: Tensor, targets: Sequence[Target]
    ) -> dict[str, Tensor]:
        """Focal, L1 and GIoU terms (``loss_dense_ce``, ``loss_dense_bbox``, ``loss_dense_giou``) and
        their weighted sum ``loss``; inputs as returned by :meth:`forward`."""
        assigned = torch.stack([self.assign(a, v, t) for a, v, t in zip(anchors, valid, targets)])  # (B, h*w)
        positive = assigned >= 0  # (B, h*w)
        classes = torch.zeros_like(logits)  # (B, h*w, K) one-hot targets, zero for background
        matched_box = torch.zeros_like(boxes)  # (B, h*w, 4)
        for b, target in enumerate(targets):
            pos = positive[b]
            classes[b, pos, target["class_id"][assigned[b, pos]]] = 1.0
            matched_box[b, pos] = target["box"][assigned[b, pos]].to(boxes.dtype)
        num_pos = mean_count_across_processes(positive.sum().float())
        pred, true = boxes[positive], matched_box[positive]  # (P, 4)
        pred_xyxy, true_xyxy = box_convert(pred, "cxcywh", "xyxy"), box_convert(true, "cxcywh", "xyxy")
        if self.varifocal:
            classes[positive] *= broadcast_box_iou(pred_xyxy.detach(), true_xyxy)[:, None]  # (P, K): IoU on its class
            focal = varifocal_loss(logits[valid], classes[valid]) / num_pos
        else:
            focal = sigmoid_focal_loss(logits[valid], classes[valid], alpha=0.25, gamma=2.0, reduction="sum") / num_pos
        weight, norm = torch.ones_like(pred[:, 0]), num_pos  # (P,): every positive token alike
        if self.per_target:  # each target's tokens share one weight; the norm: the targets that have positives
            image = torch.arange(len(targets), device=assigned.device)[:, None].expand_as(assigned)  # (B, h*w)
            key = image[positive] * (int(assigned.max()) + 1) + assigned[positive]  # (P,) one id per image's target
            _, which, count = torch.unique(key, return_inverse=True, return_counts=True)  # which: (P,)
            weight = 1.0 / count[which].to(pred.dtype)  # (P,)
            norm = mean_count_across_processes(torch.tensor(float(len(count)), device=pred.device))
        l1 = (weight * (pred - true).abs().sum(-1)).sum() / norm
        giou = (weight * generalized_box_iou_loss(pred_xyxy, true_xyxy)).sum() / norm
        terms = {"loss_dense_ce": focal, "loss_dense_bbox": l1, "loss_dense_giou": giou}
        terms["loss"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms

    def loss_terms(self, model: DETR, state: OptionState | None, targets: Sequence[Target]) -> dict[str, Tensor]:
        if state is None or state.proposals is None:
            return {}
        return self.loss(*state.proposals, targets)
