"""Turn the outputs of DETR's mask head into instance masks, panoptic and semantic segmentations.

Inputs are one decoder layer's outputs: ``pred_logits`` (B, Q, K+1) class logits whose last
column is "no object", ``pred_boxes`` (B, Q, 4) normalized cxcywh boxes, and ``pred_masks``
(B, Q, h, w) mask logits covering the padded input batch (h, w = 1/4 of its size for DETR's
mask head). Image sizes are (height, width) pixel pairs.

Rules (from the reference code, facebookresearch/detr ``models/segmentation.py``, and Hugging Face
transformers' ``DetrImageProcessor``):

* :func:`instance_masks` is the reference's ``PostProcess`` + ``PostProcessSegm``: a query scores its
  best class other than "no object" (softmax over K+1); the ``k`` best queries are kept; a mask is
  the query's logits resized bilinearly and binarized at ``sigmoid > threshold`` (0.5). Masks may
  overlap: each query keeps its own.
* :func:`panoptic_segmentation` is transformers' ``post_process_panoptic_segmentation`` (which
  departs from the reference ``PostProcessPanoptic``, see its docstring): queries whose most likely
  class (over K+1) is not "no object" and whose probability exceeds ``threshold`` compete for each
  pixel by score-weighted mask probability; a query whose won pixels are too small a part of its own
  mask is dropped; segments of the same "stuff" class are fused. Segment ids are 1, 2, 3, ...
  (unique, where transformers can repeat one after a fusion); :data:`VOID_ID` (0) marks pixels no
  segment claims.
* :func:`semantic_segmentation` is transformers' ``post_process_semantic_segmentation``: per class,
  the sum over queries of class probability times mask probability; per pixel, the best class.
* :func:`panoptic_png` / :func:`rgb_to_id` are COCO panoptic's ``id2rgb`` / ``rgb2id``:
  ``id = R + 256 * G + 256**2 * B``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.ops import box_convert

VOID_ID = 0  # segment id of pixels no segment claims (COCO panoptic's "unlabeled", black in the PNG)
MAX_PANOPTIC_ID = 256**3 - 1  # the largest id three 8-bit channels can hold

IsThing = Sequence[bool] | Mapping[int, bool] | Callable[[int], bool]


def _check_logits(pred_logits: Tensor) -> tuple[int, int, int]:
    """(B, Q, K) of ``pred_logits`` (B, Q, K+1); a ValueError (TypeError for a non-tensor) says what is wrong."""
    if not isinstance(pred_logits, Tensor):
        raise TypeError(f"pred_logits must be a (B, Q, K+1) tensor of class logits, got {type(pred_logits).__name__}")
    if pred_logits.dim() != 3:
        raise ValueError(f"pred_logits must be a (B, Q, K+1) tensor of class logits, got {tuple(pred_logits.shape)}")
    batch, queries, channels = pred_logits.shape
    if channels < 2:
        raise ValueError(
            f"pred_logits has {channels} class channel(s); it needs K+1 >= 2: K classes and a last 'no object' channel"
        )
    return batch, queries, channels - 1


def _check_masks(pred_masks: Tensor, batch: int, queries: int) -> None:
    """ValueError unless ``pred_masks`` is (B, Q, h, w) with the B and Q of ``pred_logits``."""
    if not isinstance(pred_masks, Tensor):
        raise TypeError(f"pred_masks must be a (B, Q, h, w) tensor of mask logits, got {type(pred_masks).__name__}")
    if pred_masks.dim() == 5 and pred_masks.shape[2] == 1:
        raise ValueError(
            f"pred_masks must be (B, Q, h, w), got {tuple(pred_masks.shape)}: drop the singleton axis with "
            "pred_masks.squeeze(2)"
        )
    if pred_masks.dim() != 4:
        raise ValueError(f"pred_masks must be a (B, Q, h, w) tensor of mask logits, got {tuple(pred_masks.shape)}")
    if pred_masks.shape[:2] != (batch, queries):
        raise ValueError(
            f"pred_masks {tuple(pred_masks.shape)} and pred_logits disagree on (B, Q): expected ({batch}, {queries}, "
            "h, w); pass the two from the same model output"
        )
    if pred_masks.shape[2] == 0 or pred_masks.shape[3] == 0:
        raise ValueError(f"pred_masks has an empty spatial size {tuple(pred_masks.shape[2:])}")


def _check_sizes(sizes: Any, batch: int, name: str) -> list[tuple[int, int]]:
    """``sizes`` (B, 2) (height, width), a tensor or a sequence of pairs -> B (height, width) int pairs."""
    try:
        sizes_tensor = torch.as_tensor(sizes)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be (B, 2) (height, width) pairs, got {sizes!r}") from error
    if sizes_tensor.shape != (batch, 2):
        raise ValueError(
            f"{name} must have shape (B, 2) = ({batch}, 2), one (height, width) per image, got "
            f"{tuple(sizes_tensor.shape)}"
        )
    if sizes_tensor.is_floating_point() and not torch.equal(sizes_tensor, sizes_tensor.round()):
        raise ValueError(f"{name} must hold whole pixel counts, got {sizes_tensor.tolist()}")
    pairs = [(int(height), int(width)) for height, width in sizes_tensor.tolist()]
    if any(height <= 0 or width <= 0 for height, width in pairs):
        raise ValueError(f"{name} must be positive (height, width) pairs, got {pairs}")
    return pairs


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _is_thing_lookup(is_thing: IsThing, num_classes: int) -> Callable[[int], bool]:
    """``is_thing`` as a function of a class id in [0, K-1], checked to cover all K classes where it can be."""
    if callable(is_thing):
        return lambda label: bool(is_thing(label))
    if isinstance(is_thing, Sequence) and not isinstance(is_thing, str) and len(is_thing) < num_classes:
        raise ValueError(
            f"is_thing has {len(is_thing)} entries but the model has K = {num_classes} classes: give one bool per "
            "class id 0..K-1 (True for a countable 'thing', False for amorphous 'stuff')"
        )

    def lookup(label: int) -> bool:
        try:
            return bool(is_thing[label])
        except (KeyError, IndexError) as error:
            raise ValueError(f"is_thing has no entry for class id {label}; it needs one for every class id") from error

    return lookup


@torch.no_grad()
def instance_masks(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    pred_masks: Tensor,
    image_sizes: Tensor | Sequence[tuple[int, int]],
    threshold: float = 0.5,
    k: int = 100,
    input_sizes: Tensor | Sequence[tuple[int, int]] | None = None,
    padded_size: tuple[int, int] | None = None,
) -> list[dict[str, Tensor]]:
    """Per-image instance detections with a binary mask each (the reference ``PostProcess`` + ``PostProcessSegm``).

    A query's score is the probability of its best class other than "no object" (softmax over all
    K+1 channels, the last dropped); the ``k`` best queries of each image are kept, by decreasing
    score. Masks are not made exclusive: two queries may claim the same pixel.

    Masks: without ``input_sizes`` each kept query's logits are resized bilinearly
    (``align_corners=False``) straight to the original image size and binarized at
    ``sigmoid > threshold``. That assumes the mask covers the image exactly, i.e. an unpadded batch.
    With ``input_sizes`` the reference's route is taken, which removes the padding: logits resized
    bilinearly to the padded batch size, binarized, cropped to the image's top-left
    ``input_sizes[i]`` block (the resized image, before padding), then resized to the original size by
    nearest neighbour.

    Args:
        pred_logits: (B, Q, K+1) class logits, last channel "no object".
        pred_boxes: (B, Q, 4) boxes, normalized cxcywh relative to each image.
        pred_masks: (B, Q, h, w) mask logits over the padded input batch.
        image_sizes: (B, 2) (height, width) of the original images, the size of the returned boxes and masks.
        threshold: a mask pixel is on where the sigmoid of its logit is > this (the reference's 0.5).
        k: keep at most this many queries per image.
        input_sizes: (B, 2) (height, width) of each resized image inside the padded batch, or None
            when the masks have no padding to remove.
        padded_size: (height, width) of the padded batch the masks cover, only with ``input_sizes``;
            default the largest height and width of ``input_sizes`` (a batch padded to its largest
            image, as the reference pads). Give it when the batch was padded further (e.g. to a
            multiple of 32).

    Returns:
        B dicts with ``scores`` (N,) float, ``labels`` (N,) int64 in [0, K-1], ``boxes`` (N, 4) xyxy in
        pixels of the original image (not clipped, as in the reference), and ``masks`` (N, H, W) bool
        at the original image size; N = min(k, Q).
    """
    batch, queries, _ = _check_logits(pred_logits)
    if not isinstance(pred_boxes, Tensor):
        raise TypeError(
            f"pred_boxes must be a (B, Q, 4) tensor of normalized cxcywh boxes, got {type(pred_boxes).__name__}"
        )
    if pred_boxes.shape != (batch, queries, 4):
        raise ValueError(
            f"pred_boxes must be (B, Q, 4) = ({batch}, {queries}, 4) normalized cxcywh, got {tuple(pred_boxes.shape)}"
        )
    _check_masks(pred_masks, batch, queries)
    original_sizes = _check_sizes(image_sizes, batch, "image_sizes")
    _check_fraction(threshold, "threshold")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    resized_sizes = None if input_sizes is None else _check_sizes(input_sizes, batch, "input_sizes")
    if padded_size is not None and resized_sizes is None:
        raise ValueError("padded_size only applies with input_sizes: give both, or neither")
    if resized_sizes is not None:
        largest = (max(height for height, _ in resized_sizes), max(width for _, width in resized_sizes))
        padded_size = largest if padded_size is None else _check_sizes([padded_size], 1, "padded_size")[0]
        if largest[0] > padded_size[0] or largest[1] > padded_size[1]:
            raise ValueError(f"input_sizes reach {largest}, past the padded batch size {padded_size}")

    class_probs = pred_logits.float().softmax(-1)[..., :-1]  # (B, Q, K): "no object" dropped
    scores, labels = class_probs.max(-1)  # (B, Q)
    unit_boxes = box_convert(pred_boxes.float(), "cxcywh", "xyxy")  # (B, Q, 4), relative to the image

    results = []
    for image, (height, width) in enumerate(original_sizes):
        top_scores, top_queries = scores[image].topk(min(k, queries))  # (N,), by decreasing score
        scale = unit_boxes.new_tensor([width, height, width, height])
        input_size = None if resized_sizes is None else resized_sizes[image]
        masks = query_masks(pred_masks[image, top_queries], (height, width), input_size, padded_size, threshold)
        results.append(
            {
                "scores": top_scores,
                "labels": labels[image, top_queries],
                "boxes": unit_boxes[image, top_queries] * scale,
                "masks": masks,
            }
        )
    return results


def query_masks(
    mask_logits: Tensor,
    image_size: tuple[int, int],
    input_size: tuple[int, int] | None = None,
    padded_size: tuple[int, int] | None = None,
    threshold: float = 0.5,
) -> Tensor:
    """Binary masks of some queries in the original image's pixels (the reference's ``PostProcessSegm``).

    ``mask_logits`` (N, h, w) over the padded input; ``image_size`` (H, W) of the original image;
    ``input_size`` (height, width) of the resized image inside the padded input of size ``padded_size``
    (both None: the masks cover the image exactly). Returns (N, H, W) bool, ``sigmoid > threshold``.
    """
    logits = mask_logits.float()[:, None]  # (N, 1, h, w): interpolate wants channels
    if input_size is None:
        upsampled = F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)
        return upsampled[:, 0].sigmoid() > threshold  # (N, H, W)
    if padded_size is None:
        raise ValueError("input_size needs padded_size, the (height, width) of the padded input the masks cover")
    upsampled = F.interpolate(logits, size=tuple(padded_size), mode="bilinear", align_corners=False)
    cropped = upsampled[:, :, : input_size[0], : input_size[1]].sigmoid() > threshold  # (N, 1, h_in, w_in)
    return F.interpolate(cropped.float(), size=tuple(image_size), mode="nearest")[:, 0].bool()  # (N, H, W)


@torch.no_grad()
def panoptic_segmentation(
    pred_logits: Tensor,
    pred_masks: Tensor,
    image_sizes: Tensor | Sequence[tuple[int, int]],
    is_thing: IsThing,
    threshold: float = 0.85,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: set[int] | Sequence[int] | None = None,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """Per-image panoptic segmentation: a segment-id map and a description of each segment.

    Follows transformers' ``DetrImageProcessor.post_process_panoptic_segmentation`` (so that, at
    the same thresholds, ``label_ids_to_fuse`` and target sizes, the maps, ids, labels and scores
    are equal), step by step:

    1. a query is kept if its most likely class over all K+1 channels is not "no object" and that
       probability (its score) is > ``threshold`` (same as the reference);
    2. the kept queries' mask probabilities (sigmoid) are resized bilinearly to the image size and
       multiplied by their scores; each pixel goes to the query with the largest product;
    3. in query order, a query is a segment if it won some pixels and ``won / own > overlap_mask_area_threshold``,
       ``own`` being its pixels with score-weighted probability >= ``mask_threshold`` (transformers
       counts them after the weighting); a query of a class in ``label_ids_to_fuse`` joins the
       segment of an earlier query of that class, if any. Dropped queries' pixels stay :data:`VOID_ID`.

    The reference ``PostProcessPanoptic`` instead takes the argmax of the raw mask logits (no score
    weighting) at the network's input size, merges same-class stuff masks, resizes the id map by
    nearest neighbour, repeatedly drops segments of 4 pixels or fewer and numbers segments from 0
    with no void. Transformers' rules are followed here because equality with it is this module's
    contract, and because they are the better rules: the score weighting lets a confident query win
    the pixels it shares with an unsure one, and resizing probabilities before the argmax gives
    smooth full-resolution boundaries.

    Deliberate differences in the output:

    * transformers lists a fused segment once per query it fused (the same ``id`` repeated, each with
      that query's score); here each segment is listed once, with the score of its first query
      (transformers' first entry for that id), and its total area;
    * transformers (5.x) numbers a new segment from the id of the last segment it touched, so a new
      segment that follows a fusion into an earlier segment takes an id already in use (two
      segments, possibly of different classes, become one). Here ids are always 1, 2, 3, ... in order
      of first appearance; maps and lists are equal to transformers' wherever it does not collide;
    * with no query kept, transformers returns a map of -1; here it is all :data:`VOID_ID`, as for
      any unclaimed pixel.

    Args:
        pred_logits: (B, Q, K+1) class logits, last channel "no object".
        pred_masks: (B, Q, h, w) mask logits, resized whole to each image size as transformers does: for
            a padded batch, crop each image's valid block out of them first.
        image_sizes: (B, 2) (height, width) of the wanted maps (transformers' ``target_sizes``).
        is_thing: per class id in [0, K-1], True for a countable "thing", False for "stuff": a
            sequence, a mapping, or a function of the class id.
        threshold: keep queries whose score is > this (the reference's 0.85).
        overlap_mask_area_threshold: drop a query whose won pixels are this fraction of its own mask or less.
        label_ids_to_fuse: class ids whose queries make one segment per image; default the stuff
            classes of ``is_thing`` (the reference's rule). Pass ``set()`` to fuse nothing.
        mask_threshold: score-weighted mask probability from which a pixel counts in a query's own mask.

    Returns:
        B dicts with ``segmentation`` (H, W) int32 segment ids (1, 2, ... and :data:`VOID_ID` = 0 for
        unclaimed pixels) and ``segments_info``, a list by increasing id of dicts with ``id`` (int),
        ``label_id`` (int class id), ``score`` (float), ``isthing`` (bool, from ``is_thing``),
        ``was_fused`` (bool, the class is in ``label_ids_to_fuse``) and ``area`` (int pixels).
    """
    batch, queries, num_classes = _check_logits(pred_logits)
    _check_masks(pred_masks, batch, queries)
    target_sizes = _check_sizes(image_sizes, batch, "image_sizes")
    for value, name in [
        (threshold, "threshold"),
        (overlap_mask_area_threshold, "overlap_mask_area_threshold"),
        (mask_threshold, "mask_threshold"),
    ]:
        _check_fraction(value, name)
    is_thing_of = _is_thing_lookup(is_thing, num_classes)
    if label_ids_to_fuse is None:
        fused_labels = {label for label in range(num_classes) if not is_thing_of(label)}
    else:
        fused_labels = {int(label) for label in label_ids_to_fuse}

    scores, labels = pred_logits.float().softmax(-1).max(-1)  # (B, Q); label K is "no object"
    keep = labels.ne(num_classes) & (scores > threshold)  # (B, Q)

    results = []
    for image, (height, width) in enumerate(target_sizes):
        kept_scores = scores[image, keep[image]]  # (N,)
        kept_labels = labels[image, keep[image]].tolist()
        segmentation = torch.full((height, width), VOID_ID, dtype=torch.int32, device=pred_masks.device)
        segments_info: list[dict[str, Any]] = []
        if kept_scores.numel() > 0:
            mask_probs = pred_masks[image, keep[image]].float().sigmoid()[None]  # (1, N, h, w)
            # probabilities (not logits) are resized, as transformers does
            mask_probs = F.interpolate(mask_probs, size=(height, width), mode="bilinear", align_corners=False)[0]
            weighted = mask_probs * kept_scores[:, None, None]  # (N, H, W)
            owner = weighted.argmax(0)  # (H, W): index among the kept queries of each pixel's winner
            won_area = torch.bincount(owner.flatten(), minlength=len(kept_labels))  # (N,)
            own_area = (weighted >= mask_threshold).flatten(1).sum(1)  # (N,)
            segment_of_fused_label: dict[int, dict[str, Any]] = {}
            for query, label in enumerate(kept_labels):
                won, own = won_area[query], own_area[query]
                if won == 0 or own == 0 or not (won / own).item() > overlap_mask_area_threshold:
                    continue  # a sliver of its own mask, mostly won by others
                segment = segment_of_fused_label.get(label)
                if segment is None:
                    segment = {
                        "id": len(segments_info) + 1,
                        "label_id": label,
                        "score": kept_scores[query].item(),
                        "isthing": is_thing_of(label),
                        "was_fused": label in fused_labels,
                        "area": 0,
                    }
                    segments_info.append(segment)
                    if label in fused_labels:
                        segment_of_fused_label[label] = segment
                segmentation[owner == query] = segment["id"]
                segment["area"] += int(won)  # won regions of different queries never overlap
        results.append({"segmentation": segmentation, "segments_info": segments_info})
    return results


def panoptic_png(segmentation: Tensor | np.ndarray) -> Image.Image:
    """(H, W) integer segment ids in [0, 256**3 - 1] -> RGB PIL image with ``id = R + 256 * G + 256**2 * B``
    (COCO panoptic's ``id2rgb``; :data:`VOID_ID` 0 is black). Save it as PNG: lossless."""
    ids = segmentation.detach().cpu().numpy() if isinstance(segmentation, Tensor) else np.asarray(segmentation)
    if ids.ndim != 2:
        raise ValueError(f"segmentation must be an (H, W) id map, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"segmentation must hold integer segment ids, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_PANOPTIC_ID):
        raise ValueError(
            f"segment ids must be in [0, {MAX_PANOPTIC_ID}] to fit in RGB, got [{ids.min()}, {ids.max()}] "
            "(transformers marks an empty image with -1: map it to 0 first)"
        )
    ids = ids.astype(np.int64)
    channels = [(ids // 256**power) % 256 for power in range(3)]  # R, G, B
    rgb = np.stack(channels, axis=-1).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(rgb)  # (H, W, 3) uint8 is read as RGB


def rgb_to_id(color: Tensor | np.ndarray | Image.Image) -> Tensor | np.ndarray:
    """(..., 3) RGB values -> (...) ids ``R + 256 * G + 256**2 * B`` (COCO panoptic's ``rgb2id``).

    A tensor gives an int64 tensor; a numpy array or PIL image gives an int64 array.
    """
    if isinstance(color, Image.Image):
        if color.mode != "RGB":
            raise ValueError(f"a panoptic PNG is RGB, got a PIL image in mode {color.mode!r}")
        color = np.asarray(color)
    if isinstance(color, Tensor):
        values = color.long()  # ids need more than 8 bits
        weights = torch.tensor([1, 256, 256**2], device=values.device)
    else:
        values = np.asarray(color).astype(np.int64)
        weights = np.array([1, 256, 256**2], dtype=np.int64)
    if values.ndim == 0 or values.shape[-1] != 3:
        raise ValueError(f"color must have a last axis of 3 (R, G, B), got shape {tuple(values.shape)}")
    return (values * weights).sum(-1)


@torch.no_grad()
def semantic_segmentation(
    pred_logits: Tensor,
    pred_masks: Tensor,
    image_sizes: Tensor | Sequence[tuple[int, int]],
) -> list[Tensor]:
    """Per-image (H, W) int64 class map (transformers' ``post_process_semantic_segmentation``).

    Class c's score at a pixel is the sum over queries of P(class c) (softmax over K+1, "no object"
    dropped) times the query's mask probability (sigmoid); these (K, h, w) scores are resized
    bilinearly (``align_corners=False``) to the image size and each pixel takes its best class.
    There is no "unlabeled" value: every pixel gets a class in [0, K-1].

    Args:
        pred_logits: (B, Q, K+1) class logits, last channel "no object".
        pred_masks: (B, Q, h, w) mask logits.
        image_sizes: (B, 2) (height, width) of the wanted maps.

    Returns:
        B tensors (H, W) int64 of class ids.
    """
    batch, queries, _ = _check_logits(pred_logits)
    _check_masks(pred_masks, batch, queries)
    target_sizes = _check_sizes(image_sizes, batch, "image_sizes")
    class_probs = pred_logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    mask_probs = pred_masks.float().sigmoid()  # (B, Q, h, w)
    class_scores = torch.einsum("bqk,bqhw->bkhw", class_probs, mask_probs)  # (B, K, h, w)
    maps = []
    for image, size in enumerate(target_sizes):
        resized = F.interpolate(class_scores[image : image + 1], size=size, mode="bilinear", align_corners=False)
        maps.append(resized[0].argmax(0))  # (H, W)
    return maps
