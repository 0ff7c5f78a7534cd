"""Datasets in the formats people publish and export, each read into the COCO dictionary the rest of the library
reads (images with their sizes, annotations in pixel ``[x, y, w, h]``, categories with ids and names), so that
every check, label map, evaluation and conversion works the same on all of them.

One module per format, each with the same two functions: ``detect(root) -> bool`` (is the folder or file at
``root`` in this format?) and ``read(root) -> Found`` (its splits, each a reader of a COCO dictionary).
:func:`recognise` asks them in turn; :func:`format_split` gives one split, made by a hash of the file names
where the dataset has no validation split of its own. COCO itself is read by :mod:`detr.data.coco`.

========================  ==========================================================================================
module                    format
========================  ==========================================================================================
:mod:`.yolo`              Ultralytics YOLO (``data.yaml``, ``images/`` beside ``labels/``; Roboflow's per-split folders)
:mod:`.labelimg_yolo`     LabelImg's YOLO mode (a ``.txt`` beside each image, ``classes.txt`` in the same folder)
:mod:`.voc`               Pascal VOC XML in any folder shape (VOCdevkit, LabelImg, Roboflow VOC)
:mod:`.cvat`              CVAT for images 1.1 XML (boxes, polygons)
:mod:`.label_studio`      Label Studio JSON export (rectangle and polygon labels, in percent)
:mod:`.label_studio_min`  Label Studio JSON-MIN export (one record per annotation, its regions in percent)
:mod:`.createml`          Apple CreateML JSON (centre-based boxes; Roboflow's ``_annotations.createml.json``)
:mod:`.labelme`           LabelMe JSON, one file per image (rectangles, polygons)
:mod:`.csv_boxes`         CSV box tables (TensorFlow Object Detection / Roboflow CSV, header-named columns)
:mod:`.mask_png`          instance masks as PNGs (Penn-Fudan: each object a value, 0 background)
========================  ==========================================================================================
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from . import createml, csv_boxes, cvat, label_studio, label_studio_min, labelimg_yolo, labelme, mask_png, voc, yolo
from .common import IMAGE_SUFFIXES, SPLIT_NAMES, DatasetError, Found, Reader, hashed_part
from .voc import VOC_ALIASES, voc_root
from .yolo import YOLO_ALIASES, label_file, read_yolo, yolo_config, yolo_split_images

__all__ = [
    "IMAGE_SUFFIXES",
    "READERS",
    "VOC_ALIASES",
    "YOLO_ALIASES",
    "DatasetError",
    "Found",
    "Reader",
    "format_split",
    "label_file",
    "read_yolo",
    "recognise",
    "voc_root",
    "yolo_config",
    "yolo_split_images",
]

# asked in this order: the first whose detect says yes reads the dataset
READERS: tuple[ModuleType, ...] = (
    yolo,
    voc,
    cvat,
    label_studio,
    label_studio_min,
    createml,
    labelme,
    labelimg_yolo,
    csv_boxes,
    mask_png,
)
KNOWN = (
    "a YOLO dataset (data.yaml, images/ beside labels/, or LabelImg's .txt beside each image with classes.txt), "
    "Pascal VOC XML files, a CVAT for images 1.1 XML file, a Label Studio JSON or JSON-MIN export, CreateML JSON, "
    "LabelMe JSON files, a CSV box table "
    "(filename,width,height,class,xmin,ymin,xmax,ymax), or images/ beside masks/ of instance-id PNGs"
)


def recognise(root: str | Path) -> Found | None:
    """The dataset at ``root`` (a folder, or one annotation file) read by the first reader that recognises it,
    or None when none does (it may be COCO)."""
    root = Path(root)
    if not root.exists():
        return None
    for reader in READERS:
        if reader.detect(root):
            return reader.read(root)
    return None


def format_split(found: Found, split: str, val_fraction: float = 0.1) -> tuple[Reader, str]:
    """The reader of ``split`` of ``found`` and a note on where it comes from ("" for the dataset's own split).

    Where the dataset has no validation split, ``train`` and ``val`` are its training images (or all of them,
    without a split) divided by a hash of each file name (:func:`~.common.in_validation`): ``val_fraction`` of them
    for validation, the same images every time and on every machine."""
    name = SPLIT_NAMES.get(split, split)
    base = found.splits.get("train") or found.splits.get("all")
    if name in ("train", "val") and "val" not in found.splits and base is not None:
        if not 0 < val_fraction < 1:
            raise ValueError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        whole = "training images" if "train" in found.splits else "images"
        note = f"split made here: {val_fraction:g} of the {whole} by a hash of their file names (--val-fraction)"
        return (lambda: hashed_part(base(), name, val_fraction)), note
    if name in found.splits:
        return found.splits[name], ""
    if found.splits:
        raise FileNotFoundError(
            f"no {split!r} split in {found.source} (read as {found.format}: it has {', '.join(found.splits)}); "
            "give one of those as the split"
        )
    raise FileNotFoundError(
        f"{found.source} looks like {found.format} but no images were found in it: add the images and labels that "
        f"format expects, or give a dataset of another layout. Known layouts: {KNOWN}"
    )
