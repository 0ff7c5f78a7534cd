"""COCO-format detection datasets, in either of the two common folder layouts.

- COCO layout: ``annotations/instances_<split>*.json`` beside image folders (``train2017/``,
  ``val2017/``, or a folder named after the split);
- per-split layout (Roboflow and others): ``<split>/_annotations.coco.json`` beside that
  split's images, splits ``train``, ``valid`` or ``val``, ``test``.

Category ids are mapped to contiguous class ids ``0..K-1`` (sorted by id), and those to a model's
classes by :mod:`detr.data.labels`. Crowd boxes are ignored, boxes are clipped to the image,
degenerate boxes are dropped and counted, and annotations of an undeclared category are skipped
with a warning that names the file (as the reference code does). Anything else that is wrong
raises an error naming the file.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..processing.preprocess import load_image
from .formats import KNOWN, DatasetError, Reader, format_split, recognise
from .formats.common import split_name
from .labels import CategoryMatch, match_categories

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass
class CocoSplit:
    """Where one split lives: its annotation file and the folders its images may be in, most likely
    first (see :meth:`image_folder`). A split of another format (:mod:`detr.data.formats`) has a
    ``read`` that gives its COCO dictionary, and ``annotation_file`` names its source."""

    annotation_file: Path
    image_dirs: list[Path]
    read: Reader | None = None
    format: str = "coco"
    note: str = ""  # where the split comes from, when the library made it (a hash split)

    def image_folder(self, files: list[str]) -> Path:
        """The first candidate folder holding any of ``files`` (a sample of the split's images), else the
        first that exists (missing images are then reported by name), else an error."""
        candidates = list(dict.fromkeys(self.image_dirs))
        for folder in candidates:
            if any((folder / name).is_file() for name in files):
                return folder
        existing = [folder for folder in candidates if folder.is_dir()]
        if existing:
            return existing[0]
        tried = ", ".join(str(c) for c in candidates)
        raise DatasetError(
            f"the image folder of {self.annotation_file} is not found (tried {tried}); give it with --images DIR"
        )


def annotation_file_split(annotation_file: str | Path, images: str | Path | None = None) -> CocoSplit:
    """A split given by its annotation file; its images in ``images``, else next to it (or its folder's parent,
    or an ``images`` folder there)."""
    ann = Path(annotation_file)
    if not ann.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann}")
    stem = ann.stem.removeprefix("instances_")
    parent = ann.parent.parent
    found = [ann.parent, parent / stem, parent / "images" / stem, parent / "images", parent]
    return CocoSplit(ann, [Path(images)] if images else found)


def find_split(root: str | Path, split: str, images: str | Path | None = None, val_fraction: float = 0.1) -> CocoSplit:
    """Locate ``split`` (train / val / test) of the dataset at ``root``: a COCO annotation file itself,
    or a folder in the COCO layout (``annotations/instances_<split>*.json`` or ``annotations/<split>.json``)
    or the per-split layout (``<split>/_annotations.coco.json``), or a dataset of another format
    (:mod:`detr.data.formats`; without a validation split of its own, ``val_fraction`` of its images by a hash of
    their file names). ``images`` overrides where the images are."""
    root = Path(root)
    found = None if _is_coco(root) else recognise(root)
    if found is not None:
        read, note = format_split(found, split, val_fraction)
        folder = Path(images) if images else found.root_of(SPLIT_ALIASES.get(split, (split,))[0])
        return CocoSplit(found.source, [folder], read=read, format=found.format, note=note)
    if root.is_file():
        return annotation_file_split(root, images)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    aliases = SPLIT_ALIASES.get(split, (split,))
    for alias in aliases:  # per-split layout
        ann = root / alias / "_annotations.coco.json"
        if ann.is_file():
            return CocoSplit(ann, [Path(images)] if images else [root / alias])
    ann_dir = root / "annotations"
    for alias in aliases:  # COCO layout, and the names other tools give its files
        for ann in sorted(ann_dir.glob(f"instances_{alias}*.json")) + sorted(ann_dir.glob(f"{alias}.json")):
            stem = ann.stem.removeprefix("instances_")  # e.g. val2017
            folders = [root / stem, root / alias, root / "images" / stem, root / "images" / alias, root / "images"]
            return CocoSplit(ann, [Path(images)] if images else folders)
    raise FileNotFoundError(
        f"no {split!r} split in {root}. Known layouts: annotations/instances_{aliases[0]}*.json or "
        f"annotations/{aliases[0]}.json beside the image folder (COCO), {aliases[0]}/_annotations.coco.json "
        "beside the images (one folder per split), one COCO annotation file given as --data (or "
        f"--{split}-annotations FILE), {KNOWN}"
    )


def _is_coco(root: Path) -> bool:
    """Whether ``root`` is COCO: a JSON object that is not a LabelMe file, or a folder in either COCO layout."""
    if root.is_file():
        if root.suffix.lower() != ".json":
            return False
        with root.open(errors="replace") as f:
            head = f.read(4096)
        return head.lstrip().startswith("{") and '"shapes"' not in head
    annotations = root / "annotations"
    return any(root.glob("*/_annotations.coco.json")) or any(
        split_name(p.stem.removeprefix("instances_").rstrip("0123456789")) for p in annotations.glob("*.json")
    )


@dataclass
class CocoAnnotations:
    """A parsed, checked COCO annotation file."""

    path: Path
    images: list[dict[str, Any]]
    boxes: dict[int, list[tuple[list[float], int]]]  # image id -> [(xyxy clipped, class id)]
    category_ids: list[int]  # class id -> COCO category id
    category_names: list[str]  # class id -> name
    dropped_degenerate: int = 0
    ignored_crowd: int = 0
    skipped_undeclared: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    # image id -> each box's COCO "segmentation" (polygons or RLE; None where it has none), in ``boxes``' order
    segmentations: dict[int, list[Any]] = field(default_factory=dict, repr=False)

    @property
    def class_names(self) -> list[str]:
        return self.category_names


def load_coco_annotations(path: str | Path, data: dict[str, Any] | None = None) -> CocoAnnotations:
    """Read and check a COCO detection annotation file (or, given, its ``data``: a dataset of another
    format read as COCO, see :mod:`detr.data.formats`; ``path`` then names its source in messages)."""
    path = Path(path)
    if data is None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DatasetError(
            f"{path} is not a COCO detection file: it needs lists 'images', 'annotations' and 'categories'"
        )
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
        images = [
            {"id": int(i["id"]), "file_name": str(i["file_name"]), "width": int(i["width"]), "height": int(i["height"])}
            for i in data["images"]
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{path}: every category needs 'id' and 'name', every image 'id', 'file_name', 'width', 'height' ({err!r})"
        ) from err
    if not categories:
        raise DatasetError(f"{path} declares no categories")
    for what, key, ids in (
        ("image", "images", [img["id"] for img in images]),
        ("category", "categories", [c for c, _ in categories]),
    ):
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            raise DatasetError(
                f"{path}: {what} id(s) {repeated[:10]} appear more than once in '{key}'; each {what} needs its own "
                "id (annotations would be mixed between them)"
            )
    class_of = {cat_id: i for i, (cat_id, _) in enumerate(categories)}
    by_id = {img["id"]: img for img in images}
    boxes: dict[int, list[tuple[list[float], int]]] = {img["id"]: [] for img in images}
    segmentations: dict[int, list[Any]] = {}
    dropped = crowd = 0
    undeclared: dict[int, int] = {}  # category id -> annotations
    for ann in data["annotations"]:
        try:
            image_id, cat_id = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(
                f"{path}: annotation {ann.get('id', '?')} needs 'image_id', 'category_id' and 'bbox' [x, y, w, h] ({err!r})"
            ) from err
        if image_id not in by_id:
            raise DatasetError(
                f"{path}: annotation {ann.get('id', '?')} refers to image id {image_id}, which is not in 'images'"
            )
        if cat_id not in class_of:
            undeclared[cat_id] = undeclared.get(cat_id, 0) + 1
            continue
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        img = by_id[image_id]
        if w <= 0 or h <= 0:
            dropped += 1
            continue
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(img["width"])), min(y + h, float(img["height"]))
        if x1 <= x0 or y1 <= y0:
            raise DatasetError(
                f"{path}: annotation {ann.get('id', '?')} box [x, y, w, h] = {[x, y, w, h]} lies outside its image "
                f"{img['file_name']} ({img['width']}x{img['height']}); is it in another format than COCO's pixel xywh?"
            )
        boxes[image_id].append(([x0, y0, x1, y1], class_of[cat_id]))
        segmentations.setdefault(image_id, []).append(_checked_segmentation(ann, img, path))
    if dropped:
        log.warning("%s: dropped %d degenerate boxes (zero width or height)", path, dropped)
    if undeclared:
        log.warning(
            "%s: skipped %d annotations of categories not declared in 'categories' (ids %s; declared: %s)",
            path,
            sum(undeclared.values()),
            sorted(undeclared),
            [c for c, _ in categories],
        )
    return CocoAnnotations(
        path=path,
        images=images,
        boxes=boxes,
        category_ids=[c for c, _ in categories],
        category_names=[n for _, n in categories],
        dropped_degenerate=dropped,
        ignored_crowd=crowd,
        skipped_undeclared=sum(undeclared.values()),
        raw=data,
        segmentations=segmentations,
    )


def _checked_segmentation(ann: dict[str, Any], image: dict[str, Any], path: Path) -> Any:
    """An annotation's COCO ``segmentation`` (polygons [[x0, y0, x1, y1, ...], ...] or RLE {"size", "counts"}),
    checked enough that decoding it cannot fail or mislead; None when it has none."""
    segmentation = ann.get("segmentation")
    where = f"{path}: annotation {ann.get('id', '?')} (image {image['file_name']})"
    if segmentation is None or segmentation == []:
        return None
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                points = len(polygon) / 2 if isinstance(polygon, list) else "no"
                raise DatasetError(
                    f"{where} has a polygon with {points} points: a polygon is a flat list [x0, y0, x1, y1, ...] "
                    "of at least 3 points"
                )
        return segmentation
    if isinstance(segmentation, dict) and "panoptic_png" in segmentation:  # a segment of a panoptic PNG
        return segmentation
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [image["height"], image["width"]]:
            raise DatasetError(
                f"{where} has an RLE mask of size {segmentation['size']} but the image is "
                f"{image['height']}x{image['width']} (RLE sizes are [height, width])"
            )
        return segmentation
    raise DatasetError(f"{where} has a 'segmentation' that is neither polygons nor RLE {{'size', 'counts'}}")


def read_panoptic_ids(png: str) -> np.ndarray:
    """(H, W) int64 segment ids of a COCO panoptic PNG (``id = R + 256 G + 256^2 B``, 0 unlabeled)."""
    from ..processing.mask_postprocess import rgb_to_id

    try:
        with Image.open(png) as image:
            return rgb_to_id(image.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"panoptic PNG not found: {png}") from None


# loading an image decodes each of its segments from one PNG: read it once for all of them
_panoptic_ids_of_image = functools.lru_cache(maxsize=8)(read_panoptic_ids)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, compressed or uncompressed RLE) -> (height, width) bool, via pycocotools."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, dict) and "panoptic_png" in segmentation:
        ids = _panoptic_ids_of_image(segmentation["panoptic_png"])
        if ids.shape != (height, width):
            raise DatasetError(
                f"{segmentation['panoptic_png']} is {ids.shape[1]}x{ids.shape[0]}, its image {width}x{height}"
            )
        return ids == segmentation["id"]
    if isinstance(segmentation, list):  # polygons: one RLE each, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = (
            dict(segmentation, counts=segmentation["counts"].encode("ascii"))
            if isinstance(segmentation["counts"], str)
            else segmentation
        )
    return mask_utils.decode(rle).astype(bool)


def read_image(path: Path, exif: bool = False) -> Image.Image:
    """:func:`~detr.processing.preprocess.load_image` (an 8-bit RGB PIL image) with its errors as
    :class:`DatasetError`, which names the file. ``exif``: turn the image as its EXIF orientation says (photos),
    as ``detr predict`` does; datasets keep the stored orientation, which their annotations refer to.
    """
    try:
        return load_image(path, exif=exif)
    except (FileNotFoundError, ValueError) as err:
        raise DatasetError(str(err)) from err


class CocoDetection(Dataset):
    """One split of a COCO-format dataset.

    ``dataset[i]`` is ``(image, target)``: the image as a ``tv_tensors.Image`` (3, H, W) uint8,
    the target a dict with ``boxes`` (``tv_tensors.BoundingBoxes``, xyxy pixels), ``labels``
    (N,) int64 class ids, ``image_id`` and ``orig_size`` (height, width), all passed through
    ``transforms`` (a ``torchvision.transforms.v2`` callable) when given; with ``masks`` also
    ``masks`` (``tv_tensors.Mask`` (N, H, W) bool, each box's COCO segmentation decoded by pycocotools).

    Class ids are the dataset's own (its categories sorted by id, from 0), or a model's when
    ``class_map`` (dataset class id -> model class id, see :func:`detr.data.labels.match_categories`)
    is set.
    """

    def __init__(
        self,
        root: str | Path | CocoSplit,
        split: str = "train",
        transforms: Any = None,
        images: str | Path | None = None,
        masks: bool = False,
    ) -> None:
        where = root if isinstance(root, CocoSplit) else find_split(root, split, images)
        data = where.read() if where.read is not None else None
        self.annotations = load_coco_annotations(where.annotation_file, data)
        self.format = where.format
        self.split_note = where.note  # where the split comes from, when the library made it
        # what the format's reader found wrong (each naming its file and element), for detr check-data
        self.problems: list[str] = list((data or {}).get("problems", []))
        if self.problems:
            log.warning(
                "%s (%s): %d problems in the annotations, e.g. %s; detr check-data lists them all",
                where.annotation_file, self.format, len(self.problems), self.problems[0],
            )  # fmt: skip
        self.images = self.annotations.images
        self.image_dir = where.image_folder([info["file_name"] for info in self.images[:10]])
        self.annotation_file = where.annotation_file
        self.transforms = transforms
        self.class_map: list[int] | None = None
        self.masks = masks
        if masks:
            self._check_every_box_has_a_mask()

    def _check_every_box_has_a_mask(self) -> None:
        lacking = [
            (image_id, len(segs) - sum(s is not None for s in segs))
            for image_id, segs in self.annotations.segmentations.items()
            if any(s is None for s in segs)
        ]
        if lacking:
            count = sum(n for _, n in lacking)
            raise DatasetError(
                f"{self.annotation_file}: {count} annotations (in images {[i for i, _ in lacking[:5]]} ...) have no "
                "'segmentation'; training masks needs one per object (polygons or RLE), or train boxes only"
            )

    @property
    def class_names(self) -> list[str]:
        return self.annotations.category_names

    @property
    def category_ids(self) -> list[int]:
        return self.annotations.category_ids

    @property
    def categories(self) -> list[tuple[int, str]]:
        """(category id, name) of every declared category, sorted by id."""
        return list(zip(self.category_ids, self.class_names))

    def match_model(self, model: Any) -> CategoryMatch:
        """Label the targets with ``model``'s class ids from now on (matched by category id, else by
        name, see :mod:`detr.data.labels`); returns the match, whose ``category_of`` maps predictions back."""
        match = match_categories(
            model.num_classes,
            model.class_names,
            getattr(model, "category_ids", None),
            self.categories,
            source=str(self.annotation_file),
        )
        self.class_map = match.class_of
        return match

    def __len__(self) -> int:
        return len(self.images)

    def check_images(self, limit: int = 20) -> None:
        """Check that every image file exists and opens as an image (headers only: fast), and report all
        the bad ones at once, by path; raises :class:`DatasetError`."""
        bad = []
        for info in self.images:
            path = self.image_dir / info["file_name"]
            try:
                with Image.open(path) as img:
                    img.size  # the header is read: enough to know it is an image
            except FileNotFoundError:
                bad.append(f"{path} (missing)")
            except (UnidentifiedImageError, OSError, SyntaxError) as err:
                bad.append(f"{path} ({err})")
        if bad:
            shown = "\n  ".join(bad[:limit]) + (f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else "")
            raise DatasetError(
                f"{len(bad)} of the {len(self.images)} images of {self.annotation_file} cannot be read:\n  {shown}"
            )

    def image_path(self, image_id: int) -> Path:
        """The file of the image with id ``image_id``."""
        if not hasattr(self, "_files"):
            self._files = {img["id"]: img["file_name"] for img in self.images}
        return self.image_dir / self._files[image_id]

    def load(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        pil = read_image(path)
        if (pil.height, pil.width) != (info["height"], info["width"]):
            raise DatasetError(
                f"{path} is {pil.width}x{pil.height} but {self.annotation_file.name} says "
                f"{info['width']}x{info['height']}"
            )
        image = tv_tensors.Image(TF.pil_to_tensor(pil))  # (3, H, W) uint8
        entries = self.annotations.boxes[info["id"]]
        boxes = torch.tensor([b for b, _ in entries], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(info["height"], info["width"])),
            "labels": torch.tensor(
                [c if self.class_map is None else self.class_map[c] for _, c in entries], dtype=torch.int64
            ),
            "image_id": info["id"],
            "orig_size": torch.tensor([info["height"], info["width"]]),
        }
        if self.masks:
            segmentations = self.annotations.segmentations.get(info["id"], [])
            masks = [decode_segmentation(seg, info["height"], info["width"]) for seg in segmentations]
            stacked = (
                torch.from_numpy(np.stack(masks))
                if masks
                else torch.zeros(0, info["height"], info["width"], dtype=torch.bool)
            )
            target["masks"] = tv_tensors.Mask(stacked)  # (N, H, W) bool, resized and cropped with the image
        return image, target

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.load(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
