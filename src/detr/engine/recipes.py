"""Training presets (``detr train --recipe NAME``): named sets of :class:`TrainConfig` values.

- ``reference``: the DETR paper's recipe, :class:`TrainConfig`'s own defaults (ImageNet backbone,
  lr 1e-4 / 1e-5, multi-scale 480-800 with crops, 300 epochs).
- ``scratch``: the library's fastest recipe for training from nothing (no pretrained weights) on a
  CPU, the one ``detr demo`` runs: a ResNet-18 with trainable batch norm cut where the objects still
  span a few feature cells, a small transformer, denoising queries, a dense auxiliary head whose best
  proposals place the decoder's anchor boxes (two-stage), a decoder that reads the image at points of
  those boxes (deformable cross-attention), large learning rates with warm-up and a
  cosine schedule that ends when the clock (``max_minutes``) or ``max_steps`` does. It adapts to the
  data what must adapt (image size, feature stride, number of queries, batch size), and to the device
  one thing: bf16 autocast where it computes bf16 in hardware and the images are large enough for that
  to pay (``SCRATCH_MIN_BF16_SIDE``).

A recipe gives defaults only: every value the user gives (flag, config file key, keyword) wins. The
resolved values are what the run records in its ``config.json``, so a run can be repeated without the
recipe.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .config import TrainConfig

# the scratch recipe's transformer and options (each measured on the demo: see the README's table)
SCRATCH_MODEL: dict[str, Any] = {
    "d_model": 128,
    "nhead": 8,
    # one encoder layer: 128 px data (256 tokens), 4 minutes: AP 0.220 -> 0.404 with distinct anchors, 40% more steps
    "num_encoder_layers": 1,
    "num_decoder_layers": 3,
    "dim_feedforward": 512,
    "dropout": 0.0,
    "backbone_norm": "bn",  # no pretrained statistics to freeze: batch norm trains
    "freeze_stem": False,
    "denoising_groups": 4,
    "denoising_box_noise": 1.0,  # 0.4 (DN-DETR's) gave AP50 0.16 at 800 steps, 1.0 gave 0.22
    "dense_aux_loss": True,  # every encoder token supervised: AP 0.085 -> 0.157 at 800 steps
    # the dense head's box terms weigh each target alike (not each positive token: a 112 px object has ~50, one
    # under a cell 1) and its scores rank by box fit (VarifocalNet), together; equal steps on tuning seeds, one run
    # each: objects of 6-112 px AP 0.540 -> 0.553 and 0.542 -> 0.549 (two training seeds), 2-8 objects at 112 px
    # 0.768 -> 0.779, crowded 0.741 -> 0.742; either alone lost or tied on the first (0.532, 0.547)
    "dense_per_target": True,
    "dense_varifocal": True,
    "box_refinement": True,  # with two_stage: anchors from the dense head's proposals, AP -> 0.430
    "two_stage": True,
    # distinct anchors: a proposal overlapping a better one by IoU > 0.7 is passed over for the next distinct one
    # (128 px data, 4 minutes: AP 0.155 -> 0.220; segmentation demo data, where stuff regions propose the same
    # box from every token, 600 steps: objects' box AP 0.016 -> 0.184, mask AP 0.030 -> 0.098)
    "two_stage_distinct_iou": 0.7,
    # IoU-aware class targets: at equal steps AP 0.439 -> 0.454 (demo, 600 steps), 0.181 -> 0.193 (10 classes, 500)
    "iou_class_targets": True,
    # each query reads the memory at 4 points of its anchor box per head, not at every token: at equal steps
    # held-out task (700 steps) AP 0.284 -> 0.584, crowded (300) 0.113 -> 0.285, and crowded's step cheaper
    "deformable_decoder": True,
}
# the most encoder tokens the scratch recipe lets a typical image make: the backbone is cut at the first
# stage (stride 8, 16, 32) whose feature map stays under it (64 px demo images: stride 8, 8 x 8 tokens)
SCRATCH_MAX_TOKENS = 400
RESNET_STRIDES = {2: 8, 3: 16, 4: 32}  # the ResNet's output stride when cut after layer n
# the fewest encoder tokens a batch of 8 must hold for the scratch recipe to take batch 8 over 16
SCRATCH_MIN_BATCH_TOKENS = 1024
# the smallest images the scratch recipe trains under bf16 autocast, where the hardware computes bf16: the
# convolutions run about twice as fast, so the step does where they are most of it (2 cores, AVX512-BF16, step
# float32 -> bf16: 160 px 0.36 -> 0.28-0.31 s, 128 px 0.20 -> 0.15 s, 96 px 0.15 -> 0.14 s, 64 px 0.21 -> 0.22 s);
# 9 minutes on tuning tasks: scales (160 px) AP 0.516 -> 0.547, aside (112 px) 0.744 -> 0.756; the demo's 64 px
# data AP50 0.958 -> 0.948 (one run each), so it stays float32 there
SCRATCH_MIN_BF16_SIDE = 96
CPUS = os.cpu_count() or 1


@dataclass(frozen=True)
class DataStats:
    """What a recipe may adapt to: the training split's typical image and crowding."""

    short_side: int  # median shorter side of the training images, pixels
    long_side: int  # median longer side
    max_objects: int  # the most objects in one training image
    num_classes: int
    num_images: int


def data_stats(annotations: Any) -> DataStats:
    """:class:`DataStats` of a :class:`detr.data.coco.CocoAnnotations`."""
    images = annotations.images
    if not images:
        raise ValueError(f"{annotations.path} lists no images: a recipe has nothing to adapt to")
    short = statistics.median(min(i["width"], i["height"]) for i in images)
    long = statistics.median(max(i["width"], i["height"]) for i in images)
    crowd = max((len(boxes) for boxes in annotations.boxes.values()), default=0)
    return DataStats(int(short), int(long), crowd, len(annotations.category_names), len(images))


