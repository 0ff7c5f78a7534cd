"""What the model looks at: DETR's attention maps as data, and pictures of them (``detr explain``).

Each detection's decoder cross-attention lights up the object it found (the DETR paper's Fig. 6);
the encoder's self-attention of a point shows the instance that point belongs to (Fig. 3). The maps
come from the model's own forward pass: while they are recorded, the attention layers compute
their weights explicitly instead of with the fused kernel (the same computation; padded positions
get weight 0).

Shapes: B images, L layers, ``heads`` attention heads, Q the model's queries, (h, w) the feature map.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from .models.detr import DETR
from .models.transformer import MultiheadAttention
from .options.deformable import DeformableCrossAttention
from .processing.checks import check_images, padding_or_none
from .processing.preprocess import ImagePreprocessor
from .processing.visualize import draw_detections, image_grid, titled


@contextmanager
def recording_attention(model: DETR) -> Iterator[None]:
    """Within it, every attention layer of ``model``'s transformer keeps its weights (``.weights``)."""
    # the library's attention layers, and the deformable cross-attention (detr.options.deformable)
    layers = [m for m in model.transformer.modules() if isinstance(m, (MultiheadAttention, DeformableCrossAttention))]
    if not layers:
        raise ValueError(
            f"attention maps need the library's attention layers (detr.Transformer); "
            f"{type(model.transformer).__name__} has none"
        )
    for layer in layers:
        layer.record_weights = True
    try:
        yield
    finally:
        for layer in layers:
            layer.record_weights, layer.weights = False, None


@torch.no_grad()
def attention_maps(model: DETR, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
    """Every layer's attention for a (B, 3, H, W) batch (``mask`` (B, H, W) True on padding).

    Returns ``"decoder"``: the cross-attention of the model's queries over the feature map,
    (L, B, heads, Q, h, w); ``"encoder"``: the self-attention between feature cells, (L, B, heads,
    h*w, h*w) (row: the attending cell, flattened row-major); ``"feature_mask"`` (B, h, w), True on
    padded cells; and ``"logits"`` (B, Q, K+1) and ``"boxes"`` (B, Q, 4) of the same pass's last
    layer. Each map sums to 1 over the unpadded cells.
    """
    feature_shape: list[int] = []
    hook = model.input_proj.register_forward_hook(lambda m, i, o: feature_shape.extend(o.shape[-2:]))
    was_training = model.training
    model.eval()
    try:
        with recording_attention(model):
            logits, boxes, _ = model._decode(x, padding_or_none(check_images(x, mask)), all_layers=False)
            encoder = [layer.self_attn.weights for layer in model.transformer.encoder.layers]
            decoder = [layer.multihead_attn.weights for layer in model.transformer.decoder.layers]
    finally:
        hook.remove()
        model.train(was_training)
    h, w = feature_shape
    q = model.num_queries
    cross = torch.stack([d[:, :, :q] for d in decoder])  # (L, B, heads, Q, h*w)
    padded = torch.zeros(x.shape[0], h, w, dtype=torch.bool, device=x.device)
    if mask is not None:  # as the model shrinks it
        padded = F.interpolate(mask[None].float(), size=(h, w)).to(torch.bool)[0]
    return {
        "decoder": cross.unflatten(-1, (h, w)),  # (L, B, heads, Q, h, w)
        "feature_mask": padded,
        "encoder": torch.stack(encoder) if encoder else cross.new_zeros(0),  # (L, B, heads, h*w, h*w)
        "logits": logits[-1, :, :q],
        "boxes": boxes[-1, :, :q],
    }


def heat_overlay(image: Image.Image, heat: Tensor, alpha: float = 0.55) -> Image.Image:
    """``image`` with ``heat`` ((h, w), any scale) upsampled over it, normalized to its maximum, in a
    red-yellow colour map."""
    heat = heat.float()[None, None]
    heat = F.interpolate(heat, size=(image.height, image.width), mode="bilinear", align_corners=False)[0, 0]
    heat = (heat / heat.max().clamp(min=1e-12)).clamp(0, 1).numpy()
    colour = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], -1) * 255  # red -> yellow
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = alpha * heat[..., None]
    return Image.fromarray((base * (1 - weight) + colour * weight).astype(np.uint8))


@dataclass
class ImageAttention:
    """One image's detections and the attention maps of the forward pass that found them.

    ``maps`` is :func:`attention_maps`' output for the image (batch of 1); ``queries[i]`` is the query of
    ``detections[i]``; ``cells`` the (h, w) feature cells of the image itself (the padding left out).
    """

    detections: list[dict[str, Any]]
    queries: list[int]
    maps: dict[str, Tensor]
    cells: tuple[int, int]
    best_score: float = 0.0  # the highest class score of any query, over the threshold or not

    def pick(self, heads: Tensor, head: int | None) -> Tensor:
        return heads.mean(0) if head is None else heads[head]

    def decoder(self, i: int, layer: int = -1, head: int | None = None) -> Tensor:
        """Detection ``i``'s decoder cross-attention over the image's cells, (h, w) (sums to 1 there),
        of layer ``layer``, head ``head`` or the mean over heads."""
        heat = self.pick(self.maps["decoder"][layer, 0, :, self.queries[i]], head)
        return heat[: self.cells[0], : self.cells[1]]


