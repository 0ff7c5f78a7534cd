"""Small layers and box helpers shared by the model and its options.

Boxes here are normalized (cx, cy, w, h), relative to the image's valid (unpadded) region.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's box head: 3 layers, the last one to 4)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        """(..., input_dim) -> (..., output_dim)."""
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x), with x clamped into [eps, 1 - eps] so that boxes at the border stay finite."""
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def broadcast_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of (..., 4) and (..., 4) xyxy boxes broadcast against each other -> (...): pair by pair for two
    (M, 4), every pair for (B, k, 1, 4) and (B, 1, k, 4) (torchvision's box_iou: every pair of two (N, 4))."""
    inter = torch.minimum(boxes1[..., 2:], boxes2[..., 2:]) - torch.maximum(boxes1[..., :2], boxes2[..., :2])
    inter_area = inter.clamp(min=0).prod(-1)
    area1 = (boxes1[..., 2:] - boxes1[..., :2]).clamp(min=0).prod(-1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).clamp(min=0).prod(-1)
    return inter_area / (area1 + area2 - inter_area).clamp(min=1e-9)


def box_sine_embedding(box: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """(..., 4) normalized cxcywh -> (..., 4 * num_feats) sine/cosine features per coordinate.

    Coordinates are scaled by 2 pi like the image position encoding, in the order (cy, cx, h, w)
    so that the first half matches the sine encoding of the feature map (rows, then columns).
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=box.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)  # (F,)
    coords = box[..., [1, 0, 3, 2]].float() * 2 * math.pi  # (..., 4): cy, cx, h, w
    pos = coords[..., None] / dim_t  # (..., 4, F)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)  # (..., 4, F)
    return pos.flatten(-2)  # (..., 4F)
