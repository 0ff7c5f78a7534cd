"""Detections for a folder of image files, fast: ``detr predict``'s engine.

Images are read and resized in a background thread while the model runs, and run in batches of
images that share their padded size. Each image is padded as it would be alone, so it gets the same
detections whatever ``batch_size`` is (padding it further to a larger neighbour would change the
features near its bottom and right borders a little). The model runs through its inference path (:mod:`detr.deploy.inference`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from PIL import Image

from ..data.coco import DatasetError, find_split, load_coco_annotations, read_image
from ..processing.preprocess import Batch, ImagePreprocessor
from ..processing.tiling import predict_tiled

if TYPE_CHECKING:  # any model with predict(); the fast copy is the usual one (deploy sits above engine)
    from ..deploy.inference import InferenceDETR

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class ImagePrediction:
    """One input's outcome: its detections (``DETR.predict``'s dicts) or why it could not be read."""

    index: int  # position in the inputs
    path: Path
    image: Image.Image | None = None
    detections: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def read_ahead(function: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """``function`` over ``items`` in a background thread, at most ``ahead`` results ahead of the
    consumer (so that memory stays bounded), in order."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="detr-read") as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def predict_files(
    model: InferenceDETR,
    paths: Sequence[Path],
    preprocessor: ImagePreprocessor | None = None,
    batch_size: int = 1,
    **options: Any,
) -> Iterator[ImagePrediction]:
    """:class:`ImagePrediction` of every file in ``paths`` (the unreadable ones with their error), in
    the order batches finish; ``options`` go to :meth:`InferenceDETR.predict` (``k``,
    ``score_threshold``, ``nms``, ``classes``; ``tile`` and the rest: tiled prediction, where an image's
    windows are its batches, :func:`detr.processing.tiling.predict_tiled`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    preprocessor = preprocessor or model.preprocessing
    if options.get("tile") is not None:
        yield from _predict_files_tiled(model, paths, preprocessor, batch_size, **options)
        return

    def load(item: tuple[int, Path]) -> tuple[ImagePrediction, Batch | None]:
        index, path = item
        try:
            image = read_image(path, exif=True)
        except DatasetError as err:  # one bad file does not stop the others
            return ImagePrediction(index, path, error=str(err)), None
        return ImagePrediction(index, path, image), preprocessor(image)

    waiting: dict[tuple[int, ...], list[tuple[ImagePrediction, Batch]]] = {}  # resized size -> images

    def run(group: list[tuple[ImagePrediction, Batch]]) -> Iterator[ImagePrediction]:
        results = model.predict(Batch.concat([batch for _, batch in group]), **options)
        for (prediction, _), detections in zip(group, results, strict=True):
            prediction.detections = detections
            yield prediction

    for prediction, batch in read_ahead(load, enumerate(paths), ahead=2 * batch_size):
        if batch is None:
            yield prediction
            continue
        key = tuple(batch.pixel_values.shape[2:])  # each image padded as if alone: batching changes nothing
        group = waiting.setdefault(key, [])
        group.append((prediction, batch))
        if len(group) == batch_size:
            yield from run(waiting.pop(key))
        elif sum(map(len, waiting.values())) >= 4 * batch_size:  # many sizes: memory over full batches
            yield from run(waiting.pop(max(waiting, key=lambda k: len(waiting[k]))))
    for group in waiting.values():
        yield from run(group)


def _predict_files_tiled(
    model: Any, paths: Sequence[Path], preprocessor: ImagePreprocessor, batch_size: int, **options: Any
) -> Iterator[ImagePrediction]:
    """:func:`predict_files` through tiles: each image read ahead, cut and run ``batch_size`` windows a pass."""
    tiling = {
        "tile": options.pop("tile"),
        "overlap": options.pop("tile_overlap", 0.2),
        "full_image": options.pop("tile_full_image", False),
    }

    def load(item: tuple[int, Path]) -> ImagePrediction:
        index, path = item
        try:
            return ImagePrediction(index, path, read_image(path, exif=True))
        except DatasetError as err:  # one bad file does not stop the others
            return ImagePrediction(index, path, error=str(err))

    for prediction in read_ahead(load, enumerate(paths), ahead=2):
        if prediction.image is not None:
            (prediction.detections,) = predict_tiled(
                model, [prediction.image], preprocessor=preprocessor, batch_size=batch_size, **tiling, **options
            )
        yield prediction


def ground_truth_by_name(source: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Ground-truth boxes of a dataset (anything ``--data`` takes: a COCO annotation file, a dataset folder or file
    of any format read, every split found) by image file name: ``{"box": xyxy pixels, "class_name"}``."""
    found: dict[str, list[dict[str, Any]]] = {}
    splits = []
    for split in ("train", "val", "test"):
        try:
            splits.append(find_split(source, split))
        except FileNotFoundError:
            continue
        if Path(source).is_file() and splits[-1].read is None:  # one COCO annotation file: one split
            break
    if not splits:
        raise FileNotFoundError(f"no annotations found in {source}: give a COCO annotation file or a dataset folder")
    read: set[Path] = set()
    for split in splits:
        if split.read is None and split.annotation_file in read:  # e.g. a COCO folder whose val and test name one file
            continue
        read.add(split.annotation_file)
        annotations = load_coco_annotations(split.annotation_file, split.read() if split.read else None)
        for image in annotations.images:
            found[Path(image["file_name"]).name] = [
                {"box": box, "class_name": annotations.category_names[class_id]}
                for box, class_id in annotations.boxes.get(image["id"], [])
            ]
    return found
