"""Tiled prediction: large images with small objects, cut into overlapping tiles in their own pixels.

A DETR reads an image resized to its size (800 px short side, or what it was trained at) and gives at
most ``num_queries`` detections. A 4000 px drone or microscope image with hundreds of 10 px objects
loses both ways: resized, its objects shrink to a few pixels, and the queries cap the answer. Tiled
prediction cuts the image, unresized, into ``tile`` x ``tile`` windows that overlap by ``overlap``,
runs the windows through the model in batches (each read as the model reads any image: its
preprocessing), maps every box back into the image's pixels and merges the duplicates the overlaps
make. An image can then have ``num_queries`` detections per tile. ``full_image`` adds the whole image,
read at the model's size, as one more window, for objects larger than a tile.

The merge (:func:`merge_tiled_detections`), and why:

- Within a window nothing is merged: DETR's set prediction already gives one box per object, so two
  overlapping boxes of one class from one window are two objects (``nms`` is there for a model that
  boxes an object twice).
- Across two windows, detections of one class are the same object when their boxes, clipped to the part
  of the image both windows see, overlap by IoU >= ``merge_iou``. There both windows see the same
  pixels, so one object gives the same box there whether a window holds it whole or cut by its edge: a
  piece and the whole box, two pieces of an object wider than the overlap, four pieces at a corner all
  coincide. Plain IoU misses pieces (a quarter of an object against the object: 0.25); intersection over
  the smaller box (SAHI's choice) joins a piece to its whole box but not two pieces of an object wider
  than the overlap (a 50 px piece and an 80 px one sharing a 20 px strip: 0.4), and joins a small object
  lying on a larger one of its class. Touching objects share an edge, not area, so they stay apart.
- The detections joined, transitively (a corner's four pieces join through each other), become one:
  the best-scored whole box among them, a box being *cut* when it reaches an edge of its window that lies
  inside the image; else (no window saw the object whole) the union of the pieces. Its score is the best
  member's. Class-aware NMS would keep a piece whenever the piece outscores the whole box, and weighted
  box fusion averages a piece with the whole box into a box that fits neither; the best whole box keeps
  the model's own localisation and score calibration.

With an overlap wider than the objects, every object is whole in some window, so the merge mostly
picks whole boxes; the union matters for objects larger than the overlap (or ``full_image``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import box_iou

from .postprocess import as_detections
from .preprocess import Batch, ImagePreprocessor, as_image

NO_TILED_MASKS = (
    "tiled prediction gives boxes only, and this is a mask model: predict without tiles for masks "
    "(a merged mask would need every piece pasted into a full-size image, per detection)"
)


def axis_starts(size: int, length: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``length`` pixels covering ``size`` pixels with at least ``overlap``
    (a fraction of ``length``) between neighbours: spread evenly, the first at 0, the last at the end."""
    if size <= length:
        return [0]
    stride = length * (1.0 - overlap)
    count = math.ceil((size - length) / stride) + 1
    return [round(i * (size - length) / (count - 1)) for i in range(count)]


def tile_windows(height: int, width: int, tile: int, overlap: float) -> Tensor:
    """The windows cutting a (height, width) image: (N, 4) int64 ``[x0, y0, x1, y1]`` pixels, row by row.

    Every window has the same size, ``min(tile, width)`` x ``min(tile, height)`` (so that an image's tiles
    batch together); neighbours overlap by at least ``overlap`` of ``tile``, more where the last window of
    a row or column is pushed back to end at the image's edge.
    """
    check_tiling(tile, overlap)
    tile_w, tile_h = min(tile, width), min(tile, height)
    windows = [
        [x0, y0, x0 + tile_w, y0 + tile_h]
        for y0 in axis_starts(height, tile_h, overlap)
        for x0 in axis_starts(width, tile_w, overlap)
    ]
    return torch.tensor(windows, dtype=torch.int64)