def image_attention(
    model: DETR,
    image: Image.Image,
    threshold: float = 0.5,
    max_detections: int = 8,
    preprocessor: ImagePreprocessor | None = None,
) -> ImageAttention:
    """``model``'s detections in ``image`` (score >= ``threshold``, at most ``max_detections``, as
    ``predict`` gives them) with the attention of the same forward pass; ``preprocessor``: the image
    read as that says (default: the model's own)."""
    preprocessor = preprocessor or model.preprocessing
    batch = preprocessor([image])
    device = next(model.parameters()).device
    maps = attention_maps(model, batch.pixel_values.to(device), batch.mask.to(device))
    (dets,) = model.predict([image], k=max_detections, score_threshold=threshold, preprocessor=preprocessor)
    probs = maps["logits"][0].softmax(-1)[:, :-1]  # (Q, K)
    # each detection's query: the one whose best class and score it is (predict keeps queries in score order)
    scores, _ = probs.max(-1)
    order = scores.argsort(descending=True)[: len(dets)]
    unpadded = ~maps["feature_mask"][0]
    cells = (int(unpadded.any(1).sum()), int(unpadded.any(0).sum()))
    return ImageAttention(dets, order.tolist(), maps, cells, float(scores.max()) if len(scores) else 0.0)


def explain_image(
    model: DETR,
    image: Image.Image,
    threshold: float = 0.5,
    layer: int = -1,
    head: int | None = None,
    points: int = 4,
    side: int = 256,
    max_detections: int = 8,
    found: ImageAttention | None = None,
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """A picture of what ``model`` looks at in ``image``: the detections (score >= ``threshold``, at most
    ``max_detections``), each beside its decoder attention (layer ``layer``, head ``head`` or the mean
    over heads), then the encoder self-attention (same layer) of ``points`` cells at the detections'
    centres (Fig. 3 of the paper). Each tile is about ``side`` pixels, under its title (see
    :func:`explain_panels`). ``found``: the attention :func:`image_attention` already found for it (else
    computed here). Returns the picture and the detections."""
    found = found or image_attention(model, image, threshold, max_detections)
    tiles = [titled(tile, title) for title, tile in explain_panels(found, image, threshold, layer, head, points, side)]
    return image_grid(tiles, min(4, len(tiles))), found.detections


def explain_panels(
    found: ImageAttention,
    image: Image.Image,
    threshold: float = 0.5,
    layer: int = -1,
    head: int | None = None,
    points: int = 4,
    side: int = 256,
) -> list[tuple[str, Image.Image]]:
    """The tiles of :func:`explain_image`'s picture, each with its title: the detections (or, without any,
    the best score found), each detection's decoder attention (class, score, layer, head), and the encoder
    self-attention of the points at the detections' centres (their pixel coordinates)."""
    dets, maps, valid = found.detections, found.maps, found.cells
    h, w = maps["decoder"].shape[-2:]
    scale = max(1, round(side / max(image.size)))
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    heads = "mean of heads" if head is None else f"head {head}"

    def scaled(ds: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [dict(d, box=[v * scale for v in d["box"]]) for d in ds]

    def name(det: dict[str, Any]) -> str:
        return str(det.get("class_name", det["class_id"]))

    first = (
        f"{len(dets)} detections >= {threshold:g}"
        if dets
        else f"no detection >= {threshold:g} (best score {found.best_score:.2f})"
    )
    panels = [(first, draw_detections(big, scaled(dets)))]
    decoder_layer = layer % maps["decoder"].shape[0]
    for i, det in enumerate(dets):
        title = f"{name(det)} {det['score']:.2f}: decoder layer {decoder_layer}, {heads}"
        panels.append((title, draw_detections(heat_overlay(big, found.decoder(i, layer, head)), scaled([det]))))
    encoder = maps["encoder"]
    if points and len(encoder):
        for det in dets[:points]:
            x0, y0, x1, y1 = det["box"]
            cy = min(int((y0 + y1) / 2 / image.height * valid[0]), valid[0] - 1)
            cx = min(int((x0 + x1) / 2 / image.width * valid[1]), valid[1] - 1)
            heat = found.pick(encoder[layer, 0, :, cy * w + cx], head).view(h, w)[: valid[0], : valid[1]]
            marked = heat_overlay(big, heat)
            px, py = (cx + 0.5) / valid[1] * big.width, (cy + 0.5) / valid[0] * big.height
            ImageDraw.Draw(marked).ellipse([px - 4, py - 4, px + 4, py + 4], outline="white", width=2)
            at = f"({(cx + 0.5) / valid[1] * image.width:.0f}, {(cy + 0.5) / valid[0] * image.height:.0f})"
            title = f"encoder layer {layer % len(encoder)} at {at} px ({name(det)}), {heads}"
            panels.append((title, marked))
    return panels
