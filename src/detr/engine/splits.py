"""Where a training run's data is: the splits a :class:`~detr.engine.config.TrainConfig` names (annotation
files, splits found in a dataset folder of any supported format, or their COCO panoptic annotations)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.coco import CocoDetection, CocoSplit, annotation_file_split, find_split
from ..fileio import atomic_write_text

if TYPE_CHECKING:
    from .config import TrainConfig

log = logging.getLogger(__name__)
SPLIT_FILE = "split.json"  # in a run folder: the split made here, for detr eval and for a person to read


def dataset_splits(config: TrainConfig) -> tuple[CocoSplit, CocoSplit | None]:
    """The training split and the validation split (None without one) that ``config`` names: annotation
    files given as such, or splits found in ``data`` (a folder, or one annotation file to train on);
    with ``panoptic``, their COCO panoptic annotations instead."""
    train, val = _detection_splits(config)
    if not config.panoptic:
        return train, val
    return _panoptic_split(train, config.data, config.train_split), (
        None if val is None else _panoptic_split(val, config.data, config.val_split)
    )


def _panoptic_split(split: CocoSplit, root: str, name: str) -> CocoSplit:
    """``split``'s images with the panoptic annotations of ``root`` (every segment an object)."""
    from ..data.panoptic import find_panoptic, panoptic_as_coco, read_panoptic

    found = find_panoptic(root, name)
    if found is None:
        raise FileNotFoundError(
            f"no panoptic annotations for the {name!r} split in {root}: expected annotations/panoptic_{name}.json "
            f"and its PNG folder annotations/panoptic_{name}/ (or both at the root)"
        )
    panoptic = read_panoptic(*found)  # its own image list: the detection annotations are not read again
    return CocoSplit(found[0], split.image_dirs, read=lambda: panoptic_as_coco(panoptic), format="coco-panoptic")


def _detection_splits(config: TrainConfig) -> tuple[CocoSplit, CocoSplit | None]:
    images = config.images or None
    if config.train_annotations:
        train = annotation_file_split(config.train_annotations, images)
    else:
        train = find_split(config.data, config.train_split, images, config.val_fraction)
    if config.val_annotations:
        return train, annotation_file_split(config.val_annotations, images)
    if not config.val_split:
        return train, None
    if Path(config.data).is_file() and train.format == "coco":  # other formats' files: split by a hash
        log.warning("--data is one annotation file: no validation (give --val-annotations FILE to evaluate)")
        return train, None
    return train, find_split(config.data, config.val_split, images, config.val_fraction)


def write_made_split(folder: Path, train: CocoDetection, val: CocoDetection | None, val_fraction: float) -> Path | None:
    """Write ``split.json`` into a run's ``folder`` when the library made the split (a dataset without a validation
    split of its own): how, and every image of each side by file name. None when the dataset had its own."""
    if val is None or not val.split_note:
        return None
    content = {
        "val_fraction": val_fraction,
        "how": val.split_note,
        "train": [info["file_name"] for info in train.images],
        "val": [info["file_name"] for info in val.images],
    }
    path = folder / SPLIT_FILE
    atomic_write_text(path, json.dumps(content, indent=1))
    return path


def run_val_fraction(weights: str | Path) -> float | None:
    """The ``val_fraction`` of the split a training run made, read from its ``split.json`` (beside ``weights``, a run
    folder or a model folder in one), or None when there is none."""
    path = Path(weights)
    for folder in (path, path.parent, path.parent.parent):
        if (folder / SPLIT_FILE).is_file():
            return float(json.loads((folder / SPLIT_FILE).read_text())["val_fraction"])
    return None
