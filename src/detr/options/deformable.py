"""Deformable cross-attention in the decoder: each query reads the image at a few points of its own box.

After Deformable DETR (Zhu et al., 2021), on one feature level. In the paper's decoder a query attends
to every encoder token, and must learn from scratch where to look; here, with anchor-box refinement
(:mod:`detr.options.refinement`), each head of a query predicts ``points`` sampling offsets relative to
its anchor box (an offset of (1, 1) x points reaches the box's corner) and a weight per point, and
reads the encoder memory there by bilinear interpolation (``grid_sample``). A query so looks at its
box from the first step, and at sub-cell positions: what its box's edges need.

Replaces the cross-attention of every decoder layer (:class:`DeformableDecoderLayer`); the rest of the
layer (self-attention, FFN, norms) is the paper's. Needs ``box_refinement`` (the anchors to sample
around). Changes the architecture (used at inference); exports to ONNX (``GridSample``, opset 16).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.transformer import TransformerDecoderLayer, _with_pos
from .base import DETROption

if TYPE_CHECKING:
    from ..models.detr import DETR


class DeformableCrossAttention(nn.Module):
    """Attention of queries to a feature map at a few points around each query's box.

    ``points`` sampling points per head; offsets and weights are predicted from the query.
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
        value: Tensor,
        anchors: Tensor,
        feature_size: tuple[int, int],
        feature_mask: Tensor | None,
    ) -> Tensor:
        """query (B, N, d) (with its position); value (B, hw, d) the encoder memory of an (h, w) map,
        feature_mask (B, h, w) True on padding or None; anchors (B, N, 4) normalized cxcywh relative to
        the valid region. Returns (B, N, d)."""
        batch, count, d_model = query.shape
        h, w = feature_size
        heads, points = self.nhead, self.points
        value = self.value_proj(value)  # (B, hw, d)
        if feature_mask is not None:
            value = value.masked_fill(feature_mask.flatten(1)[..., None], 0.0)
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


class DeformableDecoderLayer(TransformerDecoderLayer):
    """The paper's decoder layer with :class:`DeformableCrossAttention` for its cross-attention."""

    samples_at_anchors = True  # the refining decoder loop passes anchors and the feature map's layout

    def __init__(self, layer: TransformerDecoderLayer, points: int) -> None:
        d_model, nhead = layer.linear1.in_features, layer.self_attn.num_heads
        super().__init__(d_model, nhead, layer.linear1.out_features, layer.dropout.p, "relu", layer.normalize_before)
        self.activation = layer.activation
        self.load_state_dict(layer.state_dict())  # self-attention, FFN and norms as they were
        self.multihead_attn = DeformableCrossAttention(d_model, nhead, points)  # type: ignore[assignment]

    def forward(  # type: ignore[override]
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Tensor | None,
        pos: Tensor | None,
        query_pos: Tensor | None,
        self_attn_mask: Tensor | None = None,
        *,
        anchors: Tensor,
        feature_size: tuple[int, int],
        feature_mask: Tensor | None,
    ) -> Tensor:
        """As :meth:`TransformerDecoderLayer.forward`, the cross-attention reading ``memory`` (B, hw, d) of an
        ``feature_size`` map around ``anchors`` (B, Q, 4); ``pos`` is not used (the points are placed)."""

        def cross(x: Tensor) -> Tensor:
            return self.multihead_attn(_with_pos(x, query_pos), memory, anchors, feature_size, feature_mask)

        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = _with_pos(tgt2, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, q, tgt2, attn_mask=self_attn_mask))
            tgt = tgt + self.dropout2(cross(self.norm2(tgt)))
            tgt2 = self.norm3(tgt)
            return tgt + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(tgt2)))))
        q = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt, attn_mask=self_attn_mask)))
        tgt = self.norm2(tgt + self.dropout2(cross(tgt)))
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class DeformableDecoder(DETROption):
    """Swaps every decoder layer's cross-attention for :class:`DeformableCrossAttention`."""

    name = "deformable"
    order = 5  # after the refinement it needs; it has no hooks of its own
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
        layers = model.transformer.decoder.layers
        for i, layer in enumerate(layers):
            if not isinstance(layer, TransformerDecoderLayer):
                raise ValueError(
                    f"deformable_decoder replaces the cross-attention of detr.TransformerDecoderLayer; decoder "
                    f"layer {i} is a {type(layer).__name__}"
                )
            layers[i] = DeformableDecoderLayer(layer, self.points)

    def spec(self) -> dict[str, Any]:
        return {"points": self.points}
