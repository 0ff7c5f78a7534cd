"""Deformable cross-attention in the decoder: each query reads the image at a few points of its own box.

After Deformable DETR (Zhu et al., 2021), on one feature level. In the paper's decoder a query attends
to every encoder token, and must learn from scratch where to look; here, with anchor-box refinement
(:mod:`detr.options.refinement`), each head of a query predicts ``points`` sampling offsets relative to
its anchor box (an offset of (1, 1) x points reaches the box's corner) and a weight per point, and
reads the encoder memory there by bilinear interpolation (``grid_sample``). A query so looks at its
box from the first step, and at sub-cell positions: what its box's edges need.

A part of the paper's decoder layers, and a hook of the pass: the option puts a
:class:`DeformableCrossAttention` in place of every decoder layer's cross-attention (``multihead_attn``, so its
parameters are ``transformer.decoder.layers.<i>.multihead_attn.*``); the rest of the layer (self-attention, FFN,
norms) is the paper's, and so is its forward, which hands its cross-attention what the option's
:meth:`DeformableDecoder.cross_attention_inputs` hook gives for the queries' anchors. Needs ``box_refinement``
(the anchors to sample around, and the decoder loop that calls the hook). Changes the architecture (used at
inference); exports to ONNX (``GridSample``, opset 16).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.transformer import TransformerDecoderLayer
from .base import DETROption, OptionState

if TYPE_CHECKING:
    from ..models.detr import DETR


class DeformableCrossAttention(nn.Module):
    """Attention of queries to a feature map at a few points around each query's box.

    ``points`` sampling points per head; offsets and weights are predicted from the query. Called as a decoder
    layer calls its cross-attention (:class:`~detr.models.transformer.MultiheadAttention`), plus where to sample.
    """

    def __init__(self, d_model: int, nhead: int, points: int = 4) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        if points < 1:
            raise ValueError(f"points must be >= 1, got {points}")
        self.nhead, self.points = nhead, points
        self.sampling_offsets = nn.Linear(d_model, nhead * points * 2)
        self.attention_weights = nn.Linear(d_model, nhead * points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        # explainability (detr.explain): keep each query's weights over the map's cells in ``weights``
        # (B, heads, N, hw): its points' attention weights spread by their bilinear kernels
        self.record_weights = False
        self.weights: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the first offsets: head h looks along direction 2 pi h / nhead, point i at (i + 1) / points of the
        # way from the box's centre to its border (Deformable DETR's start); the weights start uniform
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.nhead, dtype=torch.float32) * (2 * math.pi / self.nhead)
        direction = torch.stack([angles.cos(), angles.sin()], -1)  # (H, 2)
        direction = direction / direction.abs().max(-1, keepdim=True).values  # onto the unit square's border
        steps = torch.arange(1, self.points + 1, dtype=torch.float32)  # (P,)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_((direction[:, None, :] * steps[None, :, None]).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        *,
        anchors: Tensor,
        feature_size: tuple[int, int],
    ) -> Tensor:
        """query (B, N, d) (with its position); ``key`` is not read (the points are placed, not searched
        for); value (B, hw, d) the encoder memory of an ``feature_size`` (h, w) map, key_padding_mask (B, hw)
        True on padding or None; anchors (B, N, 4) normalized cxcywh relative to the valid region.
        Returns (B, N, d)."""
        batch, count, d_model = query.shape
        h, w = feature_size
        heads, points = self.nhead, self.points
        feature_mask = None if key_padding_mask is None else key_padding_mask.view(batch, h, w)  # (B, h, w)
        value = self.value_proj(value)  # (B, hw, d)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.transpose(1, 2).reshape(batch * heads, d_model // heads, h, w)  # (B*H, d/H, h, w)
        offsets = self.sampling_offsets(query).view(batch, count, heads, points, 2)  # (B, N, H, P, 2) x, y
        weights = self.attention_weights(query).view(batch, count, heads, points).softmax(-1)  # (B, N, H, P)
        centre, size = anchors[..., None, None, :2], anchors[..., None, None, 2:]  # (B, N, 1, 1, 2) each
        where = centre + offsets / points * size * 0.5  # (B, N, H, P, 2) normalized x, y in the valid region
        if feature_mask is not None:  # the valid region is the top-left part of the padded map
            valid = (~feature_mask).to(where.dtype)
            ratio = torch.stack([valid[:, 0, :].sum(-1) / w, valid[:, :, 0].sum(-1) / h], -1)  # (B, 2)
            where = where * ratio[:, None, None, None, :]
        grid = (2 * where - 1).permute(0, 2, 1, 3, 4).reshape(batch * heads, count, points, 2)  # (B*H, N, P, 2)
        sampled = F.grid_sample(value, grid.to(value.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        # (B*H, d/H, N, P) -> weighted sum over the points -> (B, N, d)
        weights = weights.permute(0, 2, 1, 3).reshape(batch * heads, 1, count, points)  # (B*H, 1, N, P)
        out = (sampled * weights.to(sampled.dtype)).sum(-1)  # (B*H, d/H, N)
        out = out.view(batch, d_model, count).transpose(1, 2)  # (B, N, d)
        if self.record_weights:  # padded cells read nothing (their values are zeros): weight 0
            cells = _cell_weights(grid, weights, h, w).view(batch, heads, count, h * w)
            self.weights = cells if feature_mask is None else cells.masked_fill(feature_mask.view(batch, 1, 1, -1), 0)
        return self.output_proj(out)


def _cell_weights(grid: Tensor, weights: Tensor, h: int, w: int) -> Tensor:
    """What grid_sample's bilinear reads amount to per cell: grid (M, N, P, 2) in [-1, 1] (x, y), weights
    (M, 1, N, P) -> (M, N, h, w), each query's weights summed over its points."""
    x = (grid[..., 0] + 1) * w / 2 - 0.5  # (M, N, P) in cell units (align_corners=False)
    y = (grid[..., 1] + 1) * h / 2 - 0.5
    columns = torch.arange(w, dtype=grid.dtype, device=grid.device)
    rows = torch.arange(h, dtype=grid.dtype, device=grid.device)
    kernel_x = (1 - (x[..., None] - columns).abs()).clamp(min=0)  # (M, N, P, w)
    kernel_y = (1 - (y[..., None] - rows).abs()).clamp(min=0)  # (M, N, P, h)
    per_point = kernel_y[..., :, None] * kernel_x[..., None, :]  # (M, N, P, h, w)
    return (per_point * weights[:, 0, :, :, None, None]).sum(2)  # (M, N, h, w)


