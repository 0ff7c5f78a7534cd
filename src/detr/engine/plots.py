"""PNG plots of a run's curves, from its JSON-lines log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from ..fileio import atomic_write


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log_path: str | Path, png_path: str | Path) -> Path | None:
    """Training loss terms against steps, and COCO AP / AP50 against epochs, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    if not train and not evals:
        return None
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    steps = [r["step"] for r in train]
    for key, label in (("loss", "total (all layers)"), ("loss_ce", "CE"), ("loss_bbox", "L1"), ("loss_giou", "GIoU")):
        if train and key in train[0]:
            ax_loss.plot(steps, [r[key] for r in train], label=label)
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.set_title("training loss")
    if ax_loss.lines:  # a run shorter than one logging interval has no curve to name
        ax_loss.legend()
    for key in ("AP", "AP50", "AP75"):
        values = [float("nan") if r[key] is None else r[key] for r in evals]  # None: not measurable here
        ax_ap.plot([r["epoch"] for r in evals], values, marker="o", label=key)
    ax_ap.set_xlabel("epoch")
    ax_ap.set_ylabel("COCO box metric")
    ax_ap.set_ylim(0, 1)
    ax_ap.set_title("validation")
    ax_ap.legend()
    fig.tight_layout()
    out = atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out


def prediction_grid(
    model: Any, dataset: Any, count: int = 12, columns: int = 4, side: int = 256, threshold: float = 0.5
) -> Image.Image:
    """The first ``count`` images of ``dataset`` (a :class:`~detr.data.coco.CocoDetection`) with the model's
    detections (coloured, class and score) over the ground truth (white), each scaled to about ``side``
    pixels so that small images stay legible, tiled ``columns`` wide."""
    from ..data.coco import read_image
    from ..processing.visualize import draw_detections, image_grid

    tiles = []
    for info in dataset.images[:count]:
        image = read_image(dataset.image_dir / info["file_name"])
        (dets,) = model.predict([image], k=10, score_threshold=threshold)  # at the size it was trained at
        truth = [{"box": box} for box, _ in dataset.annotations.boxes[info["id"]]]
        tiles.append(draw_detections(image, dets, truth, min_side=side))  # scaled up with boxes and masks
    return image_grid(tiles, columns)


def mask_grid(
    model: Any, dataset: Any, count: int = 6, columns: int = 4, side: int = 256, threshold: float = 0.5
) -> Image.Image:
    """A mask model's detections with their masks (left) next to the ground truth's masks (right) for the
    first ``count`` images of ``dataset`` (a :class:`~detr.data.coco.CocoDetection` with ``masks``)."""
    from ..data.coco import read_image
    from ..processing.visualize import draw_detections, image_grid

    tiles = []
    for index, info in enumerate(dataset.images[:count]):
        image = read_image(dataset.image_dir / info["file_name"])
        (dets,) = model.predict([image], k=10, score_threshold=threshold)
        _, target = dataset.load(index)
        names = dataset.class_names
        truth = [
            {"box": box.tolist(), "score": 1.0, "class_id": int(label), "class_name": names[int(label)], "mask": mask}
            for box, label, mask in zip(target["boxes"], target["labels"], target["masks"])
        ]
        tiles += [draw_detections(image, dets, min_side=side), draw_detections(image, truth, min_side=side)]
    return image_grid(tiles, columns)
