"""The accuracy gate: an exported file against the PyTorch model it came from, before anyone ships it.

On a validation split (:func:`compare_on_data`) both are run over the same images, each read as it
declares (the export's metadata, the model's preprocessing), and scored with pycocotools; the gate
passes when the COCO AP dropped by at most ``max_ap_drop`` AP points (:data:`MAX_AP_DROP` by
precision). The largest differences of the detections are reported too: score and box (pixels of
the original image) of each detection the model scores at least :data:`DETECTION_SCORE` (what
``predict`` keeps by default) against its counterpart from the export. Without data (:func:`compare_on_generated`) there is
no AP to measure: only the outputs are compared, on generated images, and the result says so.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchvision.ops import box_convert, box_iou

from .runtime import ExportedDETR

if TYPE_CHECKING:
    from ..models.detr import DETR

MAX_AP_DROP = {"fp32": 0.2, "fp16": 0.5, "int8": 1.5}  # AP points (AP x 100) an export may lose by default
DETECTION_SCORE = 0.5
FP32_SCORE_TOLERANCE = 1e-3  # without data: an fp32 export's scores must match this closely
MIN_GATE_IMAGES = 10  # the AP of fewer images says too little for the gate to vouch for an export


@dataclass
class GateResult:
    """What the gate measured; ``ap_*`` are COCO AP in [0, 1], ``ap_drop`` in AP points (x 100)."""

    precision: str
    compared_on: str  # "data/val (300 images)" or "8 generated images (no --check-data)"
    ap_model: float | None
    ap_exported: float | None
    max_score_diff: float
    max_box_diff_px: float
    detections: int  # detections of the model scored >= DETECTION_SCORE
    unmatched: int  # of which the export has no box of the class at IoU >= 0.5
    max_ap_drop: float | None
    passed: bool
    unverified: str = ""  # why the comparison cannot vouch for the export, though nothing failed ("": it can)

    @property
    def ap_drop(self) -> float | None:
        if self.ap_model is None or self.ap_exported is None:
            return None
        return 100 * (self.ap_model - self.ap_exported)

    def describe(self) -> str:
        lines = [f"compared on {self.compared_on}:"]
        if self.ap_drop is not None:
            lines.append(
                f"  AP PyTorch {100 * self.ap_model:.2f}, {self.precision} export {100 * self.ap_exported:.2f}: "
                f"drop {self.ap_drop:.2f} AP points (allowed {self.max_ap_drop:g})"
            )
        else:
            lines.append("  no AP measured (give --check-data DIR, a validation split, for the AP gate)")
        lines.append(
            f"  largest differences over the model's {self.detections} detections scored >= {DETECTION_SCORE}: "
            f"score {self.max_score_diff:.2e}, box {self.max_box_diff_px:.2e} px; "
            f"{self.unmatched} without a box of their class from the export (IoU >= 0.5)"
        )
        if not self.passed:
            lines.append("  gate: FAILED")
        elif self.unverified:
            lines.append(f"  gate: not verified: {self.unverified}")
        else:
            lines.append("  gate: passed")
        return "\n".join(lines)


class _Differences:
    """The largest differences between two models' detections: each detection ``model`` scores at
    least :data:`DETECTION_SCORE` against its counterpart: the other's same query when it boxes the
    same class at IoU >= 0.5, else the other's box of that class overlapping it most (a discrete
    choice such as two-stage's top-k may hand a detection to another query); and those without one."""

    def __init__(self) -> None:
        self.score = 0.0
        self.box_px = 0.0
        self.detections = 0
        self.unmatched = 0

    def add(self, ref: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor], sizes: Tensor) -> None:
        """ref, other: (logits (B, Q, K+1), boxes (B, Q, 4) normalized cxcywh); sizes (B, 2) (h, w)."""
        ref_score, ref_class = ref[0].float().softmax(-1)[..., :-1].max(-1)  # (B, Q)
        score, label = other[0].float().softmax(-1)[..., :-1].max(-1)
        scale = sizes.flip(-1).repeat(1, 2).to(ref[1])[:, None, :]  # (B, 1, 4) w, h, w, h
        ref_xyxy = box_convert(ref[1].float(), "cxcywh", "xyxy") * scale  # (B, Q, 4) pixels
        xyxy = box_convert(other[1].float(), "cxcywh", "xyxy") * scale
        for b in range(ref_xyxy.shape[0]):
            shown = ref_score[b] >= DETECTION_SCORE
            if not shown.any():
                continue
            queries = shown.nonzero()[:, 0]  # (n,)
            iou = box_iou(ref_xyxy[b][queries], xyxy[b])  # (n, Q)
            iou[ref_class[b][queries][:, None] != label[b][None, :]] = -1.0  # a counterpart has the same class
            same_query = iou[torch.arange(len(queries)), queries] >= 0.5
            best, j = iou.max(1)
            j = torch.where(same_query, queries, j)  # its own query when that still boxes it, else the closest
            matched = same_query | (best >= 0.5)
            self.detections += int(shown.sum())
            self.unmatched += int((~matched).sum())
            if matched.any():
                score_diff = (ref_score[b][queries] - score[b][j]).abs()[matched]
                box_diff = (ref_xyxy[b][queries] - xyxy[b][j]).abs().amax(-1)[matched]
                self.score = max(self.score, float(score_diff.max()))
                self.box_px = max(self.box_px, float(box_diff.max()))


