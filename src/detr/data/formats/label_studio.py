"""Label Studio JSON export: a list of tasks ``{"data": {"image": url}, "annotations": [{"result": [...]}]}``,
each result ``{"type": "rectanglelabels" | "polygonlabels", "original_width", "original_height", "value": {...}}``
with ``x, y, width, height`` (the top-left corner and size, in percent of the image; ``rotation`` in degrees about
that corner) or ``points`` ``[[x, y], ...]`` (percent).

The image is the file of the URL's name in the folder of the export (Label Studio's upload prefix ``1a2b3c4d-`` and
a local-files ``?d=`` path are understood). Read: each task's first annotation that was not cancelled; rectangles
(a turned one as the box around it) and polygons (their box, and the polygon as its mask). Classes: the names found,
sorted. A result without ``original_width`` / ``original_height`` (older exports) is in percent of the image's own
size. Ignored: predictions, the other annotations of a task, and other result types (choices, keypoints, brushes:
reported). The JSON-MIN export is read by :mod:`.label_studio_min`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from .common import (
    IMAGE_SUFFIXES,
    Box,
    Found,
    ImageIndex,
    Labelled,
    build,
    found,
    image_size,
    refusal,
    split_name,
)

FORMAT = "label-studio"
TITLE = "Label Studio JSON export"
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio's uploads: <8 hex digits>-<original name>
KINDS = ("rectanglelabels", "polygonlabels")  # the region types read (as boxes; polygons also as masks)


def head(path: Path) -> str:
    """The start of a JSON file: enough for a first task or record with many regions."""
    with path.open(errors="replace") as f:
        return f.read(65536).lstrip()


def is_export(path: Path) -> bool:
    """Whether the JSON file at ``path`` starts as a JSON export does: a list of tasks with data and annotations."""
    start = head(path)
    return start.startswith("[") and '"data"' in start and ('"annotations"' in start or '"completions"' in start)


def files(root: Path) -> list[Path]:
    """The export files: ``root`` itself, else its JSON files (and one folder down) that are Label Studio exports."""
    candidates = [root] if root.is_file() else sorted([*root.glob("*.json"), *root.glob("*/*.json")])
    return [p for p in candidates if p.suffix == ".json" and p.is_file() and is_export(p)]


def detect(root: Path) -> bool:
    """Whether ``root`` is (or holds) a JSON list of tasks with ``data`` and ``annotations``."""
    return bool(files(root))


def image_name(url: str) -> str:
    """The file name a task's image URL refers to (local-files ``?d=`` path; upload prefix removed)."""
    parsed = urlparse(url)
    local = parse_qs(parsed.query).get("d")
    name = Path(unquote(local[0] if local else parsed.path)).name
    return UPLOAD_PREFIX.sub("", name) if parsed.path.startswith("/data/upload/") else name


def task_image(data: dict[str, Any]) -> str | None:
    """The URL of a task's image: the first of its ``data`` values that names an image file."""
    values = [v for v in data.values() if isinstance(v, str)]
    return next((v for v in values if Path(image_name(v)).suffix.lower() in IMAGE_SUFFIXES), None)


def _pixels(kind: str, value: dict[str, Any], width: float, height: float) -> tuple[str, tuple, Any]:
    if kind == "rectanglelabels":
        x, y = value["x"] * width / 100, value["y"] * height / 100
        w, h = value["width"] * width / 100, value["height"] * height / 100
        angle = math.radians(float(value.get("rotation") or 0))
        corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]  # turned about the top-left corner
        xs = [x + u * math.cos(angle) - v * math.sin(angle) for u, v in corners]
        ys = [y + u * math.sin(angle) + v * math.cos(angle) for u, v in corners]
        return str(value["rectanglelabels"][0]), (min(xs), min(ys), max(xs), max(ys)), None
    points = [c for px, py in value["points"] for c in (px * width / 100, py * height / 100)]
    xs, ys = points[0::2], points[1::2]
    return str(value["polygonlabels"][0]), (min(xs), min(ys), max(xs), max(ys)), [points]


def add_region(
    labelled: Labelled,
    kind: Any,
    value: dict[str, Any],
    size: tuple[Any, Any],
    where: str,
    index: ImageIndex,
    problems: list[str],
    title: str = TITLE,
) -> None:
    """Add a ``kind`` region (``value``'s ``x, y, width, height`` or ``points`` in percent of ``size``, the
    region's ``(original_width, original_height)``) to ``labelled`` as a box in pixels (a polygon also as its
    mask). Older exports write no original size: the percentages are then of the image's own. Another kind is
    reported in ``problems`` and ignored; a region without its numbers is refused, naming ``where`` (read as
    ``title``)."""
    if kind not in KINDS:
        problems.append(f"{where}: a {kind} region is not a box or polygon; ignored")
        return
    if size[0] is None or size[1] is None:
        image, _ = index.find(labelled.image, labelled.folder)
        if image is None:
            return  # the image is missing: build() reports it
        size = image_size(image)
    try:
        label, box, polygon = _pixels(kind, value, float(size[0]), float(size[1]))
        labelled.size = labelled.size or (int(size[0]), int(size[1]))
    except (KeyError, IndexError, TypeError, ValueError):
        needs = "x, y, width, height" if kind == "rectanglelabels" else "points"
        raise refusal(title, where, f"a {kind} region needs its label and {needs}", "export it again") from None
    labelled.boxes.append(Box(label, box, where, polygon))


def _tasks(path: Path, problems: list[str], index: ImageIndex) -> list[Labelled]:
    try:
        tasks = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise refusal(TITLE, path, f"not valid JSON ({err})", "export it again") from err
    out = []
    for k, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', k)}"
        url = task_image(task.get("data") or {})
        if url is None:
            raise refusal(TITLE, where, "its 'data' names no image file", "export the project's image tasks")
        labelled = Labelled(image_name(url), where, folder=path.parent)
        done = [a for a in task.get("annotations") or task.get("completions") or [] if not a.get("was_cancelled")]
        for j, result in enumerate(done[0].get("result", []) if done else []):
            size = (result.get("original_width"), result.get("original_height"))
            place = f"{where} result {result.get('id', j)}"
            add_region(labelled, result.get("type"), result.get("value") or {}, size, place, index, problems)
        out.append(labelled)
    return out


def read(root: Path) -> Found:
    """The Label Studio export at ``root`` (a file, or a folder of them with the images; a split per file whose
    name says one, e.g. ``train.json``)."""
    return read_exports(FORMAT, root, files(root), _tasks)


def read_exports(
    format: str, root: Path, paths: list[Path], parse: Callable[[Path, list[str], ImageIndex], list[Labelled]]
) -> Found:
    """The export files ``paths`` found at ``root``, each read by ``parse`` (its images; problems to the list; the
    dataset's images to find them by); a split per file whose name (or folder) says one, else ``all``."""
    base = root.parent if root.is_file() else root
    split_of = {p: split_name(p.stem, words=True) or split_name(p.parent.name) or "all" for p in paths}

    def read_all() -> dict:
        index = ImageIndex(base)
        problems: list[str] = []
        splits: dict[str, list[Labelled]] = {}
        for path in paths:
            splits.setdefault(split_of[path], []).extend(parse(path, problems, index))
        return build(format, index, splits, problems=problems)

    return found(format, paths[0] if len(paths) == 1 else base, base, sorted(set(split_of.values())), read_all)