class DeformableDecoder(DETROption):
    """Every decoder layer's cross-attention a :class:`DeformableCrossAttention`, reading around the anchors."""

    name = "deformable"
    order = 5  # after the refinement whose anchors it reads
    used_at_inference = True
    requires = ("refinement",)

    def __init__(self, points: int = 4) -> None:
        super().__init__()
        if points < 1:
            raise ValueError(f"deformable_points must be >= 1, got {points}")
        self.points = points

    def missing_requirement_message(self, missing: list[str]) -> str:
        return "deformable_decoder samples around each query's anchor box: set box_refinement=True with it"

    def attach(self, model: DETR) -> None:
        for i, layer in enumerate(model.transformer.decoder.layers):
            if not isinstance(layer, TransformerDecoderLayer):
                raise ValueError(
                    f"deformable_decoder replaces the cross-attention of detr.TransformerDecoderLayer; decoder "
                    f"layer {i} is a {type(layer).__name__}"
                )
            d_model, nhead = layer.linear1.in_features, layer.self_attn.num_heads
            # the random draws of the layer copy this option once made (its weights then overwritten): a seed
            # keeps building the weights it built before
            TransformerDecoderLayer(d_model, nhead, layer.linear1.out_features, layer.dropout.p)
            layer.multihead_attn = DeformableCrossAttention(d_model, nhead, self.points)

    def cross_attention_inputs(self, model: DETR, state: OptionState, anchors: Tensor) -> dict[str, Any]:
        return {"anchors": anchors, "feature_size": state.feature_size}

    def spec(self) -> dict[str, Any]:
        return {"points": self.points}
