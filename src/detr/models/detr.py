"""DETR (Carion et al., 2020): backbone -> 1x1 projection -> transformer -> class and box heads.

This module is the paper's model and the API document's contract, and nothing else:

1. the backbone maps the (B, 3, H, W) images to (B, C, h, w) features, and the padding mask is
   shrunk to (B, h, w);
2. a 1x1 convolution projects the features to the transformer's width d, and a fixed sine
   encoding gives every feature cell its position (B, d, h, w);
3. the transformer encodes the features and decodes Q learned object queries into Q embeddings,
   after every decoder layer: hs (L, B, Q, d);
4. a linear layer gives each query's class logits (num_classes + 1, the last "no object") and a
   3-layer MLP its box, normalized (cx, cy, w, h) through a sigmoid;
5. the loss matches predictions to targets one-to-one (Hungarian) and sums cross-entropy, L1 and
   GIoU over the matched pairs, for every decoder layer with ``aux_loss``.

Boxes are normalized (cx, cy, w, h) relative to each image's valid (unpadded) region, as in the
reference code: a padded batch predicts the same boxes for an image as that image alone.

Training options that go beyond the paper (:mod:`detr.options`: query groups, denoising queries,
anchor-box refinement, a dense auxiliary head, two-stage anchors, deformable cross-attention) act
on step 3 of the one decoder pass (:meth:`DETR.decoder_pass`) at the hooks of
:class:`detr.options.base.DETROption`; without them (the default) no hook runs: the pass is the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.criterion import SetCriterion
from ..losses.matcher import HungarianMatcher
from ..options.base import DETROption, OptionState, QuerySpan, assemble_queries, runs_in_steps
from ..processing.checks import Target, check_images, check_targets, is_positive_int, padding_or_none
from ..processing.postprocess import predictions
from ..processing.preprocess import ImagePreprocessor, prediction_inputs
from ..processing.tiling import tiled_or_capped
from .layers import MLP
from .position_encoding import PositionEmbeddingSine

if TYPE_CHECKING:
    from ..deploy.inference import InferenceDETR

Output = tuple[Tensor, Tensor]


@dataclass
class DecoderPass:
    """What one pass of the detector computes, for the heads that read more than boxes (the mask head):
    logits (L, B, Q', K+1) and boxes (L, B, Q', 4) of the model's queries, the last decoder layer's
    embeddings of those queries ``hidden`` (B, Q', d), the encoder output ``memory`` (B, d, h, w), the
    projected backbone features ``src`` (B, d, h, w) and their mask ``feat_mask`` (B, h, w) or None, and
    the pass's ``state`` (what the options' hooks read and made; None with a transformer of one's own)."""

    logits: Tensor
    boxes: Tensor
    hidden: Tensor
    memory: Tensor
    src: Tensor
    feat_mask: Tensor | None
    state: OptionState | None


@dataclass
class DETRConfig:
    """What a :class:`DETR` is built from (the fields and defaults of the API document).

    backbone: module with a positive int ``num_channels``; maps (B, 3, H, W) to (B, num_channels, h, w).
    transformer: module with a positive int ``d_model``; called as
        ``transformer(src (B, d, h, w), mask (B, h, w) bool or None, query_embed (Q, d), pos_embed (B, d, h, w))``
        and returning ``(hs (L, B, Q, d), memory)`` (the reference code's signature). One with ``encode`` and
        ``decoder`` (:class:`~detr.models.transformer.Transformer`) runs as those two steps instead, the same
        computation, between which training options act.
    num_classes: number of foreground classes (COCO: 91, the category-id range); the model adds "no object".
    num_queries: object queries, the most detections per image.
    aux_loss: forward returns, and the loss uses, every decoder layer's predictions.
    matcher: replaces the default :class:`HungarianMatcher` (reference costs class 1, L1 5, GIoU 2).
    class_loss_coef, bbox_loss_coef, giou_loss_coef: weights of the loss terms.
    eos_coef: class weight of "no object" in the cross-entropy.
    iou_class_targets: a matched query's class target is its box's IoU with the target (the rest on
        "no object"), not 1: scores that rank detections by how well they fit (see :class:`SetCriterion`).
        Not in the paper; off by default.
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
    iou_class_targets: bool = False

    def __post_init__(self) -> None:
        for name, part, attr in (
            ("backbone", self.backbone, "num_channels"),
            ("transformer", self.transformer, "d_model"),
        ):
            if not isinstance(part, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(part).__name__}")
            if not is_positive_int(getattr(part, attr, None)):
                raise ValueError(
                    f"{name} must expose a positive int attribute {attr} "
                    f"({'its output channels' if attr == 'num_channels' else 'its hidden size'}), "
                    f"got {getattr(part, attr, None)!r}"
                )
        if not is_positive_int(self.num_classes):
            raise ValueError(f"num_classes must be an int >= 1 (foreground classes), got {self.num_classes!r}")
        if not is_positive_int(self.num_queries):
            raise ValueError(f"num_queries must be an int >= 1, got {self.num_queries!r}")
        if not isinstance(self.aux_loss, bool):
            raise TypeError(f"aux_loss must be a bool, got {self.aux_loss!r}")
        if not isinstance(self.iou_class_targets, bool):
            raise TypeError(f"iou_class_targets must be a bool, got {self.iou_class_targets!r}")
        if self.matcher is not None and not callable(self.matcher):
            raise TypeError("matcher must be callable as matcher((pred_logits, pred_boxes), targets), or None")
        for name in ("class_loss_coef", "bbox_loss_coef", "giou_loss_coef", "eos_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")


class DETR(nn.Module):
    """DEtection TRansformer (Carion et al., 2020).

    Args:
        config: the parts and loss settings, see :class:`DETRConfig`.
        position_encoding: maps the (B, h, w) feature padding mask to a (B, d_model, h, w)
            encoding; defaults to the sine encoding with d_model // 2 features per axis.
        class_names: optional names of the ``num_classes`` classes, used by :meth:`predict`.
        category_ids: optional dataset category id of each class (the published COCO models: the
            class index itself), so that evaluation maps predictions to a dataset's categories by id.
        preprocessing: how the model reads raw images (resize, normalisation), the default of
            :meth:`predict`, ``detr predict`` and ``detr eval``; DETR's 800/1333 when None.
        options: training options (:mod:`detr.options`), e.g. ``[DenoisingQueries(groups=4)]``;
            each becomes a submodule under its ``name``. none by default: the paper's model.
    """

    task = "boxes"  # what it predicts: boxes (a mask model, masks)

    def __init__(
        self,
        config: DETRConfig,
        *,
        position_encoding: nn.Module | None = None,
        class_names: Sequence[str] | None = None,
        category_ids: Sequence[int] | None = None,
        preprocessing: ImagePreprocessor | None = None,
        options: Sequence[DETROption] = (),
    ) -> None:
        super().__init__()
        if not isinstance(config, DETRConfig):
            raise TypeError(f"DETR takes a DETRConfig, got {type(config).__name__}")
        if class_names is not None and len(class_names) != config.num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {config.num_classes}")
        if category_ids is not None and len(category_ids) != config.num_classes:
            raise ValueError(f"category_ids has {len(category_ids)} ids but num_classes is {config.num_classes}")
        self.config = config
        self.num_classes = config.num_classes
        self.num_queries = config.num_queries
        self.aux_loss = config.aux_loss
        self.class_names = list(class_names) if class_names is not None else None
        self.category_ids = [int(c) for c in category_ids] if category_ids is not None else None
        self.preprocessing = preprocessing or ImagePreprocessor()
        d_model = config.transformer.d_model

        self.backbone = config.backbone
        self.position_encoding = position_encoding or PositionEmbeddingSine(d_model // 2, normalize=True)
        self.input_proj = nn.Conv2d(config.backbone.num_channels, d_model, kernel_size=1)
        self.transformer = config.transformer
        self.query_embed = nn.Embedding(config.num_queries, d_model)
        self.class_head = nn.Linear(d_model, config.num_classes + 1)
        self.box_head = MLP(d_model, d_model, 4, num_layers=3)
        matcher = config.matcher if config.matcher is not None else HungarianMatcher(1.0, 5.0, 2.0)
        self.criterion = SetCriterion(
            config.num_classes,
            matcher,
            class_loss_coef=config.class_loss_coef,
            bbox_loss_coef=config.bbox_loss_coef,
            giou_loss_coef=config.giou_loss_coef,
            eos_coef=config.eos_coef,
            iou_class_targets=config.iou_class_targets,
        )
        for option in options:
            if not isinstance(option, DETROption):
                raise TypeError(f"options must be detr.options parts (DETROption), got {type(option).__name__}")
        for option in sorted(options, key=lambda o: o.order):
            option.attach_to(self)

    @property
    def options(self) -> tuple[DETROption, ...]:
        """The training options this model was built with, in the order their hooks run."""
        return tuple(m for m in self.children() if isinstance(m, DETROption))

    # ---------------------------------------------------------------- forward
    def _features(
        self, x: Tensor, mask: Tensor | None, features: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Backbone, projection and position encoding: x (B, 3, H, W), mask (B, H, W) or None
        -> src (B, d, h, w), feature mask (B, h, w) or None, position encoding (B, d, h, w).
        ``features``: the backbone's output (B, C, h, w) when the caller already has it."""
        features = self.backbone(x) if features is None else features  # (B, C, h, w)
        batch, _, h, w = features.shape
        if mask is None:  # nothing padded: one position encoding serves the batch
            feat_mask = None
            pos = self.position_encoding(torch.zeros((1, h, w), dtype=torch.bool, device=x.device))  # (1, d, h, w)
            pos = pos.to(features.dtype).expand(batch, -1, -1, -1)  # (B, d, h, w)
        else:
            feat_mask = F.interpolate(mask[None].float(), size=(h, w)).to(torch.bool)[0]  # (B, h, w)
            pos = self.position_encoding(feat_mask).to(features.dtype)  # (B, d, h, w)
        return self.input_proj(features), feat_mask, pos

    def heads(self, hs: Tensor) -> Output:
        """Decoder embeddings (..., d) -> class logits (..., num_classes + 1) and normalized cxcywh boxes (..., 4)."""
        return self.class_head(hs), self.box_head(hs).sigmoid()

    def _decode(
        self, x: Tensor, mask: Tensor | None, all_layers: bool | None, targets: Sequence[Target] | None = None
    ) -> tuple[Tensor, Tensor, OptionState | None]:
        """Like :meth:`decode`, without input checks; ``mask`` None means no padding (and no attention
        masking at all). ``targets`` reach the training options that use them (denoising queries).

        Returns the logits and boxes of :meth:`decode` and the pass's state (with options, the outputs of
        their own queries, proposals; None with a transformer of one's own).
        """
        found = self.decoder_pass(x, mask, not (self.aux_loss if all_layers is None else all_layers), targets)
        return found.logits, found.boxes, found.state

    def decoder_pass(
        self,
        x: Tensor,
        mask: Tensor | None,
        last_only: bool = False,
        targets: Sequence[Target] | None = None,
        features: Tensor | None = None,
    ) -> DecoderPass:
        """The detector's one pass, steps 1-4 of the module docstring, without input checks: x (B, 3, H, W),
        mask (B, H, W) or None (nothing padded), the heads on the last decoder layer only or on all; ``targets``
        reach the options that read them (denoising queries); ``features``: the backbone's output when the
        caller already has it (the mask head, which reads the backbone's earlier stages too).

        The training options act on step 3 at the hooks of :class:`~detr.options.base.DETROption` (the
        encoder output read, the queries changed or added to, the decoder layers run); without options no
        hook runs and the pass is the paper's.
        """
        src, feat_mask, pos = self._features(x, mask, features)  # (B, d, h, w), (B, h, w) or None, (B, d, h, w)
        if not runs_in_steps(self.transformer):  # a transformer of one's own, with the reference's call only
            hs, memory = self.transformer(src, feat_mask, self.query_embed.weight, pos)  # (L, B, Q, d), (B, d, h, w)
            logits, boxes = self.heads(hs[-1:] if last_only else hs)  # (1 or L, B, Q, ...)
            return DecoderPass(logits, boxes, hs[-1], memory, src, feat_mask, None)
        batch, d_model, h, w = src.shape
        # (B, HW, d), (B, HW) or None, (B, HW, d)
        memory, memory_mask, memory_pos = self.transformer.encode(src, feat_mask, pos)
        state = OptionState(memory, memory_mask, memory_pos, (h, w), feat_mask, targets)
        # the paper's queries: Q learned positions with empty content, one block; the options change them, add theirs
        positions = self.query_embed.weight[: self.num_queries]  # (Q, d)
        blocks = torch.zeros(len(positions), dtype=torch.int64, device=positions.device)
        state.spans["matching"] = QuerySpan(content=None, position=positions, anchors=None, blocks=blocks)
        options = self.options
        for option in options:
            option.read_encoder(self, state)
        for option in options:
            option.add_queries(self, state)
        queries = assemble_queries(list(state.spans.values()), batch, d_model, positions)  # every span's, in order
        runner = next((option for option in options if option.runs_decoder), None)
        if runner is None:  # the paper's decoder, (L, B, N, d); the box head reads each layer's embeddings
            hs = self.transformer.decoder(
                queries.content, memory, memory_mask, memory_pos, queries.position, queries.attn_mask
            )
            layer_boxes = None
        else:  # an option runs the decoder layers itself, each layer's boxes made on the way: (L, B, N, 4)
            hs, layer_boxes = runner.run_decoder(self, state, queries)
        if last_only:
            hs, layer_boxes = hs[-1:], None if layer_boxes is None else layer_boxes[-1:]
        logits, boxes = self.heads(hs) if layer_boxes is None else (self.class_head(hs), layer_boxes.to(hs.dtype))
        state.logits, state.boxes, state.hidden = logits, boxes, hs
        own = state.span_slice("matching")  # the model's own queries (and their groups, in training)
        memory_map = memory.transpose(1, 2).reshape(src.shape)  # (B, HW, d) -> (B, d, h, w)
        return DecoderPass(logits[:, :, own], boxes[:, :, own], hs[-1][:, own], memory_map, src, feat_mask, state)

    def decode(self, x: Tensor, mask: Tensor | None = None, all_layers: bool | None = None) -> Output:
        """Predictions of the decoder layers.

        Args:
            x: (B, 3, H, W) float normalized images.
            mask: (B, H, W) bool, True on padding; all False when omitted.
            all_layers: heads on every decoder layer (default: ``aux_loss``) or on the last only.

        Returns:
            pred_logits (L, B, Q', K+1) and pred_boxes (L, B, Q', 4) normalized cxcywh, final layer
            last; L = 1 when only the last layer is wanted. Q' = num_queries, except in training with
            query groups (:mod:`detr.options.query_groups`), where it counts every group's queries.
        """
        logits, boxes, _ = self._decode(x, padding_or_none(check_images(x, mask)), all_layers)
        return logits, boxes

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Output | list[Output]:
        """x: (B, 3, H, W) float, mask: (B, H, W) bool (True on padding).

        Returns ``(pred_logits (B, Q, num_classes+1), pred_boxes (B, Q, 4) normalized cxcywh)``;
        with ``aux_loss`` the list of such tuples, one per decoder layer, final last.
        """
        logits, boxes = self.decode(x, mask)  # (L, B, Q', K+1), (L, B, Q', 4)
        # the model's own queries: options may decode more of them in training
        logits, boxes = logits[:, :, : self.num_queries], boxes[:, :, : self.num_queries]
        if self.aux_loss:
            return list(zip(logits.unbind(0), boxes.unbind(0)))
        return logits[-1], boxes[-1]

    # ------------------------------------------------------------------- loss
    def get_loss_dict(self, x: Tensor, targets: Sequence[Target], mask: Tensor | None = None) -> dict[str, Tensor]:
        """All loss terms (see :class:`SetCriterion`, and each option's own) plus their weighted total under ``"loss"``.

        targets: one dict per image, ``class_id`` int64 (N_i,) in [0, num_classes-1] and ``box``
        float (N_i, 4) normalized cxcywh relative to the image's valid region; N_i may be 0.
        """
        mask = padding_or_none(check_images(x, mask))
        check_targets(targets, x.shape[0], self.num_classes, x.device)
        logits, boxes, state = self._decode(x, mask, all_layers=None, targets=targets)  # (L, B, Q', K+1), (L, B, Q', 4)
        return self.loss_terms(logits, boxes, state, targets)

    def loss_terms(
        self, logits: Tensor, boxes: Tensor, state: OptionState | None, targets: Sequence[Target]
    ) -> dict[str, Tensor]:
        """The set criterion on the model's queries of every layer given (L, B, Q', ...) plus each option's
        terms (from the pass's ``state``), and their weighted total ``"loss"``."""
        queries = slice(0, self.num_queries)
        terms = self.criterion(list(zip(logits[:, :, queries].unbind(0), boxes[:, :, queries].unbind(0))), targets)
        total = terms["loss"]
        for option in self.options:  # each option's terms, under its own names
            extra = option.loss_terms(self, state, targets)
            if extra:
                total = total + extra.pop("loss")
                terms.update(extra)
        terms["loss"] = total
        return terms

    def get_loss(self, x: Tensor, targets: Sequence[Target], mask: Tensor | None = None) -> Tensor:
        """Scalar training loss (weighted CE + L1 + GIoU, over every decoder layer with ``aux_loss``)."""
        return self.get_loss_dict(x, targets, mask)["loss"]

    # -------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(
        self,
        x: Any,
        mask: Tensor | None = None,
        k: int = 100,
        score_threshold: float = 0.0,
        image_sizes: Tensor | None = None,
        preprocessor: ImagePreprocessor | None = None,
        nms: float | None = None,
        classes: Sequence[int | str] | None = None,
        tile: int | None = None,
        tile_overlap: float = 0.2,
        tile_full_image: bool = False,
        max_detections: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Top-k detections per image, each ``{"box": [x0, y0, x1, y1] pixels, "score", "class_id"}``
        (plus ``"class_name"`` when the model knows its class names).

        ``x`` is a preprocessed (B, 3, H, W) float batch (with its ``mask``), a
        :class:`~detr.processing.preprocess.Batch`, or raw images (a PIL image, numpy array or (3, H, W)
        tensor, or a list of them), which are resized, normalized and padded by ``preprocessor`` (the
        model's ``preprocessing`` by default).
        Boxes are in the pixels of the original images when their size is known (raw images,
        or ``image_sizes`` (B, 2) as (height, width)), else of the unpadded region of ``x``.
        ``nms``: an IoU above which a lower-scored box of the same class is dropped (off by default).
        ``classes``: keep only detections of these classes (ids or names).
        ``tile``: cut raw images into overlapping ``tile`` x ``tile`` windows of their own pixels (``tile_overlap``
        of a window shared with its neighbours; ``tile_full_image``: the whole image as one more window),
        ``k`` detections per window, merged across window borders, at most ``max_detections`` per image
        (:mod:`detr.processing.tiling`): for large images with small objects.
        """
        tiled, k = tiled_or_capped(
            self, x, tile, tile_overlap, tile_full_image, k, score_threshold, preprocessor, nms, classes, max_detections
        )
        if tiled is not None:
            return tiled
        x, mask, sizes = prediction_inputs(x, mask, image_sizes, preprocessor or self.preprocessing)
        device = next(self.parameters()).device
        x, mask = x.to(device), mask.to(device)
        was_training = self.training
        self.eval()
        try:
            logits, boxes, _ = self._decode(x, mask, all_layers=False)
        finally:
            self.train(was_training)
        return predictions(logits[-1], boxes[-1], sizes, self.class_names, k, score_threshold, nms, classes)

    # ------------------------------------------- weights and deployment (detr.hub, detr.deploy)
    def save_pretrained(self, directory: str | Path) -> Path:
        """Save weights (safetensors) and the description that rebuilds this model into ``directory``."""
        from ..hub import serialization

        return serialization.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, config: DETRConfig | None = None, **overrides: Any) -> DETR:
        """Rebuild a model from a directory written by :meth:`save_pretrained` or by transformers.

        A model built from parts of your own (not the library's) needs them again: pass
        ``config=DETRConfig(backbone=..., transformer=..., ...)``; its weights are then loaded strictly.
        A training run's folder (its ``final/``, else its ``checkpoint.pth``) and a training checkpoint load
        too, as :func:`detr.load` loads them.
        """
        from ..hub import serialization  # the model's documented way to load: the layers above it, lazily

        if not (Path(directory) / serialization.WEIGHTS_NAME).is_file():
            from ..loader import load_model, read_training_checkpoint, run_weights

            found = run_weights(directory)
            if found != Path(directory) or read_training_checkpoint(found) is not None:
                if config is not None:
                    raise ValueError(f"{directory} is a training run: it rebuilds itself from its config, drop config=")
                return load_model(found, **overrides)
        return serialization.from_pretrained(
            directory, config=config, model_type=cls, config_type=DETRConfig, **overrides
        )

    def export_hf(self, directory: str | Path) -> Path:
        """Write this model in the layout transformers' ``DetrForObjectDetection.from_pretrained`` loads."""
        from ..hub import serialization

        return serialization.export_hf(self, directory)

    def optimize_for_inference(
        self, dtype: torch.dtype = torch.float32, channels_last: bool = True, compile: bool = False
    ) -> InferenceDETR:
        """A faster inference-only copy whose ``forward(x, mask=None)`` returns ``(pred_logits,
        pred_boxes)`` of the last layer: batch norm folded, channels-last, no masking work without
        padding, optional bf16 autocast and ``torch.compile`` (see :mod:`detr.deploy.inference`)."""
        from ..deploy.inference import InferenceDETR

        return InferenceDETR(self, dtype=dtype, channels_last=channels_last, compile=compile)
