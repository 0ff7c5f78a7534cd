"""Ultralytics YOLO: ``data.yaml`` with ``names`` and ``train`` / ``val`` / ``test`` image folders (or lists
of them, or text files listing images), relative to its ``path``; each image ``.../images/<...>/name.jpg`` has
its labels in ``.../labels/<...>/name.txt``, a line ``class cx cy w h`` (normalized) per object (or
``class x1 y1 x2 y2 ...``, a polygon, whose box is taken). Roboflow's variant, ``<split>/images`` beside
``<split>/labels``, is found without a yaml (the class names then come from a ``data.yaml`` or ``classes.txt``
at the root). Category id = class index; image id = the file name when it is a number (COCO's images keep their
ids), else the image's position. A bad label line raises :class:`DatasetError` naming the file and the line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .common import IMAGE_SUFFIXES, DatasetError, Found, image_size, numbered_id

FORMAT = "yolo"
YOLO_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DatasetError(f"{path} is not valid YAML ({err})") from err
    if not isinstance(content, dict):
        raise DatasetError(f"{path} must hold a mapping (names, train, val, ...)")
    return content


def _names(config: dict[str, Any], source: Path) -> list[str]:
    names = config.get("names")
    if isinstance(names, dict):
        try:
            indices = sorted(int(k) for k in names)
        except ValueError as err:
            raise DatasetError(f"{source}: the keys of 'names' must be class indices 0, 1, ...") from err
        if indices != list(range(len(indices))):
            raise DatasetError(f"{source}: 'names' must number the classes 0..{len(indices) - 1} without gaps")
        return [str(names[k] if k in names else names[str(k)]) for k in indices]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DatasetError(f"{source} has no class 'names' (a list, or a mapping from class index to name)")


def yolo_config(root: Path) -> Path | None:
    """The ``data.yaml`` (or other ``*.yaml`` with ``names``) of a YOLO dataset at ``root``, if any."""
    if root.is_file() and root.suffix in (".yaml", ".yml"):
        return root
    for candidate in [root / "data.yaml", root / "data.yml", *sorted(root.glob("*.yaml"))]:
        if candidate.is_file() and "names" in _yaml(candidate):
            return candidate
    return None


def _images_in(entry: Path) -> list[Path]:
    """Image files of a YOLO split entry: a folder (recursively) or a text file listing images."""
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if entry.is_file() and entry.suffix == ".txt":
        base = entry.parent
        return [(base / line.strip()).resolve() for line in entry.read_text().splitlines() if line.strip()]
    raise DatasetError(f"YOLO split entry not found: {entry} (a folder of images or a .txt list of them)")


def label_file(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder in the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def yolo_split_images(root: Path, split: str) -> tuple[Path, list[Path], list[str]] | None:
    """(the file that describes the split, its images, class names) of a YOLO dataset, or None."""
    aliases = YOLO_ALIASES.get(split, (split,))
    config_path = yolo_config(root)
    folder = root.parent if root.is_file() else root
    if config_path is not None:
        config = _yaml(config_path)
        names = _names(config, config_path)
        base = config_path.parent / str(config.get("path", "."))
        for alias in aliases:
            if config.get(alias):
                entries = config[alias] if isinstance(config[alias], list) else [config[alias]]
                images = [img for entry in entries for img in _images_in(base / str(entry))]
                return config_path, images, names
        for alias in aliases:  # Roboflow: <split>/images with a data.yaml at the root
            if (folder / alias / "images").is_dir():
                return config_path, _images_in(folder / alias / "images"), names
        return None
    for alias in aliases:  # no yaml: the class names from classes.txt
        images = folder / alias / "images" if (folder / alias / "images").is_dir() else folder / "images" / alias
        classes = folder / "classes.txt"
        if images.is_dir() and (label_file(next(iter(_images_in(images)), images / "x.jpg")).parent.is_dir()):
            if not classes.is_file():
                raise DatasetError(
                    f"{folder} looks like a YOLO dataset but has no data.yaml or classes.txt naming its classes"
                )
            names = [line.strip() for line in classes.read_text().splitlines() if line.strip()]
            return classes, _images_in(images), names
    return None


def label_line(
    line: str, where: str, names: list[str], declared_in: str
) -> tuple[int, tuple[float, float, float, float]] | None:
    """One YOLO label line ``class cx cy w h`` (normalized; or ``class x1 y1 x2 y2 ...``, a polygon, whose box is
    taken): its class index and its box as normalized ``(x0, y0, x1, y1)`` clipped to [0, 1], or None for a blank
    line. A line that is not one raises :class:`DatasetError` starting with ``where`` (file:line); ``declared_in``
    names where the classes are declared."""
    fields = line.split()
    if not fields:
        return None
    try:
        cls, values = int(fields[0]), [float(v) for v in fields[1:]]
    except ValueError:
        raise DatasetError(f"{where}: expected 'class cx cy w h' numbers, got {line.strip()!r}") from None
    if not 0 <= cls < len(names):
        raise DatasetError(
            f"{where}: class {cls} is not one of the {len(names)} classes in {declared_in} (0..{len(names) - 1})"
        )
    if len(values) != 4 and (len(values) < 6 or len(values) % 2):
        raise DatasetError(f"{where}: expected 'class cx cy w h' (or a polygon), got {len(fields)} numbers")
    if min(values) < -0.01 or max(values) > 1.01:  # Ultralytics' own check, on every number
        raise DatasetError(
            f"{where}: box {values[:4]} is not normalized to [0, 1] (YOLO labels are fractions of the image size)"
        )
    if len(values) == 4:
        cx, cy, w, h = values
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    else:  # a polygon (segment label): its box
        xs, ys = values[0::2], values[1::2]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))  # clipped, as Ultralytics does
    return cls, (x0, y0, x1, y1)


def read_yolo(images: list[Path], names: list[str], image_root: Path) -> dict[str, Any]:
    """The COCO dictionary of YOLO-labelled ``images`` (file names relative to ``image_root``)."""
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
    }
    used: set[int] = set()
    for index, image in enumerate(images):
        width, height = image_size(image)
        image_id = numbered_id(image, index, used)
        used.add(image_id)
        coco["images"].append(
            {"id": image_id, "file_name": str(image.relative_to(image_root)), "width": width, "height": height}
        )
        labels = label_file(image)
        if not labels.is_file():
            continue  # no label file: an image without objects, as Ultralytics reads it
        for number, line in enumerate(labels.read_text().splitlines(), start=1):
            parsed = label_line(line, f"{labels}:{number}", names, "'names'")
            if parsed is None:
                continue
            cls, (x0, y0, x1, y1) = parsed
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": cls,
                    "bbox": [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height],
                    "area": (x1 - x0) * width * (y1 - y0) * height,
                    "iscrowd": 0,
                }
            )
    return coco


def detect(root: Path) -> bool:
    """Whether ``root`` is a YOLO dataset: a yaml naming classes, or ``images/<split>`` beside ``labels/``."""
    return root.exists() and (
        yolo_config(root) is not None or any(yolo_split_images(root, s) is not None for s in YOLO_ALIASES)
    )


def read(root: Path) -> Found:
    """The splits of the YOLO dataset at ``root`` that exist, each read as COCO when it loads."""
    splits, roots, source = {}, {}, root
    for split in YOLO_ALIASES:
        found = yolo_split_images(root, split)
        if found is None:
            continue
        source, images, names = found
        if not images:
            raise DatasetError(f"the {split!r} split of the YOLO dataset {source} has no images")
        image_root = Path(os.path.commonpath([p.parent for p in images]))
        splits[split] = lambda i=images, n=names, r=image_root: read_yolo(i, n, r)
        roots[split] = image_root
    return Found(FORMAT, source, root, splits, roots)
