"""Where a run's records go: its own ``log.jsonl``, TensorBoard, or a logger of your own.

A logger is any object with ``log(record)`` (every record the run writes: ``{"type": "train" |
"eval" | "resume" | ..., "step", "epoch", <terms and metrics>}``), ``image(name, image, step)``
(a PIL image, such as the validation predictions) and ``close()``; pass your own (W&B, MLflow ...)
to :class:`detr.engine.train.Trainer` as ``loggers=[...]``. Only the main process logs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

from PIL import Image


class RunLogger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def image(self, name: str, image: Image.Image, step: int) -> None: ...

    def close(self) -> None: ...


class JsonLinesLogger:
    """Appends every record, with its time, as a line of JSON (the run's ``log.jsonl``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def image(self, name: str, image: Image.Image, step: int) -> None:
        pass  # pictures are files of the run folder already

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Every number of every record as a scalar (``train/loss``, ``eval/AP``, ``train/lr_backbone`` ...)
    and every image, through ``torch.utils.tensorboard`` (``pip install tensorboard``)."""

    def __init__(self, folder: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from err
        self.writer = SummaryWriter(str(folder))

    def log(self, record: dict[str, Any]) -> None:
        kind, step = record.get("type", "run"), record.get("step", 0)
        for key, value in record.items():
            if key not in ("type", "step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.writer.flush()

    def image(self, name: str, image: Image.Image, step: int) -> None:
        import numpy as np

        self.writer.add_image(name, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
