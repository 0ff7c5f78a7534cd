"""2D position encodings added to the image features inside the transformer.

Both encodings map a padding mask of shape (B, H, W) (True on padding) to an
embedding of shape (B, 2 * num_pos_feats, H, W), with the channel order of the
DETR reference code (sine: row then column; learned: column then row) so that
published weights see the features they were trained with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine encoding of the (normalised) pixel position.

    Positions are counted over valid pixels only (cumulative sum of ``~mask``), so
    padding does not shift the encoding of the image content. With ``normalize``
    the positions are scaled to ``(0, scale]`` per image, which makes the encoding
    independent of the image size.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats < 2 or num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be an even number >= 2, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True; pass normalize=True or drop scale")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def spec(self) -> dict[str, object]:
        """The constructor arguments that build this encoding again."""
        scale = self.scale if self.normalize else None
        return {
            "num_pos_feats": self.num_pos_feats,
            "temperature": self.temperature,
            "normalize": self.normalize,
            "scale": scale,
        }

    def forward(self, mask: Tensor) -> Tensor:
        """mask: (B, H, W) bool, True on padding -> (B, 2 * num_pos_feats, H, W) float32."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (B, H, W)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)  # (B, H, W)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)  # (F,)

        pos_x = x_embed[..., None] / dim_t  # (B, H, W, F)
        pos_y = y_embed[..., None] / dim_t  # (B, H, W, F)
        # interleave sin of even and cos of odd frequencies: (B, H, W, F/2, 2) -> (B, H, W, F)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, H, W)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute encoding: one embedding per row and per column (at most 50 each)."""

    max_positions = 50

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.row_embed = nn.Embedding(self.max_positions, num_pos_feats)
        self.col_embed = nn.Embedding(self.max_positions, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def spec(self) -> dict[str, object]:
        """The constructor arguments that build this encoding again (its weights apart)."""
        return {"num_pos_feats": self.num_pos_feats}

    def forward(self, mask: Tensor) -> Tensor:
        """mask: (B, H, W) bool -> (B, 2 * num_pos_feats, H, W); the mask only sets the shape."""
        batch, height, width = mask.shape
        if height > self.max_positions or width > self.max_positions:
            raise ValueError(
                f"learned position embedding covers at most {self.max_positions}x{self.max_positions} "
                f"feature cells, got {height}x{width}; use smaller images or the sine encoding"
            )
        x_emb = self.col_embed(torch.arange(width, device=mask.device))  # (W, F)
        y_emb = self.row_embed(torch.arange(height, device=mask.device))  # (H, F)
        pos = torch.cat(
            [x_emb.unsqueeze(0).expand(height, -1, -1), y_emb.unsqueeze(1).expand(-1, width, -1)], dim=-1
        )  # (H, W, 2F)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1)  # (B, 2F, H, W)


def build_position_encoding(kind: str, d_model: int) -> nn.Module:
    """``"sine"`` (the DETR default) or ``"learned"``, each with d_model // 2 features per axis."""
    if kind == "sine":
        return PositionEmbeddingSine(d_model // 2, normalize=True)
    if kind == "learned":
        return PositionEmbeddingLearned(d_model // 2)
    raise ValueError(f"position_embedding must be 'sine' or 'learned', got {kind!r}")
