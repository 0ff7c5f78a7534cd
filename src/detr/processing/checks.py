"""Input checks with error messages that say what is wrong and how to fix it, and the target format they check."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

# A training target of one image: ``class_id`` (N,) int64 class indices and ``box`` (N, 4) float
# normalized (cx, cy, w, h) relative to the image's valid region (see :func:`check_targets`).
Target = dict[str, Tensor]

# How far (in normalized units) a box may stick out of the image before it is taken
# for a box in the wrong format (xyxy or pixels instead of normalized cxcywh).
BOX_TOLERANCE = 0.01


def pad_targets(targets: Sequence[Target], device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """A batch's targets as tensors padded to the most objects an image has (N; 0 when no image has any).

    Returns:
        class_id (B, N) int64, 0 on padding; box (B, N, 4) float32 normalized cxcywh, (0.5, 0.5, 0.5, 0.5)
        on padding (a valid box, so costs and noise over it stay finite); valid (B, N) bool, False on padding.
    """
    class_id = pad_sequence([t["class_id"].to(device) for t in targets], batch_first=True)  # (B, N)
    box = pad_sequence([t["box"].to(device).float() for t in targets], batch_first=True, padding_value=0.5)
    sizes = torch.tensor([len(t["class_id"]) for t in targets], device=class_id.device)  # (B,)
    valid = torch.arange(class_id.shape[1], device=class_id.device) < sizes[:, None]  # (B, N)
    return class_id, box, valid


def is_positive_int(value: object) -> bool:
    """True for an int >= 1 (not a bool, which Python counts as an int): a count such as queries or blocks."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def padding_or_none(mask: Tensor) -> Tensor | None:
    """The (B, H, W) padding mask, or None when nothing is padded: then no mask need be
    interpolated or applied at all."""
    return mask if mask.any() else None


def check_images(x: Tensor, mask: Tensor | None) -> Tensor:
    """Validate a (B, 3, H, W) float batch and its (B, H, W) bool padding mask; return the mask."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"x must have shape (B, 3, H, W), got {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a float tensor of normalized images, got dtype {x.dtype}; "
            "convert uint8 images with detr.preprocess_images (or x.float() / 255 and normalize)"
        )
    batch, _, height, width = x.shape
    finite = torch.isfinite(x).flatten(1).all(1)  # (B,): checked before anything (batch-norm statistics) sees x
    if not finite.all():
        raise ValueError(
            f"x holds NaN or inf values in image(s) {(~finite).nonzero().flatten().tolist()} of the batch; "
            "check the images and their normalisation (a division by a zero std?)"
        )
    if mask is None:
        return torch.zeros((batch, height, width), dtype=torch.bool, device=x.device)
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor of shape (B, H, W), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True on padding), got dtype {mask.dtype}; use mask.bool()")
    if tuple(mask.shape) != (batch, height, width):
        raise ValueError(
            f"mask must have shape (B, H, W) = {(batch, height, width)} to match x, got {tuple(mask.shape)}"
        )
    if mask.device != x.device:
        raise ValueError(f"mask is on {mask.device} but x is on {x.device}; move both to the same device")
    full = mask.flatten(1).all(1)
    if full.any():
        raise ValueError(
            f"mask marks every pixel of image(s) {full.nonzero().flatten().tolist()} as padding; "
            "True means padding, so a valid image needs some False pixels"
        )
    return mask


def check_targets(
    targets: Sequence[dict[str, Tensor]], batch_size: int, num_classes: int, device: torch.device | None = None
) -> None:
    """Validate training targets: B dicts with ``class_id`` (N,) int64 and ``box`` (N, 4) normalized cxcywh,
    on ``device`` (the images') when given."""
    if isinstance(targets, dict) or not isinstance(targets, Sequence):
        raise TypeError("targets must be a list with one dict per image: [{'class_id': ..., 'box': ...}, ...]")
    if len(targets) != batch_size:
        raise ValueError(
            f"targets has {len(targets)} entries but the batch has {batch_size} images; give one dict per image"
        )
    for i, target in enumerate(targets):
        where = f"targets[{i}]"
        if not isinstance(target, dict) or "class_id" not in target or "box" not in target:
            keys = sorted(target) if isinstance(target, dict) else type(target).__name__
            raise ValueError(f"{where} must be a dict with keys 'class_id' and 'box', got {keys}")
        class_id, box = target["class_id"], target["box"]
        if not isinstance(class_id, Tensor) or not isinstance(box, Tensor):
            raise TypeError(f"{where}['class_id'] and ['box'] must be torch tensors")
        for name, value in (("class_id", class_id), ("box", box)):
            if device is not None and value.device != device:
                raise ValueError(
                    f"{where}['{name}'] is on {value.device} but the images are on {device}; move the targets "
                    f"too, e.g. {{k: v.to('{device}') for k, v in target.items()}}"
                )
        if class_id.dtype != torch.int64:
            raise TypeError(f"{where}['class_id'] must be int64 class indices, got {class_id.dtype}; use .long()")
        if class_id.dim() != 1:
            raise ValueError(f"{where}['class_id'] must have shape (N,), got {tuple(class_id.shape)}")
        if not box.is_floating_point():
            raise TypeError(f"{where}['box'] must be a float tensor of normalized cxcywh boxes, got {box.dtype}")
        if box.dim() != 2 or box.shape[1] != 4 or box.shape[0] != class_id.shape[0]:
            raise ValueError(
                f"{where}['box'] must have shape (N, 4) with N = len(class_id) = {class_id.shape[0]}, "
                f"got {tuple(box.shape)}"
            )
        if class_id.numel() == 0:
            continue
        bad = (class_id < 0) | (class_id >= num_classes)
        if bad.any():
            raise ValueError(
                f"{where}['class_id'] has values {class_id[bad].unique().tolist()} outside [0, {num_classes - 1}]; "
                f"the model has num_classes={num_classes} (the no-object class is added internally)"
            )
        if not torch.isfinite(box).all():
            raise ValueError(f"{where}['box'] contains NaN or inf")
        if (box < 0).any() or (box > 1).any():
            raise ValueError(
                f"{where}['box'] has values outside [0, 1] (max {box.max().item():.3g}): boxes must be "
                "normalized (cx, cy, w, h); divide pixel boxes by the image width and height"
            )
        degenerate = (box[:, 2] <= 0) | (box[:, 3] <= 0)
        if degenerate.any():
            raise ValueError(
                f"{where}['box'] rows {degenerate.nonzero().flatten().tolist()} have zero width or height; "
                "drop degenerate boxes before training"
            )
        half = box[:, 2:] / 2
        outside = ((box[:, :2] - half) < -BOX_TOLERANCE) | ((box[:, :2] + half) > 1 + BOX_TOLERANCE)
        rows = outside.any(1)
        if rows.any():
            raise ValueError(
                f"{where}['box'] rows {rows.nonzero().flatten().tolist()} extend outside the image when read as "
                "(cx, cy, w, h); are they (x0, y0, x1, y1)? convert with "
                "torchvision.ops.box_convert(box, 'xyxy', 'cxcywh')"
            )
