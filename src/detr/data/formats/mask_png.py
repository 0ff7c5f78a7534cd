"""Instance masks as PNGs (the Penn-Fudan layout): a folder of images and a folder of masks whose name says so
(``masks/``, ``PedMasks/``, ``SegmentationObject/``...), one PNG per image (``FudanPed00001_mask.png`` for
``FudanPed00001.png``: the same name, or with ``_mask`` after it), each object a distinct pixel value, 0 the
background.

Each value becomes an object: its box (the pixels' extent) and its mask. One class: the name in ``classes.txt``
at the root, if the user writes one, else ``object``. No split (one is made by a hash of the file names).
Ignored: which value an object has (only that it differs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .common import Box, DatasetError, Found, ImageIndex, Labelled, build, found, image_files, refusal

FORMAT = "mask-png"
TITLE = "instance-mask PNGs"
SUFFIXES = ("_mask", "-mask", "_masks", "_instance", "_instances", "_label", "")


def folders(root: Path) -> tuple[Path, Path] | None:
    """(the image folder, the mask folder) of a dataset at ``root``, if it has both."""
    if not root.is_dir():
        return None
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    masks = next((p for p in subfolders if "mask" in p.name.lower() or p.name == "SegmentationObject"), None)
    images = next((p for p in subfolders if p != masks and image_files(p)), None)
    if masks is None or images is None or not any(masks.glob("*.png")):
        return None
    return images, masks


def detect(root: Path) -> bool:
    """Whether ``root`` holds a folder of images and a folder of mask PNGs."""
    return folders(root) is not None


def instances(mask: Path, classname: str) -> list[Box]:
    """One object per non-zero value of a mask PNG: its box (pixel extent) and its mask (COCO RLE)."""
    from pycocotools import mask as mask_utils

    try:
        with Image.open(mask) as img:
            values = np.asarray(img)
    except OSError as err:
        raise refusal(TITLE, mask, f"cannot be read ({err})", "give a PNG of instance ids") from err
    if values.ndim == 3:  # a colour PNG: each colour an instance
        values = values[..., :3].astype(np.int64) @ np.array([1, 256, 65536])
    boxes = []
    for value in np.unique(values):
        if value == 0:
            continue
        where = np.asarray(values == value)
        ys, xs = np.nonzero(where)
        rle = mask_utils.encode(np.asfortranarray(where.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        boxes.append(Box(classname, box, f"{mask}: value {int(value)}", rle))
    return boxes


def read(root: Path) -> Found:
    """The mask dataset at ``root``: each image with the objects of its mask PNG."""
    found_folders = folders(root)
    assert found_folders is not None
    images, masks = found_folders
    classes = root / "classes.txt"
    names = [line.strip() for line in classes.read_text().splitlines() if line.strip()] if classes.is_file() else []
    if len(names) > 1:
        raise DatasetError(
            f"{classes} (read as {TITLE}): names {len(names)} classes; mask PNGs hold one class, give one name"
        )
    classname = names[0] if names else "object"

    def read_all() -> dict:
        by_stem = {p.stem: p for p in image_files(images)}
        labelled = []
        for mask in sorted(masks.glob("*.png")):
            stem = next((mask.stem.removesuffix(s) for s in SUFFIXES if s and mask.stem.endswith(s)), mask.stem)
            image = by_stem.get(stem) or by_stem.get(mask.stem)
            name = image.name if image is not None else f"{stem}.png"
            with Image.open(mask) as img:
                size = img.size
            labelled.append(Labelled(name, str(mask), instances(mask, classname), size=size, folder=images))
        return build(FORMAT, ImageIndex(root, image_files(images)), {"all": labelled}, [classname])

    return found(FORMAT, masks, root, ["all"], read_all)
