"""DETR's set prediction loss: Hungarian matching, then CE + L1 + GIoU on the matched pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from ..distributed import mean_count_across_processes
from ..models.layers import broadcast_box_iou
from ..processing.checks import Target

Matcher = Callable[[tuple[Tensor, Tensor], Sequence[Target]], list[tuple[Tensor, Tensor]]]


def num_boxes_across_processes(targets: Sequence[Target], device: torch.device) -> float:
    """Average number of target boxes per process (all-reduced under DDP), at least 1."""
    return mean_count_across_processes(torch.tensor(float(sum(len(t["class_id"]) for t in targets)), device=device))


class SetCriterion(nn.Module):
    """Loss of the DETR paper and reference code.

    For each decoder layer's output the predictions are matched to the targets and
    the terms below are computed; terms of intermediate layer ``i`` get a suffix
    ``_i`` (``loss_ce_0`` ... ``loss_ce_4`` for six layers), the final layer none.

    - ``loss_ce``: cross-entropy over all queries, unmatched ones toward "no object",
      whose class weight is ``eos_coef``; averaged by the sum of weights (PyTorch's
      weighted mean, as in the reference code). With ``iou_class_targets`` a matched query's target
      is soft, IoU-aware (the idea of VarifocalNet, Zhang et al. 2021, kept inside DETR's softmax):
      probability IoU(box, target) on its class and the rest on "no object", so that the class
      probability a query learns is also how well its box fits, and detections rank by fit. The
      normaliser stays the hard targets' sum of weights (one-hot targets give the reference loss).
    - ``loss_bbox``: L1 of matched cxcywh boxes, summed, divided by the number of boxes.
    - ``loss_giou``: 1 - GIoU of matched boxes, summed, divided by the number of boxes.
    - ``cardinality_error``: |#predictions not "no object" - #targets|, mean over images (logged, no gradient).
    - ``class_error``: 100 - top-1 accuracy (%) of the matched queries, final layer only (logged).

    ``loss`` is the weighted total over all layers.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: Matcher,
        class_loss_coef: float = 1.0,
        bbox_loss_coef: float = 5.0,
        giou_loss_coef: float = 2.0,
        eos_coef: float = 0.1,
        iou_class_targets: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.iou_class_targets = iou_class_targets
        self.matcher = matcher
        self.weight_dict = {"loss_ce": class_loss_coef, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
        self.eos_coef = eos_coef
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def layer_losses(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: Sequence[Target], num_boxes: float
    ) -> tuple[dict[str, Tensor], list[tuple[Tensor, Tensor]]]:
        """Losses of one layer's (B, Q, K+1) logits and (B, Q, 4) boxes; also returns the matching."""
        indices = self.matcher((pred_logits, pred_boxes), targets)
        device = pred_logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([src for src, _ in indices]).to(device)
        matched_classes = torch.cat(
            [t["class_id"][tgt.to(t["class_id"].device)] for t, (_, tgt) in zip(targets, indices)]
        )
        matched_classes = matched_classes.to(device)

        target_classes = torch.full(pred_logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, query_idx] = matched_classes  # (B, Q)

        src_boxes = pred_boxes[batch_idx, query_idx].float()  # (M, 4)
        tgt_boxes = torch.cat([t["box"][tgt.to(t["box"].device)] for t, (_, tgt) in zip(targets, indices)])
        tgt_boxes = tgt_boxes.to(device).float()  # (M, 4)
        src_xyxy, tgt_xyxy = box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum() / num_boxes
        # pair by pair: the (M, M) matrix of generalized_box_iou and its backward grow with the square of the
        # objects in a batch (30 objects x 16 images: most of a CPU step)
        loss_giou = generalized_box_iou_loss(src_xyxy, tgt_xyxy, reduction="sum") / num_boxes

        weight = self.empty_weight.to(device)
        if self.iou_class_targets:
            iou = broadcast_box_iou(src_xyxy.detach(), tgt_xyxy)  # (M,), no gradient through the target
            soft = F.one_hot(target_classes, self.num_classes + 1).float()  # (B, Q, K+1)
            soft[batch_idx, query_idx, matched_classes] = iou
            soft[batch_idx, query_idx, self.num_classes] = 1.0 - iou
            log_prob = pred_logits.float().log_softmax(-1)  # (B, Q, K+1)
            loss_ce = -(soft * weight * log_prob).sum() / weight[target_classes].sum()
        else:
            loss_ce = F.cross_entropy(pred_logits.float().transpose(1, 2), target_classes, weight)  # (B, K+1, Q)

        with torch.no_grad():
            num_targets = torch.as_tensor([len(t["class_id"]) for t in targets], device=device, dtype=torch.float32)
            num_pred = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1).float()  # (B,)
            cardinality_error = F.l1_loss(num_pred, num_targets)
        losses = {
            "loss_ce": loss_ce,
            "loss_bbox": loss_bbox,
            "loss_giou": loss_giou,
            "cardinality_error": cardinality_error,
        }
        with torch.no_grad():
            if len(matched_classes):
                correct = (pred_logits[batch_idx, query_idx].argmax(-1) == matched_classes).float().mean()
                losses["class_error"] = 100.0 * (1.0 - correct)
            else:  # nothing to classify: the reference reports 100
                losses["class_error"] = torch.full((), 100.0, device=device)
        return losses, indices

    def forward(self, outputs: Sequence[tuple[Tensor, Tensor]], targets: Sequence[Target]) -> dict[str, Tensor]:
        """outputs: per-layer ``(pred_logits, pred_boxes)``, final layer last -> dict of terms and ``loss``."""
        device = outputs[-1][0].device
        num_boxes = num_boxes_across_processes(targets, device)
        terms: dict[str, Tensor] = {}
        total = torch.zeros((), device=device)
        last = len(outputs) - 1
        for i, (logits, boxes) in enumerate(outputs):
            layer, _ = self.layer_losses(logits, boxes, targets, num_boxes)
            total = total + sum(weight * layer[name] for name, weight in self.weight_dict.items())
            if i == last:
                terms.update(layer)
            else:
                terms.update({f"{k}_{i}": v for k, v in layer.items() if k != "class_error"})
        terms["loss"] = total
        return terms