@dataclass(frozen=True)
class Tiling:
    """How images are cut (:func:`predict_tiled`'s arguments, checked): ``tile`` x ``tile`` px windows sharing
    ``overlap`` of a tile with their neighbours, and with ``full_image`` the whole image as one more window."""

    tile: int
    overlap: float = 0.2
    full_image: bool = False

    def __post_init__(self) -> None:
        check_tiling(self.tile, self.overlap)


def check_tiling(tile: int, overlap: float) -> None:
    """Refuse a tile size or overlap that cannot cut an image, saying what to give."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 32:
        raise ValueError(f"tile must be a size in pixels of at least 32 (e.g. 640), got {tile!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be a fraction of the tile in [0, 1) (e.g. 0.2), got {overlap!r}")


def cut_by_window(boxes: Tensor, windows: Tensor, height: int, width: int, margin: float) -> Tensor:
    """Which boxes reach an edge of their window that lies inside the image (so may be pieces of an object).

    boxes: (N, 4) xyxy image pixels; windows: (N, 4) xyxy, each box's own window; margin: pixels from an
    edge within which a box counts as reaching it (a box past the edge is clipped onto it). Returns (N,) bool.
    """
    inner = torch.stack(
        [windows[:, 0] > 0, windows[:, 1] > 0, windows[:, 2] < width, windows[:, 3] < height], dim=1
    )  # (N, 4): which edges of each window are inside the image
    near_low = boxes[:, :2] <= windows[:, :2] + margin  # left, top
    near_high = boxes[:, 2:] >= windows[:, 2:] - margin  # right, bottom
    return (inner & torch.cat([near_low, near_high], dim=1)).any(1)


def merge_tiled_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    window_ids: Tensor,
    windows: Tensor,
    image_size: tuple[int, int],
    merge_iou: float = 0.5,
    margin: float = 2.0,
) -> dict[str, Tensor]:
    """One detection per object from the detections of overlapping windows (the rules: module docstring).

    Args:
        boxes: (N, 4) float xyxy in the image's pixels.
        scores: (N,) float; labels: (N,) int64 class ids.
        window_ids: (N,) int64, the window each detection comes from (detections of one window never merge).
        windows: (W, 4) xyxy image pixels of the windows (:func:`tile_windows`, plus the whole image if run).
        image_size: (height, width) of the image.
        merge_iou: IoU, within the part of the image both windows see, from which two detections of one
            class from different windows are one object.
        margin: pixels from an inner window edge within which a box counts as cut by it.

    Returns:
        ``boxes`` (M, 4), ``scores`` (M,), ``labels`` (M,), sorted by decreasing score, ``members`` (M,)
        int64, how many detections each merged one stands for, and ``cut`` (N,) bool, which inputs were cut.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = boxes.shape[0]
    boxes, scores, windows = boxes.float(), scores.float(), windows.float()
    cut = cut_by_window(boxes, windows[window_ids], *image_size, margin)
    if count == 0:
        empty = labels.new_zeros(0)
        return {"boxes": boxes.reshape(0, 4), "scores": scores, "labels": empty, "members": empty, "cut": cut}
    rows, cols = [], []
    ids = window_ids.unique().tolist()
    where = {w: (window_ids == w).nonzero().flatten() for w in ids}
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            shared = torch.cat(
                [torch.maximum(windows[a, :2], windows[b, :2]), torch.minimum(windows[a, 2:], windows[b, 2:])]
            )
            if (shared[2:] <= shared[:2]).any():
                continue  # windows apart: nothing of one can be the same object as anything of the other
            # each box as much of it as both windows see: one object gives the same box there, whole or cut
            clipped_a, in_a = _clip(boxes[where[a]], shared)
            clipped_b, in_b = _clip(boxes[where[b]], shared)
            ia, ib = where[a][in_a], where[b][in_b]
            same = labels[ia][:, None] == labels[ib][None, :]
            match = same & (box_iou(clipped_a[in_a], clipped_b[in_b]) >= merge_iou)  # (na, nb)
            r, c = match.nonzero(as_tuple=True)
            rows.append(ia[r])
            cols.append(ib[c])
    r = torch.cat(rows).numpy() if rows else np.zeros(0, dtype=np.int64)
    c = torch.cat(cols).numpy() if cols else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(count, count))
    # per component: the best whole member, else the union of the (cut) members; the best member's score
    groups, component = connected_components(graph, directed=False)
    component = torch.from_numpy(component).long()
    key = scores + 2.0 * (~cut).float()  # whole members before cut ones, each by score
    order = torch.from_numpy(np.lexsort(((-key).numpy(), component.numpy()))).long()
    first = torch.ones(count, dtype=torch.bool)
    first[1:] = component[order][1:] != component[order][:-1]
    leader = order[first]  # (groups,) each component's best whole member (or best cut one), by component id
    low = torch.full((groups, 2), float("inf")).scatter_reduce(
        0, component[:, None].expand(-1, 2), boxes[:, :2], "amin"
    )
    high = torch.full((groups, 2), -float("inf")).scatter_reduce(
        0, component[:, None].expand(-1, 2), boxes[:, 2:], "amax"
    )
    union = torch.cat([low, high], dim=1)  # (groups, 4)
    merged_boxes = torch.where(cut[leader][:, None], union, boxes[leader])
    best = torch.zeros(groups).scatter_reduce(0, component, scores, "amax", include_self=False)
    members = torch.bincount(component, minlength=groups)
    labels_of = labels[leader]
    ranking = best.argsort(descending=True)
    return {
        "boxes": merged_boxes[ranking],
        "scores": best[ranking],
        "labels": labels_of[ranking],
        "members": members[ranking],
        "cut": cut,
    }


