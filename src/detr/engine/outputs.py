"""The files ``detr predict`` writes for a set of images, usable from Python (:class:`PredictionWriter`).

Into one folder: per image ``<name>_detections.png`` (boxes, and masks of a mask model, drawn with a legend; the
ground truth in white when given) and, on request, YOLO labels ``labels/<name>.txt``; for all images
``detections.json`` (per input path, the detections: ``box`` xyxy pixels, ``score``, ``class_id``, ``class_name``
and a mask as COCO RLE ``segmentation``), the same as COCO results (``results.coco.json``) and, when some input
could not be read, ``skipped.json`` (per path, why).

    writer = PredictionWriter("predictions", paths, model.category_ids)
    for result in predict_files(model, paths):
        writer.add(result)
    detections = writer.finish()
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fileio import atomic_write_text
from ..processing.interop import coco_results, mask_to_rle, yolo_lines
from ..processing.visualize import draw_detections

if TYPE_CHECKING:
    from .predict import ImagePrediction


def output_names(paths: Sequence[Path]) -> list[str]:
    """A distinct name per input for its output files: its path below the inputs' common folder, with
    ``__`` for the separators, without the suffix unless two inputs differ only by it."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    stems = ["__".join(p.relative_to(common).with_suffix("").parts) for p in resolved]
    clashing = {s for s in stems if stems.count(s) > 1}
    return [
        "__".join(p.relative_to(common).parts) if s in clashing else s for p, s in zip(resolved, stems, strict=True)
    ]


class PredictionWriter:
    """Writes the outputs of :func:`detr.engine.predict.predict_files` over ``paths`` into the folder ``out``
    (made if missing): :meth:`add` each result as it comes (in any order), then :meth:`finish`.

    ``category_ids``: the model's dataset category id per class index (COCO results name those), or None for
    the class indices themselves. ``truth``: ground-truth boxes by image file name
    (:func:`detr.engine.predict.ground_truth_by_name`), drawn in white. ``yolo_labels``: also write
    ``labels/<name>.txt`` (class cx cy w h score, normalised).
    """

    def __init__(
        self,
        out: str | Path,
        paths: Sequence[Path],
        category_ids: Sequence[int] | None = None,
        *,
        yolo_labels: bool = False,
        truth: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.paths = list(paths)
        self.names = output_names(self.paths)
        self.category_ids = category_ids
        self.yolo_labels = yolo_labels
        self.truth = truth or {}
        self.found: dict[int, list[dict[str, Any]]] = {}  # by input index: the detections as the files hold them
        self.skipped: dict[str, str] = {}  # path -> why it could not be read
        self.with_truth = 0  # images with ground truth found for them

    def add(self, result: ImagePrediction) -> None:
        """One input's outcome: its drawing (and labels) written now, its detections kept for :meth:`finish`."""
        if result.error is not None:
            self.skipped[str(result.path)] = result.error
            return
        dets, image, name = result.detections, result.image, self.names[result.index]
        # masks travel as COCO RLE in the files ("segmentation"), as (H, W) bool to the drawing
        self.found[result.index] = [
            {k: v for k, v in d.items() if k != "mask"}
            | ({"segmentation": mask_to_rle(d["mask"])} if "mask" in d else {})
            for d in dets
        ]
        gt = self.truth.get(result.path.name, [])
        self.with_truth += result.path.name in self.truth
        draw_detections(image, dets, gt, min_side=512, legend=True).save(self.out / f"{name}_detections.png")
        if self.yolo_labels:
            atomic_write_text(self.out / "labels" / f"{name}.txt", yolo_lines(dets, image.width, image.height))

    def finish(self) -> dict[str, list[dict[str, Any]]]:
        """Writes ``detections.json``, ``results.coco.json`` and (if any input was skipped) ``skipped.json``;
        returns what ``detections.json`` holds: the detections per input path read, in the inputs' order."""
        order = sorted(self.found)  # the inputs' order, whatever order batches finished in
        report = {str(self.paths[i]): self.found[i] for i in order}
        atomic_write_text(self.out / "detections.json", json.dumps(report, indent=1))
        results = []  # the same as COCO results, as other tools read them (image ids from numeric names)
        for number, i in enumerate(order, start=1):
            path = self.paths[i]
            image_id = int(path.stem) if path.stem.isdigit() else number
            results += [dict(r, file_name=str(path)) for r in coco_results(self.found[i], image_id, self.category_ids)]
        atomic_write_text(self.out / "results.coco.json", json.dumps(results))
        if self.skipped:
            atomic_write_text(self.out / "skipped.json", json.dumps(self.skipped, indent=1))
        return report
