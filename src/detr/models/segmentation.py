"""DETR's mask head (Carion et al. 2020, section 4.4): a mask per object query, for instance and
panoptic segmentation.

On top of a detection DETR, unchanged:

1. a multi-head attention map of each query's last decoder embedding over the encoder memory,
   softmax taken jointly over heads and positions as in the reference (:class:`MHAttentionMap`):
   (B, Q, heads, h, w);
2. an FPN-style small convolutional head (:class:`MaskHeadSmallConv`) that reads the projected
   features with those maps and upsamples them with the backbone's ``layer3``, ``layer2`` and
   ``layer1`` features (strides 16, 8, 4) to a mask logit map per query at 1/4 of the input
   resolution: ``pred_masks`` (B, Q, H/4, W/4);
3. on matched queries, sigmoid focal and DICE losses (:mod:`detr.losses.mask_loss`).

Parameter names are the reference's (``bbox_attention.q_linear``, ``mask_head.lay1`` ... ``out_lay``,
``adapter1-3``, the detector under ``detr.``), so that its panoptic checkpoints load as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.coco_categories import COCO_PANOPTIC_THING_MAX_ID
from ..losses.criterion import num_boxes_across_processes
from ..losses.mask_loss import DICE_LOSS_COEF, MASK_LOSS_COEF, mask_loss_terms
from ..options.base import OptionState
from ..processing.checks import Target, check_images, check_targets, padding_or_none
from ..processing.mask_postprocess import panoptic_segmentation, query_masks
from ..processing.postprocess import as_detections, class_ids, postprocess, valid_sizes
from ..processing.preprocess import prediction_inputs
from ..processing.tiling import NO_TILED_MASKS
from .detr import DETR


def _group_norm(channels: int) -> nn.GroupNorm:
    # the reference's 8 groups (its widths are multiples of 8); fewer where a narrow model's width is not
    return nn.GroupNorm(math.gcd(8, channels), channels)


class MHAttentionMap(nn.Module):
    """Attention weights (no values) of queries over a feature map: the reference's MHAttentionMap.

    ``forward(q (B, Q, query_dim), k (B, hidden_dim, h, w), mask (B, h, w) bool or None)`` ->
    (B, Q, heads, h, w), a softmax over heads and positions together; padded cells get weight 0.
    """

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.k_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        nn.init.zeros_(self.k_linear.bias)
        nn.init.zeros_(self.q_linear.bias)
        nn.init.xavier_uniform_(self.k_linear.weight)
        nn.init.xavier_uniform_(self.q_linear.weight)
        self.scale = float(hidden_dim / num_heads) ** -0.5

    def forward(self, q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
        q = self.q_linear(q)  # (B, Q, hidden)
        k = F.conv2d(k, self.k_linear.weight[:, :, None, None], self.k_linear.bias)  # 1x1: (B, hidden, h, w)
        batch, queries = q.shape[:2]
        head_dim = self.hidden_dim // self.num_heads
        qh = q.view(batch, queries, self.num_heads, head_dim)  # (B, Q, n, c)
        kh = k.view(batch, self.num_heads, head_dim, *k.shape[-2:])  # (B, n, c, h, w)
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * self.scale, kh)  # (B, Q, n, h, w)
        if mask is not None:
            weights = weights.masked_fill(mask[:, None, None], float("-inf"))
        weights = weights.flatten(2).softmax(-1).view(weights.shape)  # joint softmax over (n, h, w)
        return self.dropout(weights)


class MaskHeadSmallConv(nn.Module):
    """The reference's mask head: 3x3 convolutions with group norm, upsampled FPN-style.

    Args:
        dim: input channels, d_model + heads (the projected features with each query's attention maps).
        fpn_dims: channels of the backbone features added on the way up: ``layer3``, ``layer2``, ``layer1``
            in the reference; a backbone that stops earlier gives fewer (``layer1`` alone after ``layer2``).
        context_dim: d_model; the widths are context_dim / 2, / 4, / 8, / 16.

    ``forward(x (B, d, h, w), bbox_mask (B, Q, heads, h, w), fpns [(B, C, H/16, W/16), (B, C', H/8, W/8),
    (B, C'', H/4, W/4)])`` -> mask logits (B*Q, 1, H/4, W/4), query-major within each image.
    """

    def __init__(self, dim: int, fpn_dims: list[int], context_dim: int):
        super().__init__()
        if not 1 <= len(fpn_dims) <= 3:
            raise ValueError(f"the mask head adds 1 to 3 backbone levels on the way up, got {len(fpn_dims)}")
        self.stages = len(fpn_dims)  # 3 in the reference (layer3, layer2, layer1); fewer on a shorter backbone
        widths = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16][: self.stages + 2]
        self.lay1, self.gn1 = nn.Conv2d(dim, dim, 3, padding=1), _group_norm(dim)
        self.lay2, self.gn2 = nn.Conv2d(dim, widths[1], 3, padding=1), _group_norm(widths[1])
        for k in range(self.stages):  # lay3-5 / gn3-5 and adapter1-3, the reference's names
            setattr(self, f"lay{k + 3}", nn.Conv2d(widths[k + 1], widths[k + 2], 3, padding=1))
            setattr(self, f"gn{k + 3}", _group_norm(widths[k + 2]))
            setattr(self, f"adapter{k + 1}", nn.Conv2d(fpn_dims[k], widths[k + 1], 1))
        self.out_lay = nn.Conv2d(widths[-1], 1, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor, bbox_mask: Tensor, fpns: list[Tensor]) -> Tensor:
        queries = bbox_mask.shape[1]
        # every image's features once per query: (B, C, h, w) -> (B*Q, C, h, w)
        x = torch.cat([x.repeat_interleave(queries, dim=0), bbox_mask.flatten(0, 1)], 1)  # (B*Q, d + heads, h, w)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        for k, fpn in enumerate(fpns[: self.stages]):
            adapter, lay, gn = (
                getattr(self, f"{name}{n}") for name, n in (("adapter", k + 1), ("lay", k + 3), ("gn", k + 3))
            )
            cur = adapter(fpn).repeat_interleave(queries, dim=0)  # adapted once per image, then (B*Q, C, H', W')
            x = cur + F.interpolate(x, size=cur.shape[-2:], mode="nearest")
            x = F.relu(gn(lay(x)))
        return self.out_lay(x)


class MaskPredictor:
    """A mask model's post-processing, whatever computes its outputs: detections with masks (``predict``'s,
    :meth:`_mask_detections`) and :meth:`panoptic` segments, for :class:`DETRSegmentation` and for its exported
    file (:mod:`detr.deploy.runtime`) alike. A subclass has ``preprocessing``, ``class_names`` and
    ``num_classes``, and gives :meth:`_mask_outputs`."""

    def _mask_outputs(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, 3, H, W) normalized images, mask (B, H, W) bool (True on padding) -> the last layer's logits
        (B, Q, K+1), boxes (B, Q, 4) normalized cxcywh and mask logits (B, Q, H/4, W/4), as in eval mode."""
        raise NotImplementedError

    def _outputs_for(self, x: Any, mask: Tensor | None, image_sizes: Tensor | None, preprocessor: Any) -> tuple:
        """Outputs for ``predict``'s inputs: logits, boxes of the last layer, mask logits, the sizes to scale
        to, the resized images' sizes inside the padded input, and its padded size."""
        x, mask, sizes = prediction_inputs(x, mask, image_sizes, preprocessor or self.preprocessing)
        logits, boxes, masks = self._mask_outputs(x, mask)
        return logits, boxes, masks, sizes, valid_sizes(mask), tuple(x.shape[-2:])

    @torch.no_grad()
    def _mask_detections(
        self,
        x: Any,
        mask: Tensor | None,
        k: int,
        score_threshold: float,
        image_sizes: Tensor | None,
        preprocessor: Any,
        nms: float | None,
        classes: Sequence[int | str] | None,
        mask_threshold: float,
    ) -> list[list[dict[str, Any]]]:
        """:meth:`DETRSegmentation.predict`'s detections: each with its ``"mask"``, (H, W) bool in the original
        image's pixels (``sigmoid > mask_threshold``, the reference's rule)."""
        logits, boxes, masks, sizes, inputs, padded = self._outputs_for(x, mask, image_sizes, preprocessor)
        wanted = None if classes is None else class_ids(classes, self.class_names, self.num_classes)
        found = postprocess(logits, boxes, sizes, score_threshold, k, nms_iou=nms, classes=wanted)
        detections = []
        for i, result in enumerate(found):
            size = tuple(int(v) for v in sizes[i])
            image_masks = query_masks(
                masks[i, result["queries"]], size, tuple(int(v) for v in inputs[i]), padded, mask_threshold
            )  # (n, H, W)
            image = as_detections(result["boxes"], result["scores"], result["labels"], self.class_names)
            for det, image_mask in zip(image, image_masks.cpu(), strict=True):
                det["mask"] = image_mask
            detections.append(image)
        return detections

    @torch.no_grad()
    def panoptic(
        self,
        x: Any,
        is_thing: Any = None,
        threshold: float = 0.85,
        mask: Tensor | None = None,
        image_sizes: Tensor | None = None,
        preprocessor: Any = None,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Panoptic segmentation of each image (:func:`detr.processing.mask_postprocess.panoptic_segmentation`):
        ``{"segmentation": (H, W) segment ids, "segments_info": [...]}`` in the original image's pixels.

        ``is_thing``: per class id, whether it is a countable thing (default: COCO panoptic's rule for
        a 250-class model, ids up to 90). ``threshold``: the reference's 0.85 minimum query score.
        """
        if is_thing is None:
            if self.num_classes != 250:
                raise ValueError("give is_thing (per class id: a countable thing, or stuff) for this model's classes")
            is_thing = [i <= COCO_PANOPTIC_THING_MAX_ID for i in range(self.num_classes)]
        logits, _, masks, sizes, inputs, padded = self._outputs_for(x, mask, image_sizes, preprocessor)
        results = []
        for i in range(logits.shape[0]):
            h, w = (int(v) for v in inputs[i])
            # the mask logits of the image itself, without the padding, at 1/4 of its resized size
            crop = masks[
                i : i + 1, :, : math.ceil(h * masks.shape[-2] / padded[0]), : math.ceil(w * masks.shape[-1] / padded[1])
            ]
            results += panoptic_segmentation(
                logits[i : i + 1], crop, sizes[i : i + 1], is_thing, threshold=threshold, **options
            )
        return results


class DETRSegmentation(MaskPredictor, nn.Module):
    """A DETR with the paper's mask head (the reference's ``DETRsegm``).

    ``forward(x, mask=None)`` returns ``(pred_logits (B, Q, K+1), pred_boxes (B, Q, 4) normalized
    cxcywh, pred_masks (B, Q, H/4, W/4) logits)``; with ``aux_loss`` the list of every decoder
    layer's ``(pred_logits, pred_boxes)``, final layer last with its ``pred_masks``.

    Args:
        detr: the detector (the paper's DETR; its backbone must have ``layer1``-``layer4``).
        freeze_detr: train the mask head only (the reference's second stage, ``--frozen_weights``).
    """

    task = "masks"  # boxes with a mask each, and panoptic segmentation (:meth:`panoptic`)

    def __init__(self, detr: DETR, freeze_detr: bool = False) -> None:
        super().__init__()
        levels = getattr(detr.backbone, "level_channels", None)
        if levels is None or len(levels) < 2:
            raise ValueError(
                "the mask head reads the backbone's earlier stages (layer1 at stride 4 at least): it needs a "
                f"ResNetBackbone with num_layers >= 2 (this backbone has {levels or 'no'} levels)"
            )
        self.detr = detr
        hidden, heads = detr.transformer.d_model, detr.transformer.nhead
        self.bbox_attention = MHAttentionMap(hidden, hidden, heads, dropout=0.0)
        # the stages under the last, deepest first, at most three (the reference: layer3, layer2, layer1)
        self.fpn_levels = list(range(len(levels) - 2, -1, -1))[:3]
        self.mask_head = MaskHeadSmallConv(hidden + heads, [levels[i] for i in self.fpn_levels], hidden)
        self.freeze_detr = freeze_detr
        if freeze_detr:
            detr.requires_grad_(False)

    # the detector's description, read through
    @property
    def num_classes(self) -> int:
        return self.detr.num_classes

    @property
    def num_queries(self) -> int:
        return self.detr.num_queries

    @property
    def aux_loss(self) -> bool:
        return self.detr.aux_loss

    @property
    def options(self) -> tuple:
        """The detector's training options (the mask head reads the embeddings of its own queries)."""
        return self.detr.options

    @property
    def class_names(self) -> list[str] | None:
        return self.detr.class_names

    @class_names.setter
    def class_names(self, names: list[str] | None) -> None:
        self.detr.class_names = names

    @property
    def category_ids(self) -> list[int] | None:
        return self.detr.category_ids

    @category_ids.setter
    def category_ids(self, ids: list[int] | None) -> None:
        self.detr.category_ids = ids

    @property
    def preprocessing(self) -> Any:
        return self.detr.preprocessing

    # ------------------------------------------- weights (detr.hub), as the detector's
    def save_pretrained(self, directory: str | Path) -> Path:
        """Save weights (safetensors) and the description that rebuilds this model into ``directory``."""
        from ..hub import serialization

        return serialization.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> DETRSegmentation:
        """Rebuild a mask model from a directory written by :meth:`save_pretrained` or by transformers'
        ``DetrForSegmentation.save_pretrained``."""
        model = DETR.from_pretrained(directory, **overrides)
        if not isinstance(model, cls):
            raise ValueError(
                f"{directory} holds a detection model without a mask head: load it with DETR.from_pretrained"
            )
        return model

    def export_hf(self, directory: str | Path) -> Path:
        """Write this model in the layout of transformers' ``DetrForSegmentation.from_pretrained``."""
        from ..hub import serialization

        return serialization.export_hf(self, directory)

    def _detect(
        self, x: Tensor, mask: Tensor | None, targets: Sequence[Target] | None = None
    ) -> tuple[Tensor, Tensor, OptionState | None, tuple]:
        """The detector's pass: logits (L, B, Q', K+1), boxes (L, B, Q', 4), the pass's state (None with a
        transformer of one's own) and what the mask head reads: the last layer's embeddings (B, Q', d), the
        encoder memory (B, d, h, w), the feature mask (B, h, w) or None, the projected features
        (B, d, h, w) and the backbone stages it adds (deepest first)."""
        levels = self.detr.backbone.levels(x)  # layer1 (stride 4) ... the last
        found = self.detr.decoder_pass(x, mask, last_only=False, targets=targets, features=levels[-1])
        fpns = [levels[i] for i in self.fpn_levels]
        return found.logits, found.boxes, found.state, (found.hidden, found.memory, found.feat_mask, found.src, fpns)

    def _masks(self, context: tuple, images: Tensor | None = None, queries: Tensor | None = None) -> Tensor:
        """Mask logits of every query, (B, Q', H/4, W/4), or of the (image, query) pairs given, (M, H/4, W/4):
        each map depends on its own query and image only, so training computes the matched ones alone."""
        hidden, memory, feat_mask, src, fpns = context
        if images is None:
            bbox_mask = self.bbox_attention(hidden, memory, feat_mask)  # (B, Q', heads, h, w)
            masks = self.mask_head(src, bbox_mask, fpns)  # (B*Q', 1, H/4, W/4)
            return masks.view(src.shape[0], hidden.shape[1], *masks.shape[-2:])  # (B, Q', H/4, W/4)
        feat_mask = None if feat_mask is None else feat_mask[images]
        bbox_mask = self.bbox_attention(hidden[images, queries][:, None], memory[images], feat_mask)  # (M, 1, n, h, w)
        return self.mask_head(src[images], bbox_mask, [f[images] for f in fpns])[:, 0]  # (M, H/4, W/4)

    def _decode(
        self, x: Tensor, mask: Tensor | None, targets: Sequence[Target] | None = None
    ) -> tuple[Tensor, Tensor, Tensor, OptionState | None]:
        """x (B, 3, H, W), mask (B, H, W) or None (nothing padded) -> logits (L, B, Q', K+1), boxes
        (L, B, Q', 4), mask logits (B, Q', H/4, W/4) of the last layer, and the pass's state (None with a
        transformer of one's own). ``targets`` reach the options that use them (denoising queries)."""
        logits, boxes, state, context = self._detect(x, mask, targets)
        return logits, boxes, self._masks(context), state

    def decode(self, x: Tensor, mask: Tensor | None = None, all_layers: bool | None = None) -> tuple[Tensor, Tensor]:
        """The detector's :meth:`~detr.models.detr.DETR.decode` (boxes only: evaluation of boxes)."""
        return self.detr.decode(x, mask, all_layers)

    def decode_with_masks(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The last layer's logits (B, Q, K+1), boxes (B, Q, 4) and mask logits (B, Q, H/4, W/4)."""
        logits, boxes, masks, _ = self._decode(x, padding_or_none(check_images(x, mask)))
        queries = slice(0, self.num_queries)
        return logits[-1, :, queries], boxes[-1, :, queries], masks[:, queries]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Any:
        logits, boxes, masks, _ = self._decode(x, padding_or_none(check_images(x, mask)))
        queries = slice(0, self.num_queries)  # the model's own: options may decode more of them in training
        logits, boxes, masks = logits[:, :, queries], boxes[:, :, queries], masks[:, queries]
        if self.aux_loss:
            layers: list[tuple[Tensor, ...]] = list(zip(logits[:-1].unbind(0), boxes[:-1].unbind(0)))
            return [*layers, (logits[-1], boxes[-1], masks)]
        return logits[-1], boxes[-1], masks

    # ------------------------------------------------------------------- loss
    def get_loss_dict(self, x: Tensor, targets: Sequence[Target], mask: Tensor | None = None) -> dict[str, Tensor]:
        """The detector's loss terms (every decoder layer with ``aux_loss``) plus ``loss_mask`` (sigmoid
        focal) and ``loss_dice`` on the last layer's matched queries, and their weighted total ``"loss"``.

        targets: as :meth:`detr.models.detr.DETR.get_loss_dict`, each also with ``masks`` (N_i, H_i, W_i)
        bool in the pixels of its image as it sits in ``x`` (top-left, before padding).
        """
        mask = padding_or_none(check_images(x, mask))
        check_targets(targets, x.shape[0], self.num_classes, x.device)
        detr = self.detr
        logits, boxes, state, context = self._detect(x, mask, targets)  # (L, B, Q', K+1), (L, B, Q', 4)
        layers = logits.shape[0] if self.aux_loss else 1
        terms = detr.loss_terms(logits[-layers:], boxes[-layers:], state, targets)
        queries = slice(0, self.num_queries)
        last = (logits[-1, :, queries], boxes[-1, :, queries])
        indices = detr.criterion.matcher(last, targets)  # the last layer's pairs, as the criterion's
        images = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(x.device)
        matched = torch.cat([q for q, _ in indices]).to(x.device)
        size = context[4][-1].shape[-2:]  # the mask head's output: layer1's grid, H/4 x W/4
        masks = logits.new_zeros(x.shape[0], self.num_queries, *size)  # (B, Q, H/4, W/4), unmatched never read
        if len(matched):  # the mask head on the matched queries alone: the loss reads no other
            masks = masks.index_put((images, matched), self._masks(context, images, matched))
        num_boxes = num_boxes_across_processes(targets, x.device)
        # targets are padded like the input (to its padded size), so that both grids cover the same region
        terms.update(mask_loss_terms(masks, targets, indices, num_boxes, pad_to=tuple(x.shape[-2:])))
        terms["loss"] = terms["loss"] + MASK_LOSS_COEF * terms["loss_mask"] + DICE_LOSS_COEF * terms["loss_dice"]
        return terms

    def get_loss(self, x: Tensor, targets: Sequence[Target], mask: Tensor | None = None) -> Tensor:
        """Scalar training loss: the detector's and the mask terms, weighted."""
        return self.get_loss_dict(x, targets, mask)["loss"]

    # -------------------------------------------------------------- inference
    def _mask_outputs(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`decode_with_masks` in eval mode on the model's device (:class:`MaskPredictor`'s pass)."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            return self.decode_with_masks(x.to(device), mask.to(device))
        finally:
            self.train(was_training)

    @torch.no_grad()
    def predict(
        self,
        x: Any,
        mask: Tensor | None = None,
        k: int = 100,
        score_threshold: float = 0.0,
        image_sizes: Tensor | None = None,
        preprocessor: Any = None,
        nms: float | None = None,
        classes: Sequence[int | str] | None = None,
        mask_threshold: float = 0.5,
        tile: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """:meth:`detr.models.detr.DETR.predict`'s detections (same arguments), each with its ``"mask"``:
        (H, W) bool in the original image's pixels (``sigmoid > mask_threshold``, the reference's rule).
        No tiles (``tile`` is refused, saying why): tiled prediction gives boxes only."""
        if tile is not None:
            raise ValueError(NO_TILED_MASKS)
        return self._mask_detections(
            x, mask, k, score_threshold, image_sizes, preprocessor, nms, classes, mask_threshold
        )