def _clip(boxes: Tensor, region: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 4) xyxy boxes clipped to the xyxy ``region``, and (N,) bool: which keep a positive area there."""
    clipped = torch.cat([torch.maximum(boxes[:, :2], region[:2]), torch.minimum(boxes[:, 2:], region[2:])], dim=1)
    return clipped, (clipped[:, 2:] > clipped[:, :2]).all(1)


def _crop(image: Image.Image | Tensor, window: Sequence[int]) -> Image.Image | Tensor:
    x0, y0, x1, y1 = window
    if isinstance(image, Image.Image):
        return image.crop((x0, y0, x1, y1))
    return image[:, y0:y1, x0:x1]


def _image_size(image: Image.Image | Tensor) -> tuple[int, int]:
    """(height, width) of an image :func:`as_image` returned."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(image.shape[1]), int(image.shape[2])


def tiled_or_capped(
    model: Any,
    images: Any,
    tile: int | None,
    tile_overlap: float,
    tile_full_image: bool,
    k: int,
    score_threshold: float,
    preprocessor: ImagePreprocessor | None,
    nms: float | None,
    classes: Sequence[int | str] | None,
    max_detections: int | None,
) -> tuple[list[list[dict[str, Any]]] | None, int]:
    """A ``predict``'s tiling arguments, in one place for every model: with ``tile``, ``(the detections through
    tiles, k)`` (:func:`predict_tiled`); without, ``(None, k at most max_detections)`` (untiled: one window, one
    cap) for the model's own pass."""
    if tile is not None:
        found = predict_tiled(
            model, images, tile, tile_overlap, tile_full_image, k, score_threshold, preprocessor, nms, classes,
            max_detections,
        )  # fmt: skip
        return found, k
    return None, k if max_detections is None else min(k, max_detections)