def reference_values(stats: DataStats, given: dict[str, Any]) -> dict[str, Any]:
    """The paper's recipe: TrainConfig's defaults, nothing to set."""
    return {}


def scratch_values(stats: DataStats, given: dict[str, Any]) -> dict[str, Any]:
    """The from-scratch recipe for data like ``stats``; ``given`` are the user's own values (they win, and
    some defaults follow them: the clock-annealed schedule needs ``max_minutes``)."""
    side = min(stats.short_side, 640)  # trained and evaluated at the data's own size, up to 640 px
    long = max(side * 3 // 2, math.ceil(stats.long_side * side / stats.short_side))
    short_side = given.get("eval_size", side)
    # backbone depth: layer2 (stride 8), layer3 (16) or layer4 (32), the first keeping the tokens few (or the
    # user's: the batch size below follows the tokens it makes)
    layers = given.get("model_kwargs", {}).get("backbone_layers") or next(
        n for n, stride in RESNET_STRIDES.items() if n == 4 or (short_side / stride) ** 2 <= SCRATCH_MAX_TOKENS
    )
    tokens = (short_side / RESNET_STRIDES.get(layers, 32)) ** 2  # encoder tokens of a typical image
    # batch 8 where a batch of 8 still holds enough tokens for a step's fixed cost not to dominate, else 16
    # (batch 8 over 16 at 9 minutes: 64 px demo, 64 tokens, 30% fewer images a second, AP 0.764 -> 0.738;
    # 96-128 px, 144-256 tokens, about as many images a second, and more steps: see the batch size below)
    batch = given.get("batch_size", 8 if 8 * tokens >= SCRATCH_MIN_BATCH_TOKENS else 16)
    minutes = given.get("max_minutes", 0.0)
    schedule = given.get("lr_schedule", "cosine")
    model = {**SCRATCH_MODEL, "backbone_layers": layers}
    bf16 = side >= SCRATCH_MIN_BF16_SIDE and _computes_bf16_natively(given.get("device", "auto"))
    return {
        "model": "detr_r18",
        "pretrained_backbone": False,
        "num_queries": max(10, 2 * stats.max_objects),  # room for every object, and for the matching to choose
        "aux_loss": True,
        "model_kwargs": model,
        "train_scales": [side],
        "max_size": long,
        "crop": False,
        "eval_size": side,
        "epochs": 100,  # bounded by max_steps / max_minutes when given
        # batch 8 (warm-up 400 steps) over 16 (200), 4 minutes each: 10 classes AP 0.461 -> 0.505, held-out task
        # 0.434 -> 0.514, crowded 0.209 -> 0.248, demo data 0.647 -> 0.630; twice the steps, each half the images
        "batch_size": batch,
        # from scratch: 2e-4 reached AP50 0.40, 5e-4 0.65 (demo, an early recipe); with the options above, at
        # equal steps 7e-4 -> 1e-3: demo AP 0.454 -> 0.518 (600 steps), 10 classes 0.193 -> 0.222 (500), crowded
        # 0.200 -> 0.211 (400); 1.5e-3 and 2e-3 no better (demo 0.505, 0.509)
        "lr": 1e-3,
        "lr_backbone": 1e-3,
        "lr_schedule": "cosine",
        "warmup_steps": max(1, 3200 // batch),  # the same images whatever the batch: 400 steps of 8
        "anneal_by_time": minutes > 0 and schedule == "cosine",
        "eval_all_classes": True,  # every query-class pair scored: AP50 0.626 -> 0.637 on the demo model
        # on a few cores a loader process takes CPU from the compute threads (2 cores: slower steps)
        "workers": 0 if CPUS <= 4 else min(8, CPUS // 2),
        "amp": "bf16" if bf16 else "none",
    }


def _computes_bf16_natively(device: str) -> bool:
    """Whether the device a run trains on computes bf16 in hardware (elsewhere bf16 is emulated, and slower)."""
    from ..device import computes_bf16_natively, resolve_device  # torch: imported only when a recipe resolves

    return computes_bf16_natively(resolve_device(device))


RECIPES: dict[str, Callable[[DataStats, dict[str, Any]], dict[str, Any]]] = {
    "reference": reference_values,
    "scratch": scratch_values,
}


def recipe_values(name: str, stats: DataStats, given: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig values of recipe ``name`` for data like ``stats``, with ``given`` on top."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    values = RECIPES[name](stats, given)
    model_kwargs = {**values.get("model_kwargs", {}), **given.get("model_kwargs", {})}  # merged, the user's win
    return {**values, **given, **({"model_kwargs": model_kwargs} if model_kwargs else {})}


def resolve_recipe(name: str, located: TrainConfig, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (TrainConfig keys) with recipe ``name``'s defaults filled in, adapted to the training data
    that ``located`` names (``reference``: ``values`` as they are)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    if name == "reference":
        return dict(values)
    if not located.data and not located.train_annotations:
        raise ValueError(f"the {name!r} recipe adapts to the data: give data (or train_annotations) with it")
    return recipe_values(name, training_data_stats(located), values)


def training_data_stats(config: TrainConfig) -> DataStats:
    """:class:`DataStats` of the training split ``config`` names."""
    from ..data.coco import load_coco_annotations
    from .splits import dataset_splits

    split, _ = dataset_splits(dataclasses.replace(config, val_split=""))
    return data_stats(load_coco_annotations(split.annotation_file, split.read() if split.read else None))
