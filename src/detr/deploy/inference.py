"""A faster, inference-only DETR: ``model.optimize_for_inference()``.

What it changes, none of which changes the outputs beyond float rounding:

- batch norm (frozen, or trainable in eval mode) is folded into the convolution before it,
  which removes a pass over every feature map of the backbone;
- the backbone runs in channels-last memory format, the layout oneDNN's convolutions are fastest in;
- when no pixel is padded, no mask is built, interpolated or applied: attention runs unmasked
  (the fused scaled-dot-product kernels' fast path) and one position encoding serves the batch;
- only the last decoder layer gets the heads;
- optionally bf16 autocast (CPUs with AVX512-BF16/AMX, recent GPUs) for the backbone and the
  encoder, where nearly all the FLOPs are, and ``torch.compile``. The decoder and the heads stay in
  float32: they cost little (a hundred queries) and their rounding would land directly on the
  outputs (on random R50 weights it halves the bf16 logit error, bench/README.md).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..models.backbone import ConvFrozenBN2d, conv_norm_pairs
from ..processing.checks import check_images, padding_or_none
from ..processing.postprocess import predictions
from ..processing.preprocess import ImagePreprocessor, prediction_inputs
from ..processing.tiling import tiled_or_capped

if TYPE_CHECKING:
    from ..models.detr import DETR


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every batch norm of a torchvision ResNet into its convolution, in place; returns how many.

    Pairs are found by torchvision's naming (:func:`detr.models.backbone.conv_norm_pairs`); the batch
    norms become ``nn.Identity`` and the convolutions plain ones with a bias. Trainable batch norms
    must be in eval mode (running statistics), as at inference.
    """
    pairs = conv_norm_pairs(module)
    for parent, conv_name, norm_name in pairs:
        conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
        if isinstance(norm, nn.BatchNorm2d) and norm.training:
            raise ValueError("batch norm in training mode cannot be folded; call model.eval() first")
        if isinstance(conv, ConvFrozenBN2d):  # already computed inside the conv: make it permanent
            folded = conv.folded()
        else:
            folded = copy.deepcopy(conv)
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
            )
            folded.weight = nn.Parameter(weight.detach(), requires_grad=False)
            folded.bias = nn.Parameter(bias.detach(), requires_grad=False)
        setattr(parent, conv_name, folded.requires_grad_(False))
        setattr(parent, norm_name, nn.Identity())
    return len(pairs)


def inference_copy(model: DETR) -> DETR:
    """A frozen eval-mode copy of ``model`` without its training-only parts, batch norms folded.

    Options are kept when used at inference (``used_at_inference``), with those they require
    (two-stage anchors keep the dense head, which proposes them)."""
    model = copy.deepcopy(model).eval()
    keep = {option.name for option in model.options if option.used_at_inference}
    keep |= {name for option in model.options if option.name in keep for name in option.requires}
    for option in model.options:
        if option.name not in keep:
            option.remove_from(model)
    model.criterion = None
    for param in model.parameters():
        param.requires_grad_(False)
    fold_batch_norms(model.backbone)
    return model


