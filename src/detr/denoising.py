"""Denoising queries (DN-DETR, Li et al. 2022), an option for faster training of vanilla DETR.

During training only, extra decoder queries are built from the ground truth with noise
added: the box (shifted and rescaled, ``box_noise``) becomes the query's position through a
small MLP, the class (flipped to a random one with probability ``label_noise``) its content
through an embedding. Each such query must reconstruct its own target, so no matching is
involved: the decoder gets direct, stable supervision of "look here, say what it is" from
the first step, which is what plain DETR lacks early in training. Several noised copies
(``groups``) are used; they cannot see each other nor be seen by the matching queries, so
inference, which uses no denoising query, is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from .matcher import Target


@dataclass
class DenoisingBatch:
    """The denoising queries of one batch.

    query_pos: (B, E, d) positions (None when the model embeds ``noisy_box`` itself); tgt: (B, E, d)
    contents; valid: (B, E) bool, False on padding slots (images with fewer targets); class_id: (B, E)
    and box: (B, E, 4) cxcywh the targets to reconstruct; noisy_box (B, E, 4) cxcywh the noised boxes;
    E = groups * N_max.
    """

    query_pos: Tensor | None
    tgt: Tensor
    valid: Tensor
    class_id: Tensor
    box: Tensor
    n_max: int
    noisy_box: Tensor


class DenoisingQueries(nn.Module):
    """Makes noised ground-truth queries (see the module docstring)."""

    def __init__(
        self,
        num_classes: int,
        d_model: int,
        groups: int = 5,
        box_noise: float = 0.4,
        label_noise: float = 0.2,
        embed_box: bool = True,
    ) -> None:
        super().__init__()
        if groups < 1:
            raise ValueError(f"denoising groups must be >= 1, got {groups}")
        if not (0 <= label_noise <= 1 and box_noise >= 0):
            raise ValueError("label_noise must be in [0, 1] and box_noise >= 0")
        self.num_classes, self.groups, self.box_noise, self.label_noise = num_classes, groups, box_noise, label_noise
        self.label_embed = nn.Embedding(num_classes, d_model)
        # box -> sine features of each coordinate (the same kind of encoding the image features
        # get, so a query "at" a place starts out similar to the features there) -> MLP
        # (embed_box=False: the model turns the noised boxes into positions itself, see detr.refinement)
        self.box_embed = (
            nn.Sequential(nn.Linear(2 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
            if embed_box
            else None
        )
        self.d_model = d_model

    def forward(self, targets: Sequence[Target], device: torch.device) -> DenoisingBatch | None:
        """Noised queries for ``targets``; None when no image has a target."""
        n_max = max(len(t["class_id"]) for t in targets)
        if n_max == 0:
            return None
        batch = len(targets)
        class_id = torch.zeros(batch, n_max, dtype=torch.int64, device=device)
        box = torch.full((batch, n_max, 4), 0.5, device=device)
        valid = torch.zeros(batch, n_max, dtype=torch.bool, device=device)
        for i, t in enumerate(targets):
            n = len(t["class_id"])
            class_id[i, :n], box[i, :n], valid[i, :n] = t["class_id"].to(device), t["box"].to(device).float(), True
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


def box_sine_embedding(box: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """(..., 4) normalized cxcywh -> (..., 4 * num_feats) sine/cosine features per coordinate.

    Coordinates are scaled by 2 pi like the image position encoding (order y, x, h, w ... as
    (cy, cx, h, w) so that the first half matches the sine encoding of the feature map).
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=box.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)  # (F,)
    coords = box[..., [1, 0, 3, 2]].float() * 2 * math.pi  # (..., 4): cy, cx, h, w
    pos = coords[..., None] / dim_t  # (..., 4, F)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)  # (..., 4, F)
    return pos.flatten(-2)  # (..., 4F)


def attention_mask(num_matching: int, query_groups: int, dn: DenoisingBatch) -> Tensor:
    """(B, 1, Q, Q) bool mask for the decoder self-attention, True = may attend.

    Matching query groups see only themselves; each denoising group sees only its own valid
    queries; nobody sees another group. Every query sees itself (padding slots included, so
    that no attention row is empty).
    """
    device = dn.valid.device
    batch, extra = dn.valid.shape
    group = torch.cat(
        [
            torch.arange(num_matching, device=device) // (num_matching // query_groups),
            query_groups + torch.arange(extra, device=device) // dn.n_max,
        ]
    )  # (Q,) group index of every query
    same = group[:, None] == group[None, :]  # (Q, Q)
    key_ok = torch.cat([torch.ones(batch, num_matching, dtype=torch.bool, device=device), dn.valid], dim=1)  # (B, Q)
    eye = torch.eye(len(group), dtype=torch.bool, device=device)
    return ((same[None] & key_ok[:, None, :]) | eye)[:, None]  # (B, 1, Q, Q)
