"""Denoising queries (DN-DETR, Li et al. 2022): a training option for faster convergence.

During training only, extra decoder queries are built from the ground truth with noise
added: the box (shifted and rescaled, ``box_noise``) becomes the query's position (through a
small MLP on its sine features, or as the anchor box when the model has anchor-box refinement),
the class (flipped to a random one with probability ``label_noise``) its content through an
embedding. Each such query must reconstruct its own target, so no matching is involved: the
decoder gets direct, stable supervision of "look here, say what it is" from the first step,
which is what plain DETR lacks early in training. Several noised copies (``groups``) are used;
they cannot see each other nor be seen by the matching queries, so inference, which uses no
denoising query, is unchanged.

Adds: ``label_embed`` (num_classes, d) and ``box_embed`` (an MLP from 2d sine features to d;
none with refinement); in training, the span ``"denoising"`` of groups * N_max queries (N_max the
most targets of an image in the batch). Loss: ``loss_dn_ce``, ``loss_dn_bbox``, ``loss_dn_giou``
(final layer's, logged), summed over layers with the model's loss coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from ..models.layers import box_sine_embedding
from ..processing.checks import Target, pad_targets
from .base import DETROption, OptionState, QuerySpan

if TYPE_CHECKING:
    from ..models.detr import DETR


@dataclass
class DenoisingBatch:
    """The denoising queries of one batch.

    query_pos: (B, E, d) positions (None when the model takes ``noisy_box`` as anchors); tgt: (B, E, d)
    contents; valid: (B, E) bool, False on padding slots (images with fewer targets); class_id: (B, E)
    and box: (B, E, 4) cxcywh the targets to reconstruct; noisy_box (B, E, 4) cxcywh the noised boxes;
    E = groups * n_max.
    """

    query_pos: Tensor | None
    tgt: Tensor
    valid: Tensor
    class_id: Tensor
    box: Tensor
    n_max: int
    noisy_box: Tensor


class DenoisingQueries(DETROption):
    """Makes noised ground-truth queries and scores their reconstruction (see the module docstring)."""

    name = "denoising"
    order = 2
    may_leave_parameters_unused = True  # a batch without targets makes no denoising query

    def __init__(self, groups: int = 5, box_noise: float = 0.4, label_noise: float = 0.2) -> None:
        super().__init__()
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"denoising groups must be >= 1, got {groups}")
        if not (0 <= label_noise <= 1 and box_noise >= 0):
            raise ValueError("label_noise must be in [0, 1] and box_noise >= 0")
        self.groups, self.box_noise, self.label_noise = groups, box_noise, label_noise

    def spec(self) -> dict[str, Any]:
        return {"groups": self.groups, "box_noise": self.box_noise, "label_noise": self.label_noise}

    def attach(self, model: DETR) -> None:
        d_model = model.transformer.d_model
        self.num_classes, self.d_model = model.num_classes, d_model
        self.label_embed = nn.Embedding(model.num_classes, d_model)
        # box -> sine features of each coordinate (the same kind of encoding the image features
        # get, so a query "at" a place starts out similar to the features there) -> MLP; with
        # anchor-box refinement the noised box is the query's anchor instead
        embed_box = getattr(model, "refinement", None) is None
        self.box_embed = (
            nn.Sequential(nn.Linear(2 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
            if embed_box
            else None
        )

    def forward(self, targets: Sequence[Target], device: torch.device) -> DenoisingBatch | None:
        """Noised queries for ``targets``; None when no image has a target."""
        class_id, box, valid = pad_targets(targets, device)  # (B, N_max), (B, N_max, 4), (B, N_max)
        n_max = class_id.shape[1]
        if n_max == 0:
            return None
        # repeat for every group: (B, G * N_max, ...)
        class_id, box, valid = (
            class_id.repeat(1, self.groups),
            box.repeat(1, self.groups, 1),
            valid.repeat(1, self.groups),
        )

        noisy_class = class_id.clone()
        flip = torch.rand(class_id.shape, device=device) < self.label_noise
        noisy_class[flip] = torch.randint(0, self.num_classes, (int(flip.sum()),), device=device)
        xyxy = box_convert(box, "cxcywh", "xyxy")
        half_wh = box[..., 2:].repeat(1, 1, 2) / 2  # (B, E, 4): each corner moves by up to box_noise * half size
        xyxy = xyxy + (torch.rand_like(xyxy) * 2 - 1) * half_wh * self.box_noise
        noisy_box = box_convert(xyxy.clamp(0, 1), "xyxy", "cxcywh").clamp(min=1e-3)
        query_pos = None if self.box_embed is None else self.box_embed(box_sine_embedding(noisy_box, self.d_model // 2))
        return DenoisingBatch(query_pos, self.label_embed(noisy_class), valid, class_id, box, n_max, noisy_box)

    def add_queries(self, model: DETR, state: OptionState) -> None:
        if not model.training or state.targets is None:
            return
        dn = self(state.targets, state.memory.device)
        if dn is None:  # no targets in the batch: nothing to reconstruct
            return
        state.extras[self.name] = dn
        extra = dn.valid.shape[1]
        blocks = torch.arange(extra, device=dn.valid.device) // dn.n_max  # (E,) denoising group index
        state.spans["denoising"] = QuerySpan(
            content=dn.tgt,
            position=dn.query_pos,
            anchors=dn.noisy_box,
            blocks=blocks,
            num_blocks=self.groups,
            key_valid=dn.valid,
        )

    def loss_terms(self, model: DETR, state: OptionState | None, targets: Sequence[Target]) -> dict[str, Tensor]:
        """Reconstruction loss: each denoising query must give back its own target (no matching).

        CE, L1 and GIoU averaged over the valid queries, with the loss coefficients of the
        matching loss, summed over layers.
        """
        if state is None or self.name not in state.extras:
            return {}
        dn: DenoisingBatch = state.extras[self.name]
        logits, boxes = state.outputs("denoising")  # (L, B, E, K+1), (L, B, E, 4)
        weights = model.criterion.weight_dict
        target_class, target_box = dn.class_id[dn.valid], dn.box[dn.valid].float()  # (M,), (M, 4)
        target_xyxy = box_convert(target_box, "cxcywh", "xyxy")
        total = torch.zeros((), device=logits.device)
        layer: dict[str, Tensor] = {}
        for layer_logits, layer_boxes in zip(logits, boxes):
            pred_box = layer_boxes[dn.valid].float()  # (M, 4)
            layer = {
                "loss_dn_ce": F.cross_entropy(layer_logits[dn.valid].float(), target_class),
                "loss_dn_bbox": F.l1_loss(pred_box, target_box, reduction="none").sum(1).mean(),
                # pair by pair (a matrix of every pair would grow with the square of the queries)
                "loss_dn_giou": generalized_box_iou_loss(box_convert(pred_box, "cxcywh", "xyxy"), target_xyxy, "mean"),
            }
            total = total + sum(weights[name.replace("_dn", "")] * value for name, value in layer.items())
        return {**layer, "loss": total}  # the terms logged are the final layer's
