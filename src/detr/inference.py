"""A faster, inference-only DETR: ``model.optimize_for_inference()``.

What it changes, none of which changes the outputs beyond float rounding:

- batch norm (frozen, or trainable in eval mode) is folded into the convolution before it,
  which removes a pass over every feature map of the backbone;
- the backbone runs in channels-last memory format, the layout oneDNN's convolutions are fastest in;
- when no pixel is padded, no mask is built, interpolated or applied: attention runs unmasked
  (the fused scaled-dot-product kernels' fast path) and one position encoding serves the batch;
- only the last decoder layer gets the heads;
- optionally bf16 autocast (CPUs with AVX512-BF16/AMX, recent GPUs) and ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

from .checks import check_images

if TYPE_CHECKING:
    from .model import DETR

_BATCH_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)


def _fold(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold ``bn`` (eval-mode statistics) into ``conv`` in place; ``bn`` must then be bypassed."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    conv.weight = nn.Parameter(weight.detach(), requires_grad=False)
    conv.bias = nn.Parameter(bias.detach(), requires_grad=False)


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every batch norm of a torchvision ResNet into its convolution, in place; returns how many.

    Pairs are found by torchvision's naming, where each ``bnN`` directly follows ``convN`` and a
    ``downsample`` is ``Sequential(conv, bn)``; the batch norms become ``nn.Identity``. Batch
    norms must be frozen or in eval mode (running statistics), as at inference.
    """
    folded = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, _BATCH_NORMS):
                continue
            if isinstance(child, nn.BatchNorm2d) and child.training:
                raise ValueError("batch norm in training mode cannot be folded; call model.eval() first")
            conv_name = "conv" + name[2:] if name.startswith("bn") else str(int(name) - 1) if name.isdigit() else None
            conv = getattr(parent, conv_name, None) if conv_name else None
            if not isinstance(conv, nn.Conv2d):
                continue
            _fold(conv, child)
            setattr(parent, name, nn.Identity())
            folded += 1
    return folded


class InferenceDETR(nn.Module):
    """Inference-only copy of a :class:`~detr.model.DETR` (see the module docstring).

    ``forward(x (B, 3, H, W), mask (B, H, W) bool or None)`` returns ``(pred_logits (B, Q,
    K+1), pred_boxes (B, Q, 4) normalized cxcywh)`` in float32, like the model in eval mode
    without ``aux_loss``.

    Args:
        model: the model to copy (it is not changed).
        dtype: ``torch.float32``, or ``torch.bfloat16`` to run under bf16 autocast.
        channels_last: run the backbone in channels-last memory format.
        compile: wrap the computation in ``torch.compile`` (the first call per shape is slow).
    """

    def __init__(
        self, model: DETR, dtype: torch.dtype = torch.float32, channels_last: bool = True, compile: bool = False
    ) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        model = copy.deepcopy(model).eval()
        model.denoising = None  # training only
        model.criterion = None
        for param in model.parameters():
            param.requires_grad_(False)
        fold_batch_norms(model.backbone)
        if channels_last:
            model.backbone.to(memory_format=torch.channels_last)
        self.model = model
        self.num_queries = model.num_queries
        self.dtype = dtype
        self.channels_last = channels_last
        self._run = torch.compile(self._outputs, dynamic=True) if compile else self._outputs

    def _outputs(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if self.dtype == torch.bfloat16
            else contextlib.nullcontext()
        )
        with autocast:
            logits, boxes = self.model._decode(x, mask, all_layers=False)  # (1, B, Q, K+1), (1, B, Q, 4)
        return logits[0].float(), boxes[0].float()

    @torch.inference_mode()
    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (B, 3, H, W) float normalized images; mask: (B, H, W) bool, True on padding, or None."""
        if mask is not None:
            check_images(x, mask)
            if not mask.any():  # nothing padded: skip all masking work
                mask = None
        else:
            check_images(x, None)
        return self._run(x, mask)