def compare_on_data(
    exported: ExportedDETR,
    model: DETR,
    data: str | Path,
    split: str = "val",
    max_ap_drop: float | None = None,
    batch_size: int = 8,
    images: str | Path | None = None,
    val_fraction: float = 0.1,
) -> GateResult:
    """Evaluate ``exported`` and ``model`` on the same batches of ``data``'s ``split`` (any dataset
    ``detr eval`` reads; without a validation split, ``val_fraction`` of its images by a hash of their file names),
    each as ``detr eval`` does (:func:`detr.engine.evaluate.evaluate_model`, the split read as each declares), and
    gate on the AP drop (default :data:`MAX_AP_DROP` of its precision)."""
    from ..data import find_split
    from ..engine.evaluate import evaluate_model, evaluation_dataset

    max_ap_drop = MAX_AP_DROP[exported.precision] if max_ap_drop is None else max_ap_drop
    where = find_split(data, split, images, val_fraction)
    dataset = evaluation_dataset(where, exported.preprocessing)
    dataset.check_images()
    found = {}
    for name, candidate in (("model", model.eval()), ("exported", exported)):
        split_read = dataset if name == "exported" else evaluation_dataset(where, candidate.preprocessing)
        found[name] = evaluate_model(
            candidate, split_read, tasks=("boxes",), batch_size=batch_size, keep_outputs=True
        )  # same batches: the outputs pair up
    diff = _Differences()
    for ref, out in zip(found["model"].outputs, found["exported"].outputs, strict=True):
        diff.add(ref[:2], out[:2], out[2])  # (logits (B, Q, K+1), boxes (B, Q, 4)), sizes (B, 2)
    ap = {name: evaluation.metrics["AP"] for name, evaluation in found.items()}
    result = GateResult(
        exported.precision, f"{data} {split} ({len(dataset)} images)", ap["model"], ap["exported"],
        diff.score, diff.box_px, diff.detections, diff.unmatched, max_ap_drop, passed=False,
    )  # fmt: skip
    result.passed = result.ap_drop is not None and result.ap_drop <= max_ap_drop
    reasons = []
    if diff.detections == 0:
        reasons.append(
            f"the PyTorch model scores no detection >= {DETECTION_SCORE} on these images, so there is none to "
            "compare (a model trained for other data, or barely trained?)"
        )
    if len(dataset) < MIN_GATE_IMAGES:
        reasons.append(f"only {len(dataset)} images, under {MIN_GATE_IMAGES}: their AP says too little")
    result.unverified = "; ".join(reasons)
    return result


def compare_on_generated(exported: ExportedDETR, model: DETR, count: int = 8, seed: int = 0) -> GateResult:
    """Compare outputs on ``count`` generated images (shapes on textured backgrounds, at the model's
    input size). No AP: an fp32 export passes when its scores match within :data:`FP32_SCORE_TOLERANCE`;
    lower precisions always pass (only data can tell what their differences cost)."""
    from ..data.synthetic import SynthConfig, make_image

    size = exported.preprocessing.short_side or 800
    rng = random.Random(seed)
    images = [make_image(rng, SynthConfig(image_size=size))[0] for _ in range(count)]
    diff = _Differences()
    model = model.eval()
    with torch.no_grad():
        for image in images:
            batch = exported.preprocessing(image)
            ref = model.decode(batch.pixel_values, batch.mask, all_layers=False)
            out = exported.decode(batch.pixel_values, batch.mask)
            diff.add((ref[0][-1], ref[1][-1]), (out[0][-1], out[1][-1]), batch.image_sizes)
    passed = exported.precision != "fp32" or (diff.score <= FP32_SCORE_TOLERANCE and diff.unmatched == 0)
    return GateResult(
        exported.precision, f"{count} generated images (no --check-data)", None, None, diff.score, diff.box_px,
        diff.detections, diff.unmatched, None, passed,
    )  # fmt: skip
