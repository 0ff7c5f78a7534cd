"""Datasets (:mod:`.coco`), transforms and batching (:mod:`.transforms`), mosaics (:mod:`.mosaic`), tile crops
(:mod:`.tile_crop`), label spaces (:mod:`.labels`), synthetic data (:mod:`.synthetic`); names imported on first use."""

from .._lazy import lazy_exports

_EXPORTS = {
    "CocoDetection": "coco",
    "DatasetError": "coco",
    "find_split": "coco",
    "load_coco_annotations": "coco",
    "Mosaic": "mosaic",
    "TileCrop": "tile_crop",
    "collate": "transforms",
    "eval_transforms": "transforms",
    "train_transforms": "transforms",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
