"""What every format reader shares: the image files of a dataset found by name, the objects a reader found
turned into the COCO dictionary the library reads, the problems met on the way, and the split made by a
hash of the file names where a dataset has none.

A reader (one module per format, see :mod:`detr.data.formats`) gives each image's :class:`Labelled`: the
image's name as its annotation writes it, where it was written (file and line or element) and its objects as
pixel ``xyxy`` boxes. :func:`build` finds the images, checks every box and returns one COCO dictionary per
split (categories with ids from 1, images with their own sizes, annotations in pixel ``[x, y, w, h]``) with
the problems listed under ``"problems"`` (strings that start with the file they are about).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# a split's folder or file names, as the tools write them -> the library's split names
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
Reader = Callable[[], dict[str, Any]]


class DatasetError(ValueError):
    """Bad data: the message names the file and what is wrong with it."""


def refusal(format: str, where: Path | str, what: str, change: str) -> DatasetError:
    """The error of a file the reader cannot use: the format it was read as, the file, what is wrong, what to change."""
    return DatasetError(f"{where} (read as {format}): {what}; {change}")


@dataclass
class Box:
    """One object: its class name, its box in pixels ``(x0, y0, x1, y1)`` and where the annotation wrote it;
    ``segmentation``: its COCO mask (polygons ``[[x0, y0, x1, y1, ...]]`` in pixels, or RLE), if it has one."""

    name: str
    xyxy: tuple[float, float, float, float]
    where: str
    segmentation: Any = None
    crowd: int = 0


@dataclass
class Labelled:
    """One image's annotation: the image's file name (or path) as written, where (file, element), its objects,
    and the image size it declares ``(width, height)``, if any (the image's own size wins)."""

    image: str
    where: str
    boxes: list[Box] = field(default_factory=list)
    size: tuple[int, int] | None = None
    folder: Path | None = None  # the annotation file's folder: an image of that name there is the one meant


@dataclass
class Found:
    """A dataset a reader recognised: its format, the file or folder that told it, and its splits as readers of
    COCO dictionaries (``{"all": ...}`` when the dataset has no split of its own)."""

    format: str
    source: Path
    image_root: Path
    splits: dict[str, Reader]
    split_roots: dict[str, Path] = field(default_factory=dict)  # a split's own image folder, where not image_root

    def root_of(self, split: str) -> Path:
        return self.split_roots.get(split, self.image_root)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header, or an error naming the file."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"cannot read image {path}: {err} (corrupt or not an image?)") from err


def numbered_id(path: Path, index: int, used: set[int]) -> int:
    """The image's number when its name is one (COCO's files keep their ids), else its position."""
    stem = path.stem.replace("_", "")
    image_id = int(stem) if stem.isdigit() else index + 1
    return image_id if image_id not in used else max(used) + 1


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def split_name(name: str, words: bool = False) -> str | None:
    """The split a folder name says (``valid`` -> ``val``), or with ``words`` a file stem (``train_labels`` ->
    ``train``), or None."""
    lowered = name.lower()
    if lowered in SPLIT_NAMES or not words:
        return SPLIT_NAMES.get(lowered)
    for word in lowered.replace("-", "_").split("_"):
        if word in SPLIT_NAMES:
            return SPLIT_NAMES[word]
    return None


def folder_split(path: Path, base: Path) -> str:
    """The split of an annotation file by the folders between ``base`` and it (``train/``, ``valid/``), else ``all``."""
    return next((s for part in path.relative_to(base).parts[:-1] if (s := split_name(part))), None) or "all"


def root_tag(xml: Path) -> str:
    """The name of an XML file's root element ("" when it is not XML), read without parsing the rest."""
    import xml.etree.ElementTree as ET

    try:
        for _, element in ET.iterparse(xml, events=("start",)):
            return element.tag
    except ET.ParseError:
        return ""
    return ""


def _hash_share(file_name: str) -> float:
    """Where a file name falls in [0, 1): its SHA-256, the same on every machine and in every run."""
    return int.from_bytes(hashlib.sha256(Path(file_name).name.encode()).digest()[:8], "big") / 2**64


def in_validation(file_name: str, fraction: float) -> bool:
    """Whether an image of this file name is in the validation part of a split made by hashing the file name:
    each file's side depends on its name alone, so adding images moves no other image."""
    return _hash_share(file_name) < fraction


def hashed_part(coco: dict[str, Any], part: str, fraction: float) -> dict[str, Any]:
    """The ``part`` ("train" or "val") of ``coco``'s images by :func:`in_validation`, with their annotations. A
    dataset so small that no image falls under ``fraction`` validates on its one lowest-hashed image (of 2 or more)."""
    shares = {img["file_name"]: _hash_share(img["file_name"]) for img in coco["images"]}
    val = {name for name, share in shares.items() if share < fraction}
    if not val and len(shares) >= 2:
        val = {min(shares, key=shares.__getitem__)}
    images = [img for img in coco["images"] if (img["file_name"] in val) == (part == "val")]
    ids = {img["id"] for img in images}
    return {
        **coco,
        "images": images,
        "annotations": [a for a in coco["annotations"] if a["image_id"] in ids],
    }


class ImageIndex:
    """A dataset's image files, found by the name an annotation gives (with or without its extension): its relative
    path from the dataset root, else the file of that name beside the annotation, else the one file of that name
    anywhere in the dataset. Never an absolute path from the annotator's machine."""

    def __init__(self, root: Path, files: list[Path] | None = None) -> None:
        self.root = root
        self.files = image_files(root) if files is None else files
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for path in self.files:
            self.by_name.setdefault(path.name, []).append(path)
            self.by_stem.setdefault(path.stem, []).append(path)

    def find(self, name: str, folder: Path | None) -> tuple[Path | None, list[Path]]:
        """The image ``name`` refers to (None when not found), and every file of that name (several: duplicated)."""
        written = Path(name.replace("\\", "/"))
        same = self.by_name.get(written.name, [])
        if not same and written.suffix.lower() not in IMAGE_SUFFIXES:  # a name written without its extension
            same = self.by_stem.get(written.name, [])
            written = written.with_name(same[0].name) if len(same) == 1 else written
        if not written.is_absolute() and ".." not in written.parts:
            for base in ([folder] if folder is not None else []) + [self.root]:
                if (base / written) in same:
                    return base / written, same
        if folder is not None and folder / written.name in same:
            return folder / written.name, same
        return (same[0] if len(same) == 1 else None), same


def build(
    format: str,
    index: ImageIndex,
    splits: dict[str, list[Labelled]],
    classes: list[str] | None = None,
    problems: list[str] | None = None,
    report_unlabelled: bool = True,
) -> dict[str, dict[str, Any]]:
    """One COCO dictionary per split of the images ``splits`` annotate (file names relative to ``index.root``).

    ``classes``: the class names the tool declares, in its order (a box of another class is reported and
    left out); None: the names found, sorted. Reported, each with its file and element, in every split's
    ``"problems"``: an annotation whose image is missing (left out), a file name found twice in the dataset
    or annotated twice (the first kept), a declared size that is not the image's (the image's wins), boxes of
    zero size (left out) or reaching outside the image (clipped in training; left out when nothing is inside), and
    images that no annotation names (left out: their split is unknown).
    """
    problems = list(problems or [])
    names = (
        classes if classes is not None else sorted({b.name for ls in splits.values() for lab in ls for b in lab.boxes})
    )
    category = {name: i + 1 for i, name in enumerate(names)}
    resolved: dict[str, list[tuple[Path, Labelled]]] = {}
    seen: dict[Path, str] = {}
    for split, labelled in splits.items():
        for lab in labelled:
            path, same = index.find(lab.image, lab.folder)
            if path is None and len(same) > 1:
                problems.append(
                    f"{lab.where}: duplicated file name: {lab.image} is {len(same)} files "
                    f"({', '.join(str(p.relative_to(index.root)) for p in same[:3])}); left out, rename them apart"
                )
                continue
            if path is None:
                problems.append(f"{lab.where}: label for a missing image: no {Path(lab.image).name} in {index.root}")
                continue
            if path in seen:
                problems.append(f"{lab.where}: duplicated file name: {lab.image} is annotated before, in {seen[path]}; "
                                "this one is left out")  # fmt: skip
                continue
            seen[path] = lab.where
            resolved.setdefault(split, []).append((path, lab))
    if report_unlabelled:
        for path in index.files:
            if path not in seen:
                problems.append(f"{path}: image without labels: no annotation names it; left out")
    out = {}
    for split in splits:
        coco: dict[str, Any] = {
            "images": [],
            "annotations": [],
            "categories": [{"id": i, "name": n} for n, i in category.items()],
            "problems": problems,
        }
        used: set[int] = set()
        for position, (path, lab) in enumerate(resolved.get(split, [])):
            width, height = image_size(path)
            if lab.size is not None and tuple(lab.size) != (width, height):
                problems.append(
                    f"{lab.where}: declares the image {lab.size[0]}x{lab.size[1]} but {path.name} is {width}x{height}; "
                    "the image's size is used"
                )
            image_id = numbered_id(path, position, used)  # the file's number, else its place in the split
            used.add(image_id)
            coco["images"].append(
                {"id": image_id, "file_name": path.relative_to(index.root).as_posix(), "width": width, "height": height}
            )
            for box in lab.boxes:
                ann = _annotation(box, category, width, height, problems)
                if ann is not None:
                    coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, **ann})
        out[split] = coco
    return out


