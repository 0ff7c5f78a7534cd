"""Training and evaluation."""

from .config import TrainConfig
from .evaluate import coco_evaluate, predict_dataset
from .train import Trainer, TrainingDiverged, train

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "coco_evaluate", "predict_dataset", "train"]
