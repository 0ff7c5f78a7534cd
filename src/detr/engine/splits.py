"""Where a training run's data is: the splits a :class:`~detr.engine.config.TrainConfig` names (annotation
files, splits found in a dataset folder of any supported format, or their COCO panoptic annotations)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.coco import CocoSplit, annotation_file_split, find_split

if TYPE_CHECKING:
    from .config import TrainConfig

log = logging.getLogger(__name__)


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
        train = find_split(config.data, config.train_split, images)
    if config.val_annotations:
        return train, annotation_file_split(config.val_annotations, images)
    if not config.val_split:
        return train, None
    if Path(config.data).is_file():
        log.warning("--data is one annotation file: no validation (give --val-annotations FILE to evaluate)")
        return train, None
    return train, find_split(config.data, config.val_split, images)