def _annotation(
    box: Box, category: dict[str, int], width: int, height: int, problems: list[str]
) -> dict[str, Any] | None:
    if box.name not in category:
        problems.append(f"{box.where}: unknown class {box.name!r} (declared: {', '.join(category)}); left out")
        return None
    x0, y0, x1, y1 = box.xyxy
    if x1 <= x0 or y1 <= y0:
        problems.append(f"{box.where}: box {list(box.xyxy)} has zero size; left out")
        return None
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if cx1 <= cx0 or cy1 <= cy0:
        problems.append(f"{box.where}: box {list(box.xyxy)} lies outside the image ({width}x{height}); left out")
        return None
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):  # kept as written (a conversion keeps it); training clips it
        problems.append(f"{box.where}: box {list(box.xyxy)} reaches outside the image ({width}x{height}); clipped")
    ann = {
        "category_id": category[box.name],
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": (x1 - x0) * (y1 - y0),
        "iscrowd": box.crowd,
    }
    if box.segmentation is not None:
        ann["segmentation"] = box.segmentation
    return ann


def once(read: Callable[[], dict[str, dict[str, Any]]]) -> Callable[[], dict[str, dict[str, Any]]]:
    """``read``, run at most once (its splits are read together)."""
    cache: list[dict[str, dict[str, Any]]] = []

    def wrapped() -> dict[str, dict[str, Any]]:
        if not cache:
            cache.append(read())
        return cache[0]

    return wrapped


