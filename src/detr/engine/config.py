"""Training configuration: the reference recipe as defaults, every field overridable from a
YAML/JSON file or the command line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# the reference's multi-scale training sizes (short side), and its crop augmentation
TRAIN_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
CROP_RESIZE_SCALES = (400, 500, 600)
CROP_SIZE = (384, 600)


@dataclass
class TrainConfig:
    """What ``detr train`` does. Defaults are the DETR paper's recipe (AdamW, lr 1e-4, backbone
    lr 1e-5, weight decay 1e-4, lr drop, gradient clipping 0.1, auxiliary losses)."""

    # data
    data: str = ""  # dataset root, COCO format (see detr.data.coco)
    train_split: str = "train"
    val_split: str = "val"  # "" to skip evaluation
    train_scales: list[int] = field(default_factory=lambda: list(TRAIN_SCALES))
    max_size: int = 1333
    crop: bool = True  # the reference's random crop branch
    crop_resize_scales: list[int] = field(default_factory=lambda: list(CROP_RESIZE_SCALES))
    crop_size: list[int] = field(default_factory=lambda: list(CROP_SIZE))
    eval_size: int = 800
    workers: int = 2
    # model
    model: str = "detr_r50"
    weights: str | None = None  # start from these weights (a name like detr_r50, a file, a directory)
    # keep every class of --weights and append the dataset's new ones (else the model's classes are the dataset's,
    # the rows of those --weights knows by name kept)
    extend_classes: bool = False
    pretrained_backbone: bool = True  # ImageNet backbone (ignored when weights are given)
    num_queries: int = 100
    aux_loss: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # more factory arguments (d_model, ...)
    # optimisation
    epochs: int = 300
    batch_size: int = 2
    accumulate: int = 1  # gradient accumulation: micro-batches per optimizer step
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    lr_schedule: str = "step"  # step: divide by 10 after lr_drop epochs (reference) | cosine: decay to 0
    lr_drop: int = 200  # epochs after which the learning rate is divided by 10
    warmup_steps: int = 0  # linear warm-up of the learning rate over this many optimizer steps
    clip_max_norm: float = 0.1  # 0 disables clipping
    amp: str = "none"  # none | bf16 | fp16 (fp16 on GPU only)
    sync_batch_norm: bool = False  # with trainable batch norm under torchrun on GPUs: statistics over all processes
    seed: int = 42
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs)
    max_minutes: float = 0.0  # also stop after this much training time (0: no limit)
    # cosine schedule with max_minutes: progress is the larger of the steps' and the time's fraction, so a
    # run that the clock stops (a slower machine) still ends with the learning rate annealed to 0
    anneal_by_time: bool = False
    # bookkeeping
    output_dir: str = "runs/detr"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 1  # epochs
    checkpoint_every: int = 0  # optimizer steps between checkpoints, besides every epoch end (0: epoch ends only)
    log_every: int = 10  # optimizer steps between log lines
    resume: bool = False  # continue from output_dir/checkpoint.pth
    exist_ok: bool = False  # write into output_dir even if it holds an earlier run (else a new output_dir-N)
    progress: bool = True
    per_class_ap: bool = False
    eval_all_classes: bool = False  # score every query-class pair at evaluation, not only each query's best class
    eval_max_detections: int = 100  # detections kept per image at evaluation (the best over all query-class pairs)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.accumulate >= 1, "accumulate must be >= 1"),
            (self.lr > 0 and self.lr_backbone >= 0, "lr must be > 0 and lr_backbone >= 0"),
            (self.weight_decay >= 0 and self.clip_max_norm >= 0, "weight_decay and clip_max_norm must be >= 0"),
            (self.amp in ("none", "bf16", "fp16"), f"amp must be none, bf16 or fp16, got {self.amp!r}"),
            (self.lr_drop >= 1, "lr_drop must be >= 1 (epochs)"),
            (self.lr_schedule in ("step", "cosine"), f"lr_schedule must be step or cosine, got {self.lr_schedule!r}"),
            (
                self.warmup_steps >= 0 and self.max_steps >= 0 and self.max_minutes >= 0,
                "warmup_steps, max_steps, max_minutes must be >= 0",
            ),
            (
                not self.anneal_by_time or (self.lr_schedule == "cosine" and self.max_minutes > 0),
                "anneal_by_time needs lr_schedule cosine and max_minutes > 0",
            ),
            (len(self.crop_size) == 2, "crop_size must be [min, max]"),
            (self.eval_every >= 1 and self.log_every >= 1, "eval_every and log_every must be >= 1"),
            (self.num_queries >= 1, "num_queries must be >= 1"),
            (self.eval_max_detections >= 1, "eval_max_detections must be >= 1"),
            (not self.extend_classes or bool(self.weights), "extend_classes needs weights to extend"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training config: {message}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping of :class:`TrainConfig` fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config keys to values")
    return values
