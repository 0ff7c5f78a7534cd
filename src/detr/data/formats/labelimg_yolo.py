"""LabelImg's YOLO mode: a ``name.txt`` beside each image (or in the folder chosen to save in), a line
``class cx cy w h`` (fractions of the image size) per object, and a ``classes.txt`` in the same folder naming the
classes, one a line, its order their ids.

The lines are read as :func:`.yolo.label_line` reads Ultralytics' (a polygon line as its box). The image is the one of
the text file's name beside it, else the one of that name in the dataset. Splits: the ``train/ val/ test/`` folders
the files are in, else the split lists beside them, else none. Reported, each with its file and line, and left out: a
line that is not ``class cx cy w h`` numbers, a class beyond ``classes.txt``, numbers outside 0..1; and an image
without a text file. Ignored: text files that are not label lines (``readme.txt``, lists of image paths).
"""

from __future__ import annotations

from pathlib import Path

from .common import (
    IMAGE_SUFFIXES,
    Box,
    DatasetError,
    Found,
    ImageIndex,
    Labelled,
    build,
    folder_split,
    found,
    image_size,
    listed_splits,
    refusal,
    split_lists,
)
from .yolo import label_line

FORMAT = "labelimg-yolo"
TITLE = "LabelImg YOLO"
CLASSES = "classes.txt"


def _first_fields(path: Path) -> list[str] | None:
    with path.open(errors="replace") as f:
        return next((line.split() for line in f if line.strip()), None)


def _numbers(fields: list[str]) -> bool:
    try:
        return fields[0].isdigit() and len([float(v) for v in fields]) >= 5
    except ValueError:
        return False


def _is_label_file(path: Path, stems: set[str]) -> bool:
    """A text file of label lines: one named as an image is, an empty one, or one whose first line is numbers."""
    if path.name == CLASSES or not path.is_file():
        return False
    first = _first_fields(path)
    return path.stem in stems or first is None or _numbers(first)


def _classes_files(root: Path) -> list[Path]:
    return [root] if root.is_file() and root.name == CLASSES else sorted(root.rglob(CLASSES)) if root.is_dir() else []


def label_files(classes: Path, stems: set[str]) -> list[Path]:
    """The label files beside ``classes`` (a ``classes.txt``); ``stems``: the dataset's image names without suffix."""
    return [p for p in sorted(classes.parent.glob("*.txt")) if _is_label_file(p, stems)]


def detect(root: Path) -> bool:
    """Whether ``root`` is (or holds) a ``classes.txt`` with a text file beside it that is named as an image beside it
    or whose first line is ``class cx cy w h`` numbers."""
    for classes in _classes_files(root)[:5]:
        stems = {p.stem for p in classes.parent.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        for path in classes.parent.glob("*.txt"):
            if path.name != CLASSES and path.is_file() and (path.stem in stems or _numbers(_first_fields(path) or [])):
                return True
    return False


def _has_split_lists(base: Path) -> bool:
    """Whether the dataset has lists of its splits' images (``train.txt``) that are not label files named so."""
    lists = split_lists(base)
    return bool(lists) and not any(_is_label_file(p, set()) for p in lists.values() if p.suffix == ".txt")


def _names(paths: list[Path]) -> list[str]:
    lists = {path: [line.strip() for line in path.read_text().splitlines() if line.strip()] for path in paths}
    first, names = next(iter(lists.items()))
    for path, other in lists.items():
        if other != names:
            raise refusal(TITLE, path, f"names other classes than {first} ({other} vs {names})",
                          "make every classes.txt the same list, in the same order")  # fmt: skip
    if not names:
        raise refusal(TITLE, first, "names no class", "write one class name a line, in the order of their ids")
    return names


def parse(path: Path, names: list[str], index: ImageIndex, problems: list[str]) -> Labelled:
    """One label file's image and boxes in pixels (the image's own size); bad lines go to ``problems``."""
    beside = [p for p in index.by_stem.get(path.stem, []) if p.parent == path.parent]
    name = beside[0].relative_to(index.root).as_posix() if len(beside) == 1 else path.stem
    labelled = Labelled(name, str(path), folder=path.parent)
    image, _ = index.find(name, path.parent)
    if image is None:
        return labelled  # build() reports the missing (or duplicated) image
    width, height = image_size(image)
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            parsed = label_line(line, where, names, str(path.parent / CLASSES))
        except DatasetError as err:
            problems.append(f"{err}; left out")
            continue
        if parsed is not None:
            cls, (x0, y0, x1, y1) = parsed
            labelled.boxes.append(Box(names[cls], (x0 * width, y0 * height, x1 * width, y1 * height), where))
    return labelled


def read(root: Path) -> Found:
    """The LabelImg YOLO dataset at ``root`` (a folder, or its ``classes.txt``)."""
    base = root.parent if root.is_file() else root
    classes = _classes_files(root)

    def labels(index: ImageIndex) -> list[Path]:
        return [p for c in classes for p in label_files(c, set(index.by_stem))]

    def read_all() -> dict:
        index = ImageIndex(base)
        problems: list[str] = []
        names = _names(classes)
        splits: dict[str, list[Labelled]] = {}
        for path in labels(index):
            splits.setdefault(folder_split(path, base), []).append(parse(path, names, index, problems))
        if list(splits) == ["all"] and _has_split_lists(base):
            splits = listed_splits(base, splits["all"]) or splits
        return build(FORMAT, index, splits, names, problems)

    split_names = sorted({folder_split(c, base) for c in classes})
    if split_names == ["all"] and _has_split_lists(base):
        split_names = list(listed_splits(base, [], names_only=True))
    return found(FORMAT, classes[0] if len(classes) == 1 else base, base, split_names, read_all)
