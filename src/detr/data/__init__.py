"""Datasets, transforms and batching for training and evaluation."""

from .coco import CocoDetection, DatasetError, find_split, load_coco_annotations
from .transforms import collate, eval_transforms, train_transforms

__all__ = [
    "CocoDetection",
    "DatasetError",
    "collate",
    "eval_transforms",
    "find_split",
    "load_coco_annotations",
    "train_transforms",
]
