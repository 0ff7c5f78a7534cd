"""The DETR detector: backbone -> 1x1 projection -> transformer -> class and box heads.

Boxes are normalized (cx, cy, w, h) relative to each image's valid (unpadded)
region, as in the reference code: a padded batch predicts the same boxes for
an image as that image alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

from .checks import check_images, check_targets, padding_or_none
from .criterion import SetCriterion
from .denoising import DenoisingBatch, DenoisingQueries
from .denoising import attention_mask as denoising_attention_mask
from .dense import DenseHead
from .matcher import HungarianMatcher, Target
from .position_encoding import PositionEmbeddingSine
from .postprocess import postprocess, valid_sizes
from .preprocess import ImagePreprocessor
from .refinement import AnchorRefinement

if TYPE_CHECKING:
    from .inference import InferenceDETR

Output = tuple[Tensor, Tensor]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class DETRConfig:
    """What a :class:`DETR` is built from (the fields and defaults of the API document).

    backbone: module with a positive int ``num_channels``; maps (B, 3, H, W) to (B, num_channels, h, w).
    transformer: module with a positive int ``d_model``; called as
        ``transformer(src (B, d, h, w), mask (B, h, w), query_embed (Q, d), pos (B, d, h, w))`` and
        returning ``(hs (L, B, Q, d), memory)``.
    num_classes: number of foreground classes (COCO: 91, the category-id range); the model adds "no object".
    num_queries: object queries, the most detections per image.
    aux_loss: forward returns, and the loss uses, every decoder layer's predictions.
    matcher: replaces the default :class:`HungarianMatcher` (reference costs class 1, L1 5, GIoU 2).
    class_loss_coef, bbox_loss_coef, giou_loss_coef: weights of the loss terms.
    eos_coef: class weight of "no object" in the cross-entropy.
    """

    backbone: nn.Module
    transformer: nn.Module
    num_classes: int
    num_queries: int = 100
    aux_loss: bool = True
    matcher: nn.Module | None = None
    class_loss_coef: float = 1.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    eos_coef: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(self.backbone).__name__}")
        if not _positive_int(getattr(self.backbone, "num_channels", None)):
            raise ValueError(
                "backbone must expose a positive int attribute num_channels (its output channels), "
                f"got {getattr(self.backbone, 'num_channels', None)!r}"
            )
        if not isinstance(self.transformer, nn.Module):
            raise TypeError(f"transformer must be an nn.Module, got {type(self.transformer).__name__}")
        if not _positive_int(getattr(self.transformer, "d_model", None)):
            raise ValueError(
                "transformer must expose a positive int attribute d_model (its hidden size), "
                f"got {getattr(self.transformer, 'd_model', None)!r}"
            )
        if not _positive_int(self.num_classes):
            raise ValueError(f"num_classes must be an int >= 1 (foreground classes), got {self.num_classes!r}")
        if not _positive_int(self.num_queries):
            raise ValueError(f"num_queries must be an int >= 1, got {self.num_queries!r}")
        if not isinstance(self.aux_loss, bool):
            raise TypeError(f"aux_loss must be a bool, got {self.aux_loss!r}")
        if self.matcher is not None and not callable(self.matcher):
            raise TypeError("matcher must be callable as matcher((pred_logits, pred_boxes), targets), or None")
        for name in ("class_loss_coef", "bbox_loss_coef", "giou_loss_coef", "eos_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's box head: 3 layers, last one to 4)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DETR(nn.Module):
    """DEtection TRansformer (Carion et al., 2020).

    Args:
        config: the parts and loss settings, see :class:`DETRConfig`.
        position_encoding: maps the (B, h, w) feature padding mask to a (B, d_model, h, w)
            encoding; defaults to the sine encoding with d_model // 2 features per axis.
        class_names: optional names of the ``num_classes`` classes, used by :meth:`predict`.
        query_groups: train with this many independent groups of ``num_queries`` queries
            (Group DETR, Chen et al. 2022): each group is matched one-to-one to the targets
            and the groups cannot attend to each other, which gives each target several
            supervised queries and speeds up convergence. Only the first group is used
            outside training, so inference is unchanged.
        denoising_groups: train with this many groups of denoising queries (DN-DETR, see
            :mod:`detr.denoising`), with ``denoising_box_noise`` and ``denoising_label_noise``;
            0 (the reference) turns them off. Training only; inference is unchanged.
        box_refinement: anchor-box queries refined layer by layer (DAB-DETR style, see
            :mod:`detr.refinement`): ``query_embed`` becomes the queries' initial content, learned
            anchors their positions, and the box head predicts corrections of each layer's anchors.
            Changes the architecture (not the reference's), for faster training from scratch.
        dense_aux_loss: train with an auxiliary one-stage head on the encoder output whose
            every token is supervised, one-to-many (Co-DETR style, see :mod:`detr.dense`): a
            dense training signal for the backbone and encoder. Training only (inference is
            unchanged) unless ``two_stage`` uses its proposals.
        two_stage: the decoder's anchors are the boxes of the dense head's best-scoring encoder
            tokens, one per query (two-stage query selection as in Deformable DETR and DINO's
            mixed query selection: positions from the image, content learned); needs
            ``box_refinement`` and ``dense_aux_loss``, and the dense head then runs at inference too.
    """

    def __init__(
        self,
        config: DETRConfig,
        *,
        position_encoding: nn.Module | None = None,
        class_names: Sequence[str] | None = None,
        query_groups: int = 1,
        denoising_groups: int = 0,
        denoising_box_noise: float = 0.4,
        denoising_label_noise: float = 0.2,
        box_refinement: bool = False,
        dense_aux_loss: bool = False,
        two_stage: bool = False,
    ) -> None:
        super().__init__()
        if two_stage and not (box_refinement and dense_aux_loss):
            raise ValueError(
                "two_stage selects anchor boxes from the dense head: set box_refinement=True and dense_aux_loss=True too"
            )
        if not _positive_int(query_groups):
            raise ValueError(f"query_groups must be an int >= 1, got {query_groups!r}")
        if not isinstance(config, DETRConfig):
            raise TypeError(f"DETR takes a DETRConfig, got {type(config).__name__}")
        if class_names is not None and len(class_names) != config.num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {config.num_classes}")
        self.config = config
        self.num_classes = config.num_classes
        self.num_queries = config.num_queries
        self.aux_loss = config.aux_loss
        self.class_names = list(class_names) if class_names is not None else None
        self.query_groups = query_groups
        self.two_stage = two_stage
        d_model = config.transformer.d_model

        self.backbone = config.backbone
        self.position_encoding = position_encoding or PositionEmbeddingSine(d_model // 2, normalize=True)
        self.input_proj = nn.Conv2d(config.backbone.num_channels, d_model, kernel_size=1)
        self.transformer = config.transformer
        self.query_embed = nn.Embedding(config.num_queries * query_groups, d_model)
        self.class_head = nn.Linear(d_model, config.num_classes + 1)
        self.box_head = MLP(d_model, d_model, 4, num_layers=3)
        self.refinement = AnchorRefinement(config.num_queries * query_groups, d_model) if box_refinement else None
        if box_refinement:  # the first predictions are the anchors themselves
            nn.init.zeros_(self.box_head.layers[-1].weight)
            nn.init.zeros_(self.box_head.layers[-1].bias)
        self.denoising = (
            DenoisingQueries(
                config.num_classes,
                d_model,
                denoising_groups,
                denoising_box_noise,
                denoising_label_noise,
                embed_box=not box_refinement,  # with refinement the noised box is the query's anchor
            )
            if denoising_groups
            else None
        )

        self.dense_head = (
            DenseHead(d_model, config.num_classes, bbox_coef=config.bbox_loss_coef, giou_coef=config.giou_loss_coef)
            if dense_aux_loss
            else None
        )

        matcher = config.matcher if config.matcher is not None else HungarianMatcher(1.0, 5.0, 2.0)
        self.criterion = SetCriterion(
            config.num_classes,
            matcher,
            class_loss_coef=config.class_loss_coef,
            bbox_loss_coef=config.bbox_loss_coef,
            giou_loss_coef=config.giou_loss_coef,
            eos_coef=config.eos_coef,
        )

    # ---------------------------------------------------------------- forward
    def decode(self, x: Tensor, mask: Tensor | None = None, all_layers: bool | None = None) -> tuple[Tensor, Tensor]:
        """Predictions of the decoder layers.

        Args:
            x: (B, 3, H, W) float normalized images.
            mask: (B, H, W) bool, True on padding; all False when omitted.
            all_layers: heads on every decoder layer (default: ``aux_loss``) or on the last only.

        Returns:
            pred_logits (L, B, Q, K+1) and pred_boxes (L, B, Q, 4) normalized cxcywh, final layer last;
            L = 1 when only the last layer is wanted.
        """
        return self._decode(x, padding_or_none(check_images(x, mask)), all_layers)

    def _decode(
        self,
        x: Tensor,
        mask: Tensor | None,
        all_layers: bool | None,
        dn: DenoisingBatch | None = None,
        dense: list[tuple[Tensor, Tensor, Tensor, Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Like :meth:`decode`, without input checks; ``mask`` None means no padding (and no
        attention masking at all). In training with query groups Q = groups * num_queries, and
        denoising queries ``dn`` (E of them) come after: Q = groups * num_queries + E. When a
        list ``dense`` is given, the dense head's outputs on the encoder output are appended to it."""
        features = self.backbone(x)  # (B, C_b, h, w)
        batch, _, h, w = features.shape
        if mask is None:  # one position encoding, shared by the batch
            feat_mask = None
            pos = self.position_encoding(torch.zeros((1, h, w), dtype=torch.bool, device=x.device))  # (1, d, h, w)
            pos = pos.to(features.dtype).expand(batch, -1, -1, -1)  # (B, d, h, w)
        else:
            feat_mask = F.interpolate(mask[None].float(), size=(h, w)).to(torch.bool)[0]  # (B, h, w)
            pos = self.position_encoding(feat_mask).to(features.dtype)  # (B, d, h, w)
        src = self.input_proj(features)
        groups = self.query_groups if self.training else 1
        queries = self.query_embed.weight[: self.num_queries * groups]  # (G*Q, d)
        if self.refinement is not None:
            return self._decode_refined(src, feat_mask, pos, queries, groups, all_layers, dn, dense)
        attn = self._query_attention_mask(len(queries), groups, dn)
        if dn is not None:
            query_pos = torch.cat([queries.unsqueeze(0).expand(batch, -1, -1), dn.query_pos], dim=1)  # (B, GQ+E, d)
            tgt = torch.cat([query_pos.new_zeros(batch, len(queries), query_pos.shape[-1]), dn.tgt], dim=1)
            hs, memory = self.transformer(src, feat_mask, query_pos, pos, query_attn_mask=attn, tgt=tgt)
        else:
            hs, memory = self.transformer(src, feat_mask, queries, pos, query_attn_mask=attn)  # (L, B, G*Q, d)
        if dense is not None and self.dense_head is not None:
            dense.append(self.dense_head(memory.flatten(2).transpose(1, 2), h, w, feat_mask))  # memory (B, HW, d)
        if not (self.aux_loss if all_layers is None else all_layers):
            hs = hs[-1:]
        return self.class_head(hs), self.box_head(hs).sigmoid()

    def _query_attention_mask(self, num_matching: int, groups: int, dn: DenoisingBatch | None) -> Tensor | None:
        """Decoder self-attention mask keeping query groups (and denoising groups) apart, True = may
        attend: (B, 1, Q', Q') with denoising queries, (G*Q, G*Q) with several groups, else None."""
        if dn is not None:
            return denoising_attention_mask(num_matching, groups, dn)
        if groups == 1:
            return None
        group = torch.arange(num_matching, device=self.query_embed.weight.device) // self.num_queries
        return group[:, None] == group[None, :]  # queries only see their own group

    def _decode_refined(
        self,
        src: Tensor,
        feat_mask: Tensor | None,
        pos: Tensor,
        queries: Tensor,
        groups: int,
        all_layers: bool | None,
        dn: DenoisingBatch | None,
        dense: list[tuple[Tensor, Tensor, Tensor, Tensor]] | None,
    ) -> tuple[Tensor, Tensor]:
        """The decoder with anchor-box queries (``box_refinement``); arguments as inside :meth:`_decode`."""
        assert self.refinement is not None
        batch, _, h, w = src.shape
        memory, key_padding_mask, pos = self.transformer.encode(src, feat_mask, pos)  # (B, HW, d), (B, HW), (B, HW, d)
        proposals = None
        if self.dense_head is not None and (self.two_stage or dense is not None):
            proposals = self.dense_head(memory, h, w, feat_mask)
            if dense is not None:
                dense.append(proposals)
        # a copy, not an expand: through an expanded tgt the ONNX exporter pins the batch size to 1
        tgt = queries.unsqueeze(0).repeat(batch, 1, 1)  # (B, G*Q, d)
        anchors = self.refinement.initial_anchors(len(queries)).unsqueeze(0).expand(batch, -1, -1)  # (B, G*Q, 4)
        if self.two_stage:
            assert proposals is not None
            anchors = self._selected_anchors(proposals, anchors, groups)
        if dn is not None:
            tgt = torch.cat([tgt, dn.tgt], dim=1)  # (B, G*Q+E, d)
            anchors = torch.cat([anchors, dn.noisy_box], dim=1)  # (B, G*Q+E, 4)
        attn = self._query_attention_mask(len(queries), groups, dn)
        hs, boxes = self.refinement(
            self.transformer.decoder, self.box_head, tgt, anchors, memory, key_padding_mask, pos, attn
        )  # (L, B, Q', d), (L, B, Q', 4)
        if not (self.aux_loss if all_layers is None else all_layers):
            hs, boxes = hs[-1:], boxes[-1:]
        return self.class_head(hs), boxes.to(hs.dtype)

    def _selected_anchors(
        self, proposals: tuple[Tensor, Tensor, Tensor, Tensor], learned: Tensor, groups: int
    ) -> Tensor:
        """Two-stage anchors: the boxes of the best-scoring valid tokens, one per query, the same
        for each query group; the learned anchors, in order, stand in for missing valid tokens
        (a map with fewer unpadded tokens than queries).

        proposals: the dense head's (logits (B, HW, K), boxes (B, HW, 4), anchors, valid (B, HW));
        learned: (B, G*Q, 4). Returns (B, G*Q, 4) normalized cxcywh, without gradient.
        """
        logits, boxes, _, valid = proposals
        score = logits.float().max(-1).values.masked_fill(~valid, -math.inf)  # (B, HW) best class score per token
        # the learned anchors as Q more candidates, ranked below every valid token and above padding,
        # so that top-Q always has Q candidates (a fixed k, whatever the image size: ONNX export)
        # (-1e6: far below any real logit, yet distinct steps of 1 in float32, so their order holds)
        reserve = -1e6 - torch.arange(self.num_queries, device=score.device, dtype=torch.float32)  # (Q,)
        score = torch.cat([score, reserve.expand(score.shape[0], -1)], dim=1)  # (B, HW+Q)
        candidates = torch.cat([boxes, learned[:, : self.num_queries].to(boxes.dtype)], dim=1)  # (B, HW+Q, 4)
        index = score.topk(self.num_queries, dim=1).indices  # (B, Q)
        chosen = candidates.gather(1, index.unsqueeze(-1).expand(-1, -1, 4)).detach()  # (B, Q, 4)
        return chosen.repeat(1, groups, 1)  # (B, G*Q, 4)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Output | list[Output]:
        """x: (B, 3, H, W) float, mask: (B, H, W) bool (True on padding).

        Returns ``(pred_logits (B, Q, num_classes+1), pred_boxes (B, Q, 4) normalized cxcywh)``;
        with ``aux_loss`` the list of such tuples, one per decoder layer, final last.
        """
        logits, boxes = self.decode(x, mask)  # (L, B, Q, K+1), (L, B, Q, 4)
        logits, boxes = logits[:, :, : self.num_queries], boxes[:, :, : self.num_queries]  # first query group
        if self.aux_loss:
            return list(zip(logits.unbind(0), boxes.unbind(0)))
        return logits[-1], boxes[-1]

    # ------------------------------------------------------------------- loss
    def get_loss_dict(self, x: Tensor, targets: Sequence[Target], mask: Tensor | None = None) -> dict[str, Tensor]:
        """All loss terms (see :class:`SetCriterion`) plus their weighted total under ``"loss"``.

        targets: one dict per image, ``class_id`` int64 (N_i,) in [0, num_classes-1] and ``box``
        float (N_i, 4) normalized cxcywh relative to the image's valid region; N_i may be 0.
        """
        mask = padding_or_none(check_images(x, mask))
        check_targets(targets, x.shape[0], self.num_classes)
        dn = self.denoising(targets, x.device) if self.denoising is not None and self.training else None
        dense: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        logits, boxes = self._decode(
            x, mask, all_layers=None, dn=dn, dense=dense
        )  # (L, B, G*Q [+E], K+1), (L, B, G*Q [+E], 4)
        if dn is not None:
            extra = dn.valid.shape[1]
            dn_logits, dn_boxes = logits[:, :, -extra:], boxes[:, :, -extra:]
            logits, boxes = logits[:, :, :-extra], boxes[:, :, :-extra]
        groups = logits.shape[2] // self.num_queries
        terms: dict[str, Tensor] = {}
        total = None
        for g in range(groups):  # each group is matched and supervised on its own
            q = slice(g * self.num_queries, (g + 1) * self.num_queries)
            group_terms = self.criterion(list(zip(logits[:, :, q].unbind(0), boxes[:, :, q].unbind(0))), targets)
            total = group_terms["loss"] if total is None else total + group_terms["loss"]
            if g == 0:
                terms = group_terms  # terms of the first group, the one used for inference
        if dn is not None:
            dn_terms = self._denoising_loss(dn_logits, dn_boxes, dn)
            total = total + dn_terms.pop("loss")
            terms.update(dn_terms)
        if dense:
            assert self.dense_head is not None
            dense_terms = self.dense_head.loss(*dense[0], targets)
            total = total + dense_terms.pop("loss")
            terms.update(dense_terms)
        terms["loss"] = total
        return terms

    def _denoising_loss(self, logits: Tensor, boxes: Tensor, dn: DenoisingBatch) -> dict[str, Tensor]:
        """Reconstruction loss of the denoising queries: each must give back its own target (no matching).

        logits (L, B, E, K+1), boxes (L, B, E, 4); CE, L1 and GIoU averaged over the valid
        queries, with the loss coefficients of the matching loss, summed over layers.
        """
        weights = self.criterion.weight_dict
        target_class, target_box = dn.class_id[dn.valid], dn.box[dn.valid].float()  # (M,), (M, 4)
        target_xyxy = box_convert(target_box, "cxcywh", "xyxy")
        total = torch.zeros((), device=logits.device)
        layer: dict[str, Tensor] = {}
        for layer_logits, layer_boxes in zip(logits, boxes):
            pred_box = layer_boxes[dn.valid].float()  # (M, 4)
            giou = torch.diag(generalized_box_iou(box_convert(pred_box, "cxcywh", "xyxy"), target_xyxy))
            layer = {
                "loss_dn_ce": F.cross_entropy(layer_logits[dn.valid].float(), target_class),
                "loss_dn_bbox": F.l1_loss(pred_box, target_box, reduction="none").sum(1).mean(),
                "loss_dn_giou": (1 - giou).mean(),
            }
            total = total + sum(weights[name.replace("_dn", "")] * value for name, value in layer.items())
        return {**layer, "loss": total}  # the terms logged are the final layer's

    def get_loss(self, x: Tensor, targets: Sequence[Target], mask: Tensor | None = None) -> Tensor:
        """Scalar training loss (weighted CE + L1 + GIoU, over every decoder layer with ``aux_loss``)."""
        return self.get_loss_dict(x, targets, mask)["loss"]

    # ----------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Save weights (safetensors) and the config that rebuilds this model into ``directory``."""
        from .serialization import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> DETR:
        """Rebuild a model from a directory written by :meth:`save_pretrained` or by transformers."""
        from .serialization import from_pretrained

        return from_pretrained(directory, **overrides)

    def export_hf(self, directory: str | Path) -> Path:
        """Write this model in the layout transformers' ``DetrForObjectDetection.from_pretrained`` loads."""
        from .serialization import export_hf

        return export_hf(self, directory)

    # -------------------------------------------------------------- inference
    def optimize_for_inference(
        self, dtype: torch.dtype = torch.float32, channels_last: bool = True, compile: bool = False
    ) -> InferenceDETR:
        """A faster inference-only copy whose ``forward(x, mask=None)`` returns ``(pred_logits,
        pred_boxes)`` of the last layer: batch norm folded, channels-last, no masking work without
        padding, optional bf16 autocast and ``torch.compile`` (see :mod:`detr.inference`)."""
        from .inference import InferenceDETR

        return InferenceDETR(self, dtype=dtype, channels_last=channels_last, compile=compile)

    @torch.no_grad()
    def predict(
        self,
        x: Any,
        mask: Tensor | None = None,
        k: int = 100,
        score_threshold: float = 0.0,
        image_sizes: Tensor | None = None,
        preprocessor: ImagePreprocessor | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Top-k detections per image, each ``{"box": [x0, y0, x1, y1] pixels, "score", "class_id"}``
        (plus ``"class_name"`` when the model knows its class names).

        ``x`` is either a preprocessed (B, 3, H, W) float batch (with its ``mask``) or raw
        images (a PIL image, numpy array or (3, H, W) tensor, or a list of them), which are
        resized, normalized and padded by ``preprocessor`` (DETR's 800/1333 by default).
        Boxes are in the pixels of the original images when their size is known (raw images,
        or ``image_sizes`` (B, 2) as (height, width)), else of the unpadded region of ``x``.
        """
        if isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point():
            mask = check_images(x, mask)
            sizes = valid_sizes(mask) if image_sizes is None else torch.as_tensor(image_sizes)
        else:
            if mask is not None:
                raise ValueError("mask is only used with a preprocessed (B, 3, H, W) batch; raw images get their own")
            batch = (preprocessor or ImagePreprocessor())(x)
            device = next(self.parameters()).device
            x, mask = batch.pixel_values.to(device), batch.mask.to(device)
            sizes = batch.image_sizes if image_sizes is None else torch.as_tensor(image_sizes)
        was_training = self.training
        self.eval()
        try:
            logits, boxes = self._decode(x, mask, all_layers=False)
        finally:
            self.train(was_training)
        results = postprocess(logits[-1], boxes[-1], sizes, score_threshold=score_threshold, top_k=k)
        detections = []
        for res in results:
            image = []
            for box, score, label in zip(res["boxes"].tolist(), res["scores"].tolist(), res["labels"].tolist()):
                det = {"box": box, "score": score, "class_id": label}
                if self.class_names is not None:
                    det["class_name"] = self.class_names[label]
                image.append(det)
            detections.append(image)
        return detections
