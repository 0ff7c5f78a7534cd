"""Anchor-box queries with iterative box refinement, a training option for faster convergence.

After DAB-DETR (Liu et al. 2022) and the box refinement of Deformable DETR (Zhu et al. 2021).
Each decoder query carries an explicit box, its anchor: a learned one for the model's queries
(the noised ground truth for denoising queries, the dense head's best proposals with two-stage
anchors). A decoder layer receives the anchor as its position (sine features of (cx, cy, w, h),
the kind of encoding the image features get, through a small MLP), and the box head predicts a
correction of the anchor in logit space; the corrected box, without gradient, is the next layer's
anchor. Queries so start at places in the image, look there, and every layer only refines, where
plain DETR must first learn what its abstract query positions mean. ``query_embed`` becomes the
queries' initial content.

Adds: ``anchors`` (one learned box per row of ``query_embed``, as logits) and ``pos_embed`` (2d
sine features -> d); the box head's last layer starts at zero (the first boxes are the anchors).
Changes the architecture (used at inference too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..models.layers import box_sine_embedding, inverse_sigmoid
from .base import DecoderQueries, DETROption, OptionState, cross_attention_inputs

if TYPE_CHECKING:
    from ..models.detr import DETR


class AnchorRefinement(DETROption):
    """Learned anchors, their position embedding, and the refining decoder loop."""

    name = "refinement"
    order = 1
    used_at_inference = True
    runs_decoder = True

    def attach(self, model: DETR) -> None:
        decoder = model.transformer.decoder
        if not (hasattr(decoder, "layers") and hasattr(decoder, "norm")):
            raise ValueError(
                "AnchorRefinement runs the decoder layers one by one: the transformer's decoder needs `layers` "
                f"(decoder layers) and `norm` (applied to each output), like detr.Transformer's; "
                f"{type(decoder).__name__} has not"
            )
        d_model = model.transformer.d_model
        self.d_model = d_model
        self.anchors = nn.Embedding(model.query_embed.num_embeddings, 4)  # logits of normalized cxcywh
        self.pos_embed = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        with torch.no_grad():  # centres spread over the image, boxes a fifth of its size
            self.anchors.weight[:, :2].uniform_(0.05, 0.95)
            self.anchors.weight[:, 2:].fill_(0.2)
            self.anchors.weight.copy_(inverse_sigmoid(self.anchors.weight))
        nn.init.zeros_(model.box_head.layers[-1].weight)  # the first predictions are the anchors themselves
        nn.init.zeros_(model.box_head.layers[-1].bias)

    def initial_anchors(self, count: int) -> Tensor:
        """(count, 4) normalized cxcywh boxes of the first ``count`` learned anchors."""
        return self.anchors.weight[:count].sigmoid()

    def add_queries(self, model: DETR, state: OptionState) -> None:
        span = state.spans["matching"]
        assert span.position is not None
        batch = state.memory.shape[0]
        # a copy, not an expand: through an expanded content the ONNX exporter pins the batch size to 1
        span.content = span.position.unsqueeze(0).repeat(batch, 1, 1)  # (B, n, d)
        span.anchors = self.initial_anchors(len(span)).unsqueeze(0).expand(batch, -1, -1)  # (B, n, 4)
        span.position = None  # made from the anchors, layer by layer

    def run_decoder(self, model: DETR, state: OptionState, queries: DecoderQueries) -> tuple[Tensor, Tensor]:
        """Run the decoder's layers, refining the anchors on the way.

        queries: the initial content (B, N, d), the anchors (B, N, 4) normalized cxcywh (every span has
        them) and the self-attention mask. Returns hs (L, B, N, d) normed layer outputs and boxes (L, B, N, 4).
        """
        tgt, anchors, attn_mask = queries.content, queries.anchors, queries.attn_mask
        assert anchors is not None, "every query span needs anchors with AnchorRefinement"
        decoder, box_head = model.transformer.decoder, model.box_head
        outputs, boxes = [], []
        for layer in decoder.layers:
            query_pos = self.pos_embed(box_sine_embedding(anchors, self.d_model // 2).to(tgt.dtype))  # (B, N, d)
            # what the options' cross-attention reads at these anchors (the deformable decoder: where to sample)
            where = cross_attention_inputs(model, state, anchors)
            tgt = layer(tgt, state.memory, state.memory_mask, state.memory_pos, query_pos, attn_mask, **where)
            hs = decoder.norm(tgt)  # (B, N, d)
            box = (box_head(hs).float() + inverse_sigmoid(anchors.float())).sigmoid()  # (B, N, 4)
            outputs.append(hs)
            boxes.append(box)
            anchors = box.detach()  # each layer learns its own correction (no gradient through the anchor)
        return torch.stack(outputs), torch.stack(boxes)