@torch.no_grad()
def predict_tiled(
    model: Any,
    images: Any,
    tile: int,
    overlap: float = 0.2,
    full_image: bool = False,
    k: int = 100,
    score_threshold: float = 0.0,
    preprocessor: ImagePreprocessor | None = None,
    nms: float | None = None,
    classes: Sequence[int | str] | None = None,
    max_detections: int | None = None,
    batch_size: int = 8,
    merge_iou: float = 0.5,
) -> list[list[dict[str, Any]]]:
    """Detections of large images through tiles (the module docstring says how and why).

    Args:
        model: anything with ``predict(Batch, k=, score_threshold=, nms=, classes=)`` returning per-image
            detection dicts, and ``preprocessing`` and ``class_names``: a ``DETR``, its
            ``optimize_for_inference()`` copy, an exported file loaded by :mod:`detr.deploy.runtime`.
        images: one raw image or a list (PIL, numpy (H, W, 3), (3, H, W) uint8 or float in [0, 1]); cut in
            their own pixels, never resized as a whole (except the optional full-image window).
        tile: window side in pixels (the image's, before any resize); each window is then read as
            ``preprocessor`` reads any image (resized to the model's size: a tile of the model's size is
            seen at its own scale, a smaller one magnified).
        overlap: fraction of ``tile`` that neighbouring windows share; wider than the objects, every
            object is whole in some window.
        full_image: also run the whole image, read at the model's size, as one more window (large objects).
        k, score_threshold, nms, classes: as ``predict``, for each window.
        max_detections: keep at most this many detections per image after merging (default: all of them,
            up to ``k`` per window).
        batch_size: windows per forward pass.
        merge_iou: the merge's threshold (:func:`merge_tiled_detections`).

    Returns:
        Per image a list of ``{"box": [x0, y0, x1, y1] image pixels, "score", "class_id"}`` (plus
        ``"class_name"``), sorted by decreasing score: what ``predict`` returns.
    """
    check_tiling(tile, overlap)
    if getattr(model, "task", None) == "masks" or hasattr(model, "mask_head"):
        raise ValueError(NO_TILED_MASKS)
    if isinstance(images, Batch) or (isinstance(images, Tensor) and images.dim() == 4 and images.is_floating_point()):
        raise ValueError(
            "tiled prediction cuts raw images (PIL, numpy, (3, H, W) tensors), not a preprocessed batch: "
            "pass the images themselves"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_detections is not None and max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    if isinstance(images, (Image.Image, np.ndarray)) or (isinstance(images, Tensor) and images.dim() == 3):
        images = [images]
    preprocessor = preprocessor or model.preprocessing
    class_names = model.class_names
    results = []
    for raw in images:
        image = as_image(raw)
        height, width = _image_size(image)
        windows = tile_windows(height, width, tile, overlap)
        found: list[tuple[list[dict[str, Any]], int]] = []  # (detections in window pixels, window index)
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size].tolist()
            detections = model.predict(
                preprocessor([_crop(image, w) for w in chunk]), k=k, score_threshold=score_threshold, nms=nms,
                classes=classes,
            )  # fmt: skip
            found += [(dets, start + i) for i, dets in enumerate(detections)]
        if full_image:
            windows = torch.cat([windows, torch.tensor([[0, 0, width, height]])])
            whole = model.predict(preprocessor([image]), k=k, score_threshold=score_threshold, nms=nms, classes=classes)
            found.append((whole[0], len(windows) - 1))
        boxes, scores, labels, window_ids = [], [], [], []
        for dets, w in found:
            offset = windows[w, :2].repeat(2).float()  # (4,) x0, y0, x0, y0
            for det in dets:
                boxes.append(torch.tensor(det["box"], dtype=torch.float32) + offset)
                scores.append(det["score"])
                labels.append(det["class_id"])
                window_ids.append(w)
        boxes_t = torch.stack(boxes) if boxes else torch.zeros(0, 4)
        merged = merge_tiled_detections(
            boxes_t,
            torch.tensor(scores, dtype=torch.float32),
            torch.tensor(labels, dtype=torch.int64),
            torch.tensor(window_ids, dtype=torch.int64),
            windows,
            (height, width),
            merge_iou,
            margin=max(2.0, 0.01 * min(tile, height, width)),  # a box this near an inner window edge is cut
        )
        kept = slice(None) if max_detections is None else slice(0, max_detections)
        results.append(
            as_detections(merged["boxes"][kept], merged["scores"][kept], merged["labels"][kept], class_names)
        )
    return results
