"""The COCO panoptic format: a JSON file listing each image's segments and a PNG per image whose colours
are the segment ids (``id = R + 256 G + 256^2 B``, 0 unlabeled), read and checked.

Both layouts COCO uses are found: ``annotations/panoptic_<split>.json`` with the PNGs in
``annotations/panoptic_<split>/``, or the two side by side at the dataset's root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .coco import DatasetError, read_panoptic_ids


@dataclass
class PanopticAnnotations:
    """A checked COCO panoptic annotation file: per image file name, its PNG and segments."""

    path: Path
    png_dir: Path
    categories: list[dict[str, Any]]  # {"id", "name", "isthing"}
    segments: dict[str, tuple[Path, list[dict[str, Any]]]]  # image file name -> (PNG, segments_info)
    images: list[dict[str, Any]]  # the file's COCO image entries ({"id", "file_name", "width", "height"})

    @property
    def things(self) -> set[int]:
        return {c["id"] for c in self.categories if c.get("isthing", 1)}

    @property
    def stuffs(self) -> set[int]:
        return {c["id"] for c in self.categories if not c.get("isthing", 1)}

    def segment_map(self, file_name: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(H, W) int64 segment ids of an image and its segments_info, the PNG's ids checked against
        the JSON (an id the JSON does not list raises :class:`DatasetError` naming the PNG)."""
        png, segments = self.segments[file_name]
        try:
            ids = read_panoptic_ids(str(png))
        except DatasetError:
            raise DatasetError(f"{png} not found: {self.path.name} lists it for {file_name}") from None
        unknown = sorted(set(np.unique(ids).tolist()) - {0} - {s["id"] for s in segments})
        if unknown:
            raise DatasetError(
                f"{png} holds segment ids {unknown[:10]} that {self.path.name} does not list for {file_name}: "
                "the PNG and the JSON do not belong together"
            )
        return ids, segments


def find_panoptic(root: str | Path, split: str) -> tuple[Path, Path] | None:
    """(JSON, PNG folder) of a split's panoptic annotations under ``root`` (see the module), else None."""
    root = Path(root)
    for base in (root / "annotations", root):
        for name in (f"panoptic_{split}", f"panoptic_{split}2017"):
            if (base / f"{name}.json").is_file():
                return base / f"{name}.json", base / name
    return None


def read_panoptic(path: str | Path, png_dir: str | Path) -> PanopticAnnotations:
    """Read a COCO panoptic JSON (its PNGs in ``png_dir``) with checks that name the file at fault."""
    path, png_dir = Path(path), Path(png_dir)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DatasetError(f"{path} is not a COCO panoptic file: it needs lists 'images', 'annotations', 'categories'")
    categories = {int(c["id"]): c for c in data["categories"]}
    files = {int(i["id"]): str(i["file_name"]) for i in data["images"]}
    segments: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
    for ann in data["annotations"]:
        image_id = int(ann.get("image_id", -1))
        if image_id not in files:
            raise DatasetError(f"{path}: an annotation refers to image id {image_id}, which is not in 'images'")
        infos = ann.get("segments_info", [])
        for info in infos:
            if int(info.get("category_id", -1)) not in categories:
                raise DatasetError(
                    f"{path}: segment {info.get('id')} of {ann.get('file_name')} has category "
                    f"{info.get('category_id')}, which is not in 'categories'"
                )
        segments[files[image_id]] = (png_dir / str(ann["file_name"]), infos)
    return PanopticAnnotations(path, png_dir, list(categories.values()), segments, list(data["images"]))


def panoptic_as_coco(annotations: PanopticAnnotations) -> dict[str, Any]:
    """The panoptic segments as a COCO detection dictionary: one object per segment, thing or stuff (as
    panoptic DETR trains), with its box and a ``segmentation`` that points into its PNG (decoded when
    the image is loaded, :func:`detr.data.coco.decode_segmentation`)."""
    images = annotations.images
    objects = []
    for image in images:
        if image["file_name"] not in annotations.segments:
            continue
        png, segments = annotations.segments[image["file_name"]]
        for segment in segments:
            if segment.get("iscrowd", 0):
                continue  # crowd regions are no objects to detect (panopticapi leaves them out of PQ too)
            objects.append(
                {
                    "id": len(objects) + 1,
                    "image_id": image["id"],
                    "category_id": int(segment["category_id"]),
                    "bbox": [float(v) for v in segment["bbox"]],
                    "area": float(segment.get("area", 0)),
                    "iscrowd": 0,
                    "segmentation": {"panoptic_png": str(png), "id": int(segment["id"])},
                }
            )
    return {"images": images, "annotations": objects, "categories": annotations.categories}