class Float32(nn.Module):
    """Runs ``module`` in float32 with autocast off; floating tensor arguments are cast to float32.

    Wraps the cheap modules next to the outputs (decoder layers, heads) in a bf16 inference copy.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: object, **kwargs: object) -> object:
        device = next(a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor))
        with torch.autocast(device, enabled=False):
            args = tuple(_float32(a) for a in args)
            kwargs = {k: _float32(v) for k, v in kwargs.items()}
            return self.module(*args, **kwargs)


def _float32(value: object) -> object:
    return value.float() if isinstance(value, Tensor) and value.is_floating_point() else value


def keep_outputs_float32(model: DETR) -> None:
    """Make the decoder layers and norm, the heads (and box refinement's query positions, the
    two-stage dense head) of ``model`` run in float32 even under autocast, in place."""
    decoder = model.transformer.decoder
    for i, layer in enumerate(decoder.layers):
        decoder.layers[i] = Float32(layer)
    decoder.norm = Float32(decoder.norm)
    model.class_head = Float32(model.class_head)
    model.box_head = Float32(model.box_head)
    refinement = getattr(model, "refinement", None)
    if refinement is not None:
        refinement.pos_embed = Float32(refinement.pos_embed)
    dense_head = getattr(model, "dense_head", None)
    if dense_head is not None:  # two-stage: it chooses the anchors, a discrete choice rounding can flip
        dense_head.class_head = Float32(dense_head.class_head)
        dense_head.box_head = Float32(dense_head.box_head)


class InferenceDETR(nn.Module):
    """Inference-only copy of a :class:`~detr.models.detr.DETR` (see the module docstring).

    ``forward(x (B, 3, H, W), mask (B, H, W) bool or None)`` returns ``(pred_logits (B, Q,
    K+1), pred_boxes (B, Q, 4) normalized cxcywh)`` in float32, like the model in eval mode
    without ``aux_loss``.

    Args:
        model: the model to copy (it is not changed).
        dtype: ``torch.float32``, or ``torch.bfloat16`` to run the backbone and the encoder under
            bf16 autocast (the decoder and heads stay float32).
        channels_last: run the backbone in channels-last memory format.
        compile: wrap the computation in ``torch.compile`` (the first call per shape is slow).
    """

    def __init__(
        self, model: DETR, dtype: torch.dtype = torch.float32, channels_last: bool = True, compile: bool = False
    ) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        model = inference_copy(model)
        if channels_last:
            model.backbone.to(memory_format=torch.channels_last)
        if dtype == torch.bfloat16:
            keep_outputs_float32(model)
        self.model = model
        self.num_queries = model.num_queries
        self.num_classes = model.num_classes
        self.class_names = model.class_names
        self.preprocessing = model.preprocessing
        self.dtype = dtype
        self.channels_last = channels_last
        # freezing: weights become constants, so inductor can pre-pack them for oneDNN and fuse more
        self._run = torch.compile(self._outputs, dynamic=True, options={"freezing": True}) if compile else self._outputs

    def _outputs(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if self.dtype == torch.bfloat16
            else contextlib.nullcontext()
        )
        with autocast:
            logits, boxes, _ = self.model._decode(x, mask, all_layers=False)  # (1, B, Q, K+1), (1, B, Q, 4)
        return logits[0].float(), boxes[0].float()

    @torch.inference_mode()
    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (B, 3, H, W) float normalized images; mask: (B, H, W) bool, True on padding, or None."""
        mask = check_images(x, mask)
        return self._run(x, padding_or_none(mask))  # nothing padded: no masking work at all

    def predict(
        self,
        images: Any,
        k: int = 100,
        score_threshold: float = 0.0,
        preprocessor: ImagePreprocessor | None = None,
        nms: float | None = None,
        classes: Sequence[int | str] | None = None,
        tile: int | None = None,
        tile_overlap: float = 0.2,
        tile_full_image: bool = False,
        max_detections: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Detections per image, as :meth:`detr.models.detr.DETR.predict` gives them, for raw images (one
        or a list: PIL, numpy, (3, H, W) tensors; read by ``preprocessor``, the model's by default) or
        a preprocessed :class:`~detr.processing.preprocess.Batch`; ``tile`` and the rest: tiled, as there."""
        tiled, k = tiled_or_capped(
            self, images, tile, tile_overlap, tile_full_image, k, score_threshold, preprocessor, nms, classes,
            max_detections,
        )  # fmt: skip
        if tiled is not None:
            return tiled
        x, mask, sizes = prediction_inputs(images, None, None, preprocessor or self.preprocessing)
        device = next(self.model.parameters()).device
        logits, boxes = self(x.to(device), mask.to(device))
        return predictions(logits, boxes, sizes, self.class_names, k, score_threshold, nms, classes)
