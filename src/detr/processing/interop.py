"""Hand-off to the tools users chain after a detector: ``supervision`` detections, COCO results, YOLO labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def to_supervision(detections: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]]) -> Any:
    """Detections as ``supervision.Detections``: ``xyxy`` (N, 4) float32, ``confidence`` (N,), ``class_id`` (N,),
    and ``data["class_name"]`` when the model has names. Needs the ``supervision`` package
    (``pip install supervision``), imported only here.

    ``detections``: one image's list (``{"box": [x0, y0, x1, y1] pixels, "score", "class_id", "class_name"?}``)
    gives one ``Detections``; :meth:`DETR.predict`'s own output, a list per image, gives a list of them, one
    per image, in order.
    """
    try:
        import supervision as sv
    except ImportError as err:
        raise ImportError("to_supervision needs the supervision package: pip install supervision") from err
    import numpy as np

    if isinstance(detections, Sequence) and any(not isinstance(d, dict) for d in detections):
        if not all(isinstance(d, Sequence) and all(isinstance(e, dict) for e in d) for d in detections):
            raise TypeError(
                "to_supervision takes one image's detections (a list of dicts) or predict's output (a list of "
                "such lists, one per image)"
            )
        return [to_supervision(per_image) for per_image in detections]
    xyxy = np.array([d["box"] for d in detections], dtype=np.float32).reshape(-1, 4)
    confidence = np.array([d["score"] for d in detections], dtype=np.float32)
    class_id = np.array([d["class_id"] for d in detections], dtype=int)
    data = {}
    if detections and all("class_name" in d for d in detections):
        data["class_name"] = np.array([d["class_name"] for d in detections])
    return sv.Detections(xyxy=xyxy, confidence=confidence, class_id=class_id, data=data)


def coco_results(
    detections: Sequence[dict[str, Any]], image_id: int, category_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """One image's detections as COCO results (``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``),
    the category id the model's for each class when it has them, else the class index."""
    results = []
    for d in detections:
        x0, y0, x1, y1 = d["box"]
        category = category_ids[d["class_id"]] if category_ids is not None else d["class_id"]
        result = {
            "image_id": image_id,
            "category_id": category,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": d["score"],
        }
        if "segmentation" in d:  # a mask model's detection, its mask as COCO RLE (see mask_to_rle)
            result["segmentation"] = d["segmentation"]
        results.append(result)
    return results


def mask_to_rle(mask: Any) -> dict[str, Any]:
    """A (H, W) bool mask -> COCO compressed RLE ``{"size": [H, W], "counts": str}`` (JSON-ready), via pycocotools."""
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def yolo_lines(detections: Sequence[dict[str, Any]], width: int, height: int) -> str:
    """One image's detections as YOLO label lines, ``class cx cy w h score`` normalized to the image."""
    lines = []
    for d in detections:
        x0, y0, x1, y1 = d["box"]
        cx, cy, w, h = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height
        lines.append(f"{d['class_id']} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {d['score']:.5f}\n")
    return "".join(lines)
