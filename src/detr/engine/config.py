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
# the fields that say where the training data is (what a recipe reads to adapt to it)
DATA_KEYS = ("data", "train_split", "train_annotations", "images", "panoptic")
# what a dataset may be, for every --help that takes one (the readers: detr.data.coco and detr.data.formats)
DATASET_HELP = (
    "a folder or annotation file: COCO (annotations/instances_<split>.json, <split>/_annotations.coco.json, or "
    "one .json file), YOLO (data.yaml, images/ beside labels/), LabelImg YOLO (a .txt beside each image, and "
    "classes.txt), Pascal VOC (Annotations/, JPEGImages/), CVAT XML, Label Studio JSON, Label Studio JSON-MIN, "
    "CreateML JSON, LabelMe JSON, a CSV of boxes, or images/ beside masks/ (instance-mask PNGs)"
)
# where a run folder records the settings it trains with (written when training starts)
RUN_CONFIG = "config.json"
# the COCO metrics an evaluation reports (as detr.engine.evaluate.METRIC_NAMES)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _field(default: Any, help: str) -> Any:
    """A config field with its one-line help (shown by ``detr train --help``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """What ``detr train`` does. Defaults are the DETR paper's recipe (AdamW, lr 1e-4, backbone
    lr 1e-5, weight decay 1e-4, lr drop, gradient clipping 0.1, auxiliary losses)."""

    # data
    data: str = _field("", f"dataset: {DATASET_HELP}")
    train_split: str = _field("train", "split to train on (train, val, valid, test or a folder's name)")
    val_split: str = _field("val", "split to evaluate on; '' for no evaluation")
    val_fraction: float = _field(
        0.1, "where --data has no validation split: this share of its images validates (by a hash of the file names)"
    )
    train_annotations: str = _field("", "a COCO annotation file to train on, instead of finding the split in --data")
    val_annotations: str = _field("", "a COCO annotation file to evaluate on, instead of finding the split in --data")
    images: str = _field("", "folder of the images of an annotation file (default: found next to it)")
    train_scales: list[int] = _field(list(TRAIN_SCALES), "short sides drawn from in training (multi-scale)")
    max_size: int = _field(1333, "longest image side after any resize, in training and evaluation")
    crop: bool = _field(True, "the reference's random crop branch of the augmentation")
    crop_resize_scales: list[int] = _field(list(CROP_RESIZE_SCALES), "short sides the crop branch resizes to first")
    crop_size: list[int] = _field(list(CROP_SIZE), "smallest and largest side of a random crop, in pixels")
    mosaic: float = _field(
        0.0, "chance that a training sample is a mosaic of four images, scaled down (more objects a step; 0: off)"
    )
    tile_crop: int = _field(
        0,
        "large images: train on crops of this many pixels, unresized, around objects and anywhere, as detr predict "
        "--tile SIZE reads them (0: off; train at --train-scales SIZE --eval-size SIZE)",
    )
    eval_size: int = _field(800, "short side at evaluation (and the model's default for predict)")
    workers: int = _field(2, "data-loading processes (0: load in the training process)")
    # model
    model: str = _field("detr_r50", "registered model to build (see detr models)")
    weights: str | None = _field(None, "start from these weights: a published name (detr_r50), a file or a folder")
    extend_classes: bool = _field(
        False, "keep every class of --weights and append the dataset's new ones (else train the dataset's classes)"
    )
    pretrained_backbone: bool = _field(
        True,
        "ImageNet weights for the ResNet (the reference recipe; downloaded once into the torch hub cache). "
        "Unlike the Python factories, whose models start random, training starts from them: turn off with "
        "--no-pretrained-backbone to train from scratch or offline",
    )
    num_queries: int = _field(100, "object queries: the most detections per image")
    aux_loss: bool = _field(True, "losses on every decoder layer (the reference)")
    model_kwargs: dict[str, Any] = _field({}, "more factory arguments as a JSON object, e.g. '{\"d_model\": 128}'")
    masks: bool = _field(
        False,
        "train the paper's mask head too (instance masks): every object needs a COCO segmentation (polygons, RLE)",
    )
    panoptic: bool = _field(
        False,
        "train on the COCO panoptic annotations (panoptic_<split>.json + PNGs): every segment, thing or stuff, "
        "an object with its mask (implies --masks)",
    )
    # optimisation
    epochs: int = _field(300, "passes over the training split")
    batch_size: int = _field(2, "images per step and process")
    accumulate: int = _field(1, "micro-batches per optimizer step (gradient accumulation)")
    lr: float = _field(1e-4, "learning rate of everything but the backbone (AdamW)")
    lr_backbone: float = _field(1e-5, "learning rate of the backbone")
    weight_decay: float = _field(1e-4, "AdamW weight decay")
    lr_schedule: str = _field("step", "step: divide by 10 after --lr-drop epochs (reference); cosine: decay to 0")
    lr_drop: int = _field(200, "epochs after which the step schedule divides the learning rate by 10")
    warmup_steps: int = _field(0, "linear warm-up of the learning rate over this many optimizer steps")
    clip_max_norm: float = _field(0.1, "gradient clipping norm (0: none)")
    amp: str = _field("none", "mixed precision: none, bf16 (CPU or GPU) or fp16 (GPU)")
    sync_batch_norm: bool = _field(False, "under torchrun on GPUs, batch-norm statistics over all processes")
    seed: int = _field(42, "random seed (each process adds its rank under torchrun)")
    max_steps: int = _field(0, "stop after this many optimizer steps (0: run all epochs)")
    max_minutes: float = _field(0.0, "stop after this much training time (0: no limit)")
    anneal_by_time: bool = _field(
        False,
        "with the cosine schedule and --max-minutes: progress is the larger of the steps' and the time's "
        "fraction, so a run the clock stops still ends annealed",
    )
    # bookkeeping
    output_dir: str = _field("runs/detr", "run folder (one holding an earlier run is left alone: then output_dir-2)")
    device: str = _field("auto", "auto (a GPU if there is one), cpu, cuda or cuda:N")
    eval_every: int = _field(1, "epochs between evaluations")
    checkpoint_every: int = _field(0, "optimizer steps between checkpoints, besides every epoch end (0: epochs only)")
    log_every: int = _field(10, "optimizer steps between log lines")
    resume: bool = _field(False, "continue the run in --output-dir from its checkpoint")
    exist_ok: bool = _field(False, "write into --output-dir even if it holds an earlier run")
    progress: bool = _field(
        True, "progress bars at a terminal (--no-progress, or output to a file or pipe: a line per --log-every steps)"
    )
    per_class_ap: bool = _field(False, "also compute AP per class at evaluation")
    eval_all_classes: bool = _field(
        False, "score every query-class pair at evaluation, not only each query's best class"
    )
    eval_max_detections: int = _field(100, "detections kept per image at evaluation, the best over all")
    best_metric: str = _field("AP", "validation metric that chooses best/ and early stopping (AP, AP50, AR100 ...)")
    early_stopping_patience: int = _field(0, "stop after this many evaluations without a better best_metric (0: never)")
    ema: bool = _field(False, "keep an exponential moving average of the weights; evaluate and save it")
    ema_decay: float = _field(0.9998, "decay of the moving average")
    ema_warmup: int = _field(2000, "optimizer steps over which the decay grows to ema_decay")
    tensorboard: bool = _field(False, "also log every scalar and the validation predictions to output_dir/tensorboard")

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
            (0.0 <= self.mosaic <= 1.0, f"mosaic must be a probability in [0, 1], got {self.mosaic!r}"),
            (self.tile_crop == 0 or self.tile_crop >= 32, f"tile_crop must be 0 (off) or >= 32, got {self.tile_crop}"),
            (0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction!r}"),
            (self.eval_every >= 1 and self.log_every >= 1, "eval_every and log_every must be >= 1"),
            (self.num_queries >= 1, "num_queries must be >= 1"),
            (self.eval_max_detections >= 1, "eval_max_detections must be >= 1"),
            (not self.extend_classes or bool(self.weights), "extend_classes needs weights to extend"),
            (self.best_metric in METRICS, f"best_metric must be one of {', '.join(METRICS)}, got {self.best_metric!r}"),
            (self.early_stopping_patience >= 0, "early_stopping_patience must be >= 0"),
            (0 < self.ema_decay < 1 and self.ema_warmup >= 0, "ema_decay must be in (0, 1) and ema_warmup >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training config: {message}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config of these values; a ``recipe`` key (see :mod:`detr.engine.recipes`) fills in the
        values not given from that preset, adapted to the data named."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - {"recipe"})
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known keys: {sorted(known | {'recipe'})}")
        if "recipe" in values:
            from .recipes import resolve_recipe

            values = dict(values)
            name = values.pop("recipe")
            # where the data is, to adapt the recipe to (the reference defaults for the rest)
            located = cls(**{k: values[k] for k in DATA_KEYS if k in values})
            values = resolve_recipe(name, located, values)
        return cls(**values)

    @classmethod
    def from_recipe(cls, recipe: str, **values: Any) -> TrainConfig:
        """``recipe``'s values for the data in ``values`` (``data=...``), overridden by the other ``values``:
        ``TrainConfig.from_recipe("scratch", data="my_data", max_minutes=10)``."""
        return cls.from_dict({**values, "recipe": recipe})


def resume_config(output_dir: str | Path, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, tuple[Any, Any]]]:
    """The config to resume the run in ``output_dir`` with: the settings it recorded (data, recipe values, sizes,
    model, schedule: its ``config.json``), ``overrides`` replacing only the values they name. Returns it and the
    values changed, ``{name: (recorded, given)}`` (those given equal to the recorded are not changes)."""
    path = Path(output_dir) / RUN_CONFIG
    if not path.is_file():
        found = "no such folder" if not Path(output_dir).is_dir() else f"no {RUN_CONFIG} in it"
        raise FileNotFoundError(
            f"nothing to resume in {output_dir}: {found} (a run records its settings there when it starts); "
            "give the run's folder as --output-dir"
        )
    if "recipe" in overrides:
        raise ValueError(
            "--recipe with --resume: the run recorded the values its recipe gave; name only the settings to change"
        )
    recorded = read_config_file(path)
    overrides = {k: v for k, v in overrides.items() if k not in ("resume", "output_dir")}
    changed = {k: (recorded.get(k), v) for k, v in overrides.items() if recorded.get(k) != v}
    config = TrainConfig.from_dict({**recorded, **overrides, "output_dir": str(output_dir), "resume": True})
    return config, changed


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
