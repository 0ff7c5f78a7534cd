"""ONNX export with dynamic batch size, height and width, the padding mask as an input.

The exported graph takes ``pixel_values`` (B, 3, H, W) float32 normalized images and
``pixel_mask`` (B, H, W) bool, True on padding (all False for unpadded images), and returns
``logits`` (B, Q, K+1) and ``boxes`` (B, Q, 4) normalized cxcywh of the last decoder layer.
Batch norms are folded into the convolutions first (:func:`detr.deploy.inference.inference_copy`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..fileio import atomic_write
from .inference import inference_copy

if TYPE_CHECKING:
    from ..models.detr import DETR

INPUT_NAMES = ["pixel_values", "pixel_mask"]
# the oldest torch whose exporter was seen to keep every size dynamic here (2.8, 2.11 and 2.12 fix the batch)
EXPORT_TORCH = (2, 14)
OUTPUT_NAMES = ["logits", "boxes"]


class _ExportWrapper(nn.Module):
    """(pixel_values, pixel_mask) -> (logits, boxes) of the last layer; the mask is always applied."""

    def __init__(self, model: DETR) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        logits, boxes, _ = self.model._decode(
            pixel_values, pixel_mask, all_layers=False
        )  # (1, B, Q, K+1), (1, B, Q, 4)
        return logits[0], boxes[0]


def export_onnx(
    model: DETR,
    path: str | Path,
    height: int = 800,
    width: int = 800,
    batch_size: int = 1,
    opset_version: int = 18,
    max_side: int = 4096,
) -> Path:
    """Export ``model`` to ONNX at ``path`` (written atomically); returns the path.

    ``height``, ``width`` and ``batch_size`` only shape the example traced; the graph accepts any
    batch and any H, W from 32 to ``max_side``. Needs the ``onnx`` and ``onnxscript`` packages
    (``pip install "detr[export]"``); check the result with :func:`check_onnx`.
    """
    for name, value in (("height", height), ("width", width)):
        if not 32 <= value <= max_side:
            raise ValueError(f"{name} must be in [32, {max_side}], got {value}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < EXPORT_TORCH:
        raise RuntimeError(
            f"ONNX export with dynamic batch and image sizes needs torch >= {'.'.join(map(str, EXPORT_TORCH))} "
            f"(this is {torch.__version__}): with torch 2.8 to 2.12 the exported graph keeps the batch size it was "
            "traced with. Upgrade torch in the environment that exports; the model itself runs on torch >= 2.5"
        )
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as err:
        raise ImportError('ONNX export needs onnx and onnxscript: pip install "detr[export]"') from err
    model = inference_copy(model)
    if getattr(model.backbone, "channels_last", False):  # a memory layout means nothing to ONNX, and its
        model.backbone.channels_last = False  # stride checks would pin the dynamic sizes
        model.backbone.to(memory_format=torch.contiguous_format)
    wrapper = _ExportWrapper(model).eval()
    pixel_values = torch.randn(batch_size, 3, height, width)
    pixel_mask = torch.zeros(batch_size, height, width, dtype=torch.bool)
    batch = torch.export.Dim("batch", min=1, max=1024)
    h = torch.export.Dim("height", min=32, max=max_side)
    w = torch.export.Dim("width", min=32, max=max_side)
    dynamic_shapes = {"pixel_values": {0: batch, 2: h, 3: w}, "pixel_mask": {0: batch, 1: h, 2: w}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        program = torch.onnx.export(
            wrapper,
            (pixel_values, pixel_mask),
            dynamo=True,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset_version,
            verbose=False,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: program.save(str(tmp)))
    return path


def check_onnx(
    path: str | Path, model: DETR, pixel_values: Tensor, pixel_mask: Tensor | None = None
) -> tuple[float, float]:
    """Run the exported model in onnxruntime and ``model`` in PyTorch on the same inputs.

    Returns the largest absolute differences of the logits and of the boxes.
    """
    import onnxruntime

    if pixel_mask is None:
        pixel_mask = torch.zeros(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.bool)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, boxes = session.run(OUTPUT_NAMES, {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy()})
    with torch.no_grad():
        ref_logits, ref_boxes = model.eval().decode(pixel_values, pixel_mask, all_layers=False)
    return (
        float((torch.from_numpy(logits) - ref_logits[-1]).abs().max()),
        float((torch.from_numpy(boxes) - ref_boxes[-1]).abs().max()),
    )
