"""Hungarian (bipartite) matching between predicted and ground-truth boxes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from ..processing.checks import Target, pad_targets


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets minimising the DETR matching cost.

    cost = cost_class * (-p[target class]) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU(xyxy))

    Defaults are the reference training costs (1, 5, 2). Any module with the same
    call signature can replace it through ``DETRConfig.matcher``.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        for name, value in (("cost_class", cost_class), ("cost_bbox", cost_bbox), ("cost_giou", cost_giou)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if cost_class == cost_bbox == cost_giou == 0:
            raise ValueError("at least one matching cost must be positive")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    def spec(self) -> dict[str, float]:
        """The constructor arguments that build this matcher again."""
        return {"cost_class": self.cost_class, "cost_bbox": self.cost_bbox, "cost_giou": self.cost_giou}

    def cost_matrix(self, pred_logits: Tensor, pred_boxes: Tensor, class_id: Tensor, box: Tensor) -> Tensor:
        """The matching cost of every prediction against every target of its own image.

        Args:
            pred_logits: (B, Q, K+1); pred_boxes: (B, Q, 4) normalized cxcywh.
            class_id: (B, N) int64 and box: (B, N, 4) normalized cxcywh, each image's targets (padded to
                the batch's most; the padding's columns are the caller's to ignore).

        Returns:
            (B, Q, N) float32 cost.
        """
        prob = pred_logits.float().softmax(-1)  # (B, Q, K+1)
        boxes, tgt_boxes = pred_boxes.float(), box.float()
        queries, targets = boxes.shape[1], tgt_boxes.shape[1]
        cost_class = -prob.gather(2, class_id[:, None, :].expand(-1, queries, -1))  # (B, Q, N)
        cost_bbox = torch.cdist(boxes, tgt_boxes, p=1)  # (B, Q, N)
        # every (query, target) pair of an image as one elementwise GIoU: (B, Q, N, 4) against (B, Q, N, 4)
        pairs = (-1, queries, targets, 4)
        pred_xyxy = box_convert(boxes, "cxcywh", "xyxy")[:, :, None].expand(pairs)
        tgt_xyxy = box_convert(tgt_boxes, "cxcywh", "xyxy")[:, None].expand(pairs)
        cost_giou = generalized_box_iou_loss(pred_xyxy, tgt_xyxy) - 1  # -GIoU, (B, Q, N)
        return self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

    @torch.no_grad()
    def forward(self, outputs: tuple[Tensor, Tensor], targets: Sequence[Target]) -> list[tuple[Tensor, Tensor]]:
        """Match each image's predictions to its targets.

        Args:
            outputs: ``(pred_logits (B, Q, K+1), pred_boxes (B, Q, 4) normalized cxcywh)``.
            targets: B dicts with ``class_id`` (N_i,) int64 and ``box`` (N_i, 4) normalized cxcywh.

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 tensors of length min(Q, N_i) on the CPU,
            pred_idx sorted ascending.
        """
        pred_logits, pred_boxes = outputs
        # the batch's costs in one call (one device sync, not one per image), over targets padded to the most
        # in an image; the padding's columns are dropped before the assignment
        class_id, box, _ = pad_targets(targets, pred_boxes.device)  # (B, N), (B, N, 4)
        sizes = [len(t["class_id"]) for t in targets]
        if class_id.shape[1] == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in sizes]
        cost = self.cost_matrix(pred_logits, pred_boxes, class_id, box).cpu()  # (B, Q, N)
        indices = []
        for image, size in enumerate(sizes):
            block = cost[image, :, :size]  # (Q, N_image)
            if not torch.isfinite(block).all():
                raise FloatingPointError(
                    "matching cost has NaN or inf entries: the model's outputs are not finite "
                    "(diverged training? lower the learning rate or check the inputs)"
                )
            rows, cols = linear_sum_assignment(block.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
