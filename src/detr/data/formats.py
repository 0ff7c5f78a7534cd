"""Datasets in the formats people have: the Ultralytics YOLO layout and Pascal VOC, read as COCO.

Each is turned, when it loads, into the COCO dictionary the rest of the library reads (images with
their sizes, annotations in pixel ``[x, y, w, h]``, categories with ids and names), so that every
check, label map and evaluation works the same on all formats.

- **YOLO** (Ultralytics): ``data.yaml`` with ``names`` and ``train`` / ``val`` / ``test`` image
  folders (or lists of them, or text files listing images), relative to its ``path``; each image
  ``.../images/<...>/name.jpg`` has its labels in ``.../labels/<...>/name.txt``, a line
  ``class cx cy w h`` (normalized) per object (or ``class x1 y1 x2 y2 ...``, a polygon, whose box is
  taken). Roboflow's variant, ``<split>/images`` beside ``<split>/labels``, is found without a yaml
  (the class names then come from a ``data.yaml`` or ``classes.txt`` at the root). Category id =
  class index; image id = the file name when it is a number (COCO's images keep their ids), else
  the image's position.
- **Pascal VOC**: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``, ``ImageSets/Main/<split>.txt``
  (in the root or in a ``VOC20xx`` folder of a ``VOCdevkit``). ``difficult`` objects become COCO's
  crowd boxes (ignored in training and evaluation); categories are the names found, sorted, ids from 1.

Bad data raises :class:`DatasetError` naming the file (and the line, for a YOLO label).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
YOLO_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
VOC_ALIASES = {"train": ("train",), "val": ("val",), "trainval": ("trainval",), "test": ("test",)}


class DatasetError(ValueError):
    """Bad data: the message names the file and what is wrong with it."""


# ------------------------------------------------------------------ YOLO
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


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"cannot read image {path}: {err} (corrupt or not an image?)") from err


def _image_id(path: Path, index: int, used: set[int]) -> int:
    """The image's number when its name is one (COCO's files keep their ids), else its position."""
    stem = path.stem.replace("_", "")
    image_id = int(stem) if stem.isdigit() else index + 1
    return image_id if image_id not in used else max(used) + 1


def read_yolo(images: list[Path], names: list[str], image_root: Path) -> dict[str, Any]:
    """The COCO dictionary of YOLO-labelled ``images`` (file names relative to ``image_root``)."""
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
    }
    used: set[int] = set()
    for index, image in enumerate(images):
        width, height = _image_size(image)
        image_id = _image_id(image, index, used)
        used.add(image_id)
        coco["images"].append(
            {"id": image_id, "file_name": str(image.relative_to(image_root)), "width": width, "height": height}
        )
        labels = label_file(image)
        if not labels.is_file():
            continue  # no label file: an image without objects, as Ultralytics reads it
        for number, line in enumerate(labels.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{labels}:{number}"
            try:
                cls, values = int(fields[0]), [float(v) for v in fields[1:]]
            except ValueError:
                raise DatasetError(f"{where}: expected 'class cx cy w h' numbers, got {line.strip()!r}") from None
            if not 0 <= cls < len(names):
                raise DatasetError(
                    f"{where}: class {cls} is not one of the {len(names)} classes in 'names' (0..{len(names) - 1})"
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


# ------------------------------------------------------------------ Pascal VOC
def voc_root(root: Path) -> Path | None:
    """The folder holding ``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/`` (root, or a
    ``VOC20xx`` folder inside it or inside its ``VOCdevkit``), if any."""
    candidates = [root, *sorted(root.glob("VOC*")), *sorted(root.glob("VOCdevkit/VOC*"))] if root.is_dir() else []
    for folder in candidates:
        if (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir():
            return folder
    return None


def _voc_ids(folder: Path, split: str) -> tuple[Path, list[str]] | None:
    for alias in VOC_ALIASES.get(split, (split,)):
        listing = folder / "ImageSets" / "Main" / f"{alias}.txt"
        if listing.is_file():
            return listing, [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    return None


def _voc_objects(xml: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        tree = ET.parse(xml).getroot()
    except FileNotFoundError:
        raise DatasetError(f"annotation file not found: {xml}") from None
    except ET.ParseError as err:
        raise DatasetError(f"{xml} is not valid XML ({err})") from err
    try:
        size = tree.find("size")
        info = {
            "filename": tree.findtext("filename"),
            "width": int(size.findtext("width")),
            "height": int(size.findtext("height")),
        }
        objects = []
        for obj in tree.findall("object"):
            box = obj.find("bndbox")
            objects.append(
                {
                    "name": obj.findtext("name").strip(),
                    "difficult": int(obj.findtext("difficult") or 0),
                    "box": [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")],
                }
            )
    except (AttributeError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{xml}: every file needs size/width and size/height, every object a name and a bndbox ({err!r})"
        ) from err
    return info, objects


def voc_categories(folder: Path) -> list[str]:
    """The object names of every listed VOC image (all splits), sorted: the same categories for every split."""
    names: set[str] = set()
    ids: set[str] = set()
    for listing in (folder / "ImageSets" / "Main").glob("*.txt"):
        if "_" not in listing.stem:  # train.txt, not aeroplane_train.txt
            ids.update(line.split()[0] for line in listing.read_text().splitlines() if line.strip())
    for image_id in sorted(ids):
        names.update(obj["name"] for obj in _voc_objects(folder / "Annotations" / f"{image_id}.xml")[1])
    return sorted(names)


def read_voc(folder: Path, ids: list[str], names: list[str]) -> dict[str, Any]:
    """The COCO dictionary of the VOC images ``ids`` (``difficult`` objects as crowd boxes)."""
    category = {n: i + 1 for i, n in enumerate(names)}
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }
    used: set[int] = set()
    for index, voc_id in enumerate(ids):
        xml = folder / "Annotations" / f"{voc_id}.xml"
        info, objects = _voc_objects(xml)
        file_name = info["filename"] or f"{voc_id}.jpg"
        image_id = _image_id(Path(voc_id), index, used)
        used.add(image_id)
        coco["images"].append(
            {"id": image_id, "file_name": file_name, "width": info["width"], "height": info["height"]}
        )
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            w, h = x1 - x0 + 1, y1 - y0 + 1  # VOC's boxes are 1-based and include their last pixel
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category[obj["name"]],
                    "bbox": [x0 - 1, y0 - 1, w, h],
                    "area": w * h,
                    "iscrowd": obj["difficult"],  # "difficult": ignored, as COCO's crowd boxes
                }
            )
    return coco


Reader = Callable[[], dict[str, Any]]