def found(format: str, source: Path, image_root: Path, split_names: list[str], read: Callable[[], dict]) -> Found:
    """A :class:`Found` whose splits come from one ``read`` of the whole dataset (``split -> COCO``)."""
    read = once(read)
    return Found(format, source, image_root, {s: (lambda s=s: read()[s]) for s in split_names})


# header names of the column that names the image, in the box tables people write
FILE_COLUMNS = ("filename", "file_name", "file", "image", "image_name", "image_path", "image_id", "img", "path", "name")


def split_lists(root: Path) -> dict[str, Path]:
    """Files beside a dataset that list a split's images: ``<split>*.csv`` or ``<split>*.txt`` (``train_labels.csv``,
    ``test.txt``) at the root or one folder down, by split."""
    found: dict[str, Path] = {}
    for path in sorted([*root.glob("*"), *root.glob("*/*")]):
        if path.suffix.lower() in (".csv", ".txt") and path.is_file() and (split := split_name(path.stem, words=True)):
            found.setdefault(split, path)
    return found


def _listed_names(path: Path) -> set[str]:
    import csv

    lines = path.read_text(errors="replace").splitlines()
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(lines))
        header = [h.strip().lower() for h in rows[0]] if rows else []
        column = next((header.index(c) for c in FILE_COLUMNS if c in header), 0)
        names = [row[column] for row in rows[1:] if len(row) > column]
    else:
        names = [line.split()[0] for line in lines if line.strip()]
    return {n for name in names for n in (Path(name).name, Path(name).stem)}


def listed_splits(root: Path, labelled: list[Labelled], names_only: bool = False) -> dict[str, list[Labelled]]:
    """``labelled`` divided by the split lists beside the data (:func:`split_lists`); images no list names go to a
    split ``unlisted`` (shown by check-data, not trained on). Empty where there are no lists."""
    lists = split_lists(root)
    if names_only or not lists:
        return {split: [] for split in lists}
    names = {split: _listed_names(path) for split, path in lists.items()}
    out: dict[str, list[Labelled]] = {split: [] for split in lists}
    for lab in labelled:
        image = Path(lab.image.replace("\\", "/"))
        split = next((s for s, listed in names.items() if image.name in listed or image.stem in listed), "unlisted")
        out.setdefault(split, []).append(lab)
    return out
