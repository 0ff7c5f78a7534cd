"""Training (:mod:`.train`, :mod:`.config`) and evaluation (:mod:`.evaluate`); names imported on first use."""

from .._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "Trainer": "train",
    "TrainingDiverged": "train",
    "coco_evaluate": "evaluate",
    "predict_dataset": "evaluate",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
