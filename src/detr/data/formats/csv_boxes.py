"""CSV box tables: a row per box, the columns named in a header line. The TensorFlow Object Detection API's
and Roboflow's ``filename,width,height,class,xmin,ymin,xmax,ymax``; or any table naming the image (``filename``,
``image``, ``file``, ``path``...), the corners (``xmin ymin xmax ymax``, ``x0 y0 x1 y1``, ``x1 y1 x2 y2``,
``left top right bottom``) and the class (``class``, ``label``, ``category``, ``name``...), pixels.

One CSV per split, its name saying which (``train_labels.csv``, ``test_labels.csv``, ``valid.csv``) or in a split
folder (Roboflow's ``train/_annotations.csv``); a single CSV is a dataset without a split. A row whose box cells
are empty is an image without objects. The image is found by its file name in the dataset. Classes: the names
found, sorted. Ignored: other columns.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .common import FILE_COLUMNS, Box, Found, ImageIndex, Labelled, build, found, refusal, split_name

FORMAT = "csv"
TITLE = "CSV box table"
LABEL_COLUMNS = ("class", "label", "class_name", "category", "category_name", "name", "classname")
CORNERS = (
    ("xmin", "ymin", "xmax", "ymax"),
    ("x_min", "y_min", "x_max", "y_max"),
    ("x1", "y1", "x2", "y2"),
    ("x0", "y0", "x1", "y1"),
    ("left", "top", "right", "bottom"),
)
EXAMPLE = "filename,width,height,class,xmin,ymin,xmax,ymax (TensorFlow / Roboflow) or image,x0,y0,x1,y1,label"


def columns(header: list[str]) -> dict[str, int] | None:
    """Where the image, the corners and the class are in a header line (``file x0 y0 x1 y1 label``), or None."""
    named = [h.strip().lower() for h in header]
    corners = next((c for c in CORNERS if all(k in named for k in c)), None)
    image = next((c for c in FILE_COLUMNS if c in named and c not in (corners or ())), None)
    label = next((c for c in LABEL_COLUMNS if c in named and c != image), None)
    if corners is None or image is None or label is None:
        return None
    found = {"image": named.index(image), "label": named.index(label)}
    found.update({k: named.index(c) for k, c in zip(("x0", "y0", "x1", "y1"), corners)})
    for key in ("width", "height"):
        if key in named:
            found[key] = named.index(key)
    return found


def _header(path: Path) -> list[str]:
    with path.open(newline="", errors="replace") as f:
        return next(csv.reader(f), [])


def files(root: Path) -> list[Path]:
    """The box tables: ``root`` itself, else the CSV files in it, one folder down or in ``data/``, whose header
    names a box table's columns."""
    if root.is_file():
        return [root] if root.suffix.lower() == ".csv" else []
    candidates = sorted({*root.glob("*.csv"), *root.glob("*/*.csv")})
    return [p for p in candidates if columns(_header(p)) is not None]


def detect(root: Path) -> bool:
    """Whether ``root`` is a CSV file, or a folder holding CSV box tables."""
    return bool(files(root))


def _split(path: Path) -> str:
    return split_name(path.stem, words=True) or split_name(path.parent.name) or "all"


def _rows(path: Path) -> list[Labelled]:
    with path.open(newline="", errors="replace") as f:
        rows = list(csv.reader(f))
    where = columns(rows[0]) if rows else None
    if where is None:
        raise refusal(
            TITLE, path, f"its first line {rows[0] if rows else '(empty)'} does not name the image, box and class "
            "columns", f"give it a header line such as {EXAMPLE}",
        )  # fmt: skip
    by_image: dict[str, Labelled] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        place = f"{path}:{line}"
        try:
            image = row[where["image"]].strip()
            size = (int(float(row[where["width"]])), int(float(row[where["height"]]))) if "width" in where else None
            cells = [row[where[k]].strip() for k in ("x0", "y0", "x1", "y1")]
            box = tuple(float(c) for c in cells) if all(cells) else None
            label = row[where["label"]].strip()
        except (IndexError, ValueError):
            raise refusal(TITLE, place, f"cannot read the row {row}", f"give every row the columns {rows[0]}") from None
        labelled = by_image.setdefault(image, Labelled(image, place, size=size, folder=path.parent))
        if box is not None:
            labelled.boxes.append(Box(label, box, place))  # type: ignore[arg-type]
    return list(by_image.values())


def read(root: Path) -> Found:
    """The CSV dataset at ``root`` (a file, or a folder holding the tables and the images)."""
    paths = files(root)
    base = root.parent if root.is_file() else root

    def read_all() -> dict:
        splits: dict[str, list[Labelled]] = {}
        for path in paths:
            splits.setdefault(_split(path), []).extend(_rows(path))
        return build(FORMAT, ImageIndex(base), splits)

    return found(FORMAT, paths[0] if len(paths) == 1 else base, base, sorted({_split(p) for p in paths}), read_all)
