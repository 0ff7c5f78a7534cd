"""Anchor-box queries with iterative box refinement, an option for faster training.

After DAB-DETR (Liu et al. 2022) and the box refinement of Deformable DETR (Zhu et al.
2021). Each decoder query carries an explicit box, its anchor: a learned one for the
matching queries, the noised ground truth for denoising queries. A decoder layer receives
the anchor as its position (sine features of (cx, cy, w, h), the kind of encoding the
image features get, through a small MLP), and the box head predicts a correction of the
anchor in logit space; the corrected box, without gradient, is the next layer's anchor.
Queries so start at places in the image, look there, and every layer only refines, where
plain DETR must first learn what its abstract query positions mean.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .denoising import box_sine_embedding


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x), with x clamped into [eps, 1 - eps] so that boxes at the border stay finite."""
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


class AnchorRefinement(nn.Module):
    """Learned anchors, their position embedding, and the refining decoder loop.

    Args:
        num_anchors: anchors to learn (number of matching queries, all query groups included).
        d_model: width of the decoder.
    """

    def __init__(self, num_anchors: int, d_model: int) -> None:
        super().__init__()
        self.anchors = nn.Embedding(num_anchors, 4)  # logits of normalized cxcywh
        self.pos_embed = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.d_model = d_model
        with torch.no_grad():  # centres spread over the image, boxes a fifth of its size
            self.anchors.weight[:, :2].uniform_(0.05, 0.95)
            self.anchors.weight[:, 2:].fill_(0.2)
            self.anchors.weight.copy_(inverse_sigmoid(self.anchors.weight))

    def initial_anchors(self, count: int) -> Tensor:
        """(count, 4) normalized cxcywh boxes of the first ``count`` learned anchors."""
        return self.anchors.weight[:count].sigmoid()

    def forward(
        self,
        decoder: nn.Module,
        box_head: nn.Module,
        tgt: Tensor,
        anchors: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Tensor | None,
        pos: Tensor | None,
        self_attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the layers of a :class:`~detr.transformer.TransformerDecoder`, refining boxes on the way.

        Args:
            decoder: has ``layers`` (decoder layers) and ``norm`` (applied to every output).
            box_head: maps (..., d) to (..., 4) box corrections in logit space.
            tgt: (B, Q, d) initial query content; anchors: (B, Q, 4) normalized cxcywh.
            memory, pos: (B, HW, d) encoder output and its position encoding; mask (B, HW).
            self_attn_mask: as in :meth:`~detr.transformer.TransformerDecoder.forward`.

        Returns:
            hs (L, B, Q, d) normed layer outputs and boxes (L, B, Q, 4) normalized cxcywh.
        """
        outputs, boxes = [], []
        for layer in decoder.layers:
            query_pos = self.pos_embed(box_sine_embedding(anchors, self.d_model // 2).to(tgt.dtype))  # (B, Q, d)
            tgt = layer(tgt, memory, memory_key_padding_mask, pos, query_pos, self_attn_mask)
            hs = decoder.norm(tgt)  # (B, Q, d)
            box = (box_head(hs).float() + inverse_sigmoid(anchors.float())).sigmoid()  # (B, Q, 4)
            outputs.append(hs)
            boxes.append(box)
            anchors = box.detach()  # each layer learns its own correction (no gradient through the anchor)
        return torch.stack(outputs), torch.stack(boxes)
