"""Label Studio JSON export: a list of tasks ``{"data": {"image": url}, "annotations": [{"result": [...]}]}``,
each result ``{"type": "rectanglelabels" | "polygonlabels", "original_width", "original_height", "value": {...}}``
with ``x, y, width, height`` (the top-left corner and size, in percent of the image; ``rotation`` in degrees about
that corner) or ``points`` ``[[x, y], ...]`` (percent).

The image is the file of the URL's name in the folder of the export (Label Studio's upload prefix ``1a2b3c4d-`` and
a local-files ``?d=`` path are understood). Read: each task's first annotation that was not cancelled; rectangles
(a turned one as the box around it) and polygons (their box, and the polygon as its mask). Classes: the names found,
sorted. Ignored: predictions, the other annotations of a task, and other result types (choices, keypoints,
brushes: reported).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from .common import IMAGE_SUFFIXES, Box, Found, ImageIndex, Labelled, build, found, refusal, split_name

FORMAT = "label-studio"
TITLE = "Label Studio JSON export"
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio's uploads: <8 hex digits>-<original name>


def _is_export(path: Path) -> bool:
    with path.open(errors="replace") as f:
        head = f.read(4096).lstrip()
    return head.startswith("[") and '"data"' in head and ('"annotations"' in head or '"completions"' in head)


def files(root: Path) -> list[Path]:
    """The export files: ``root`` itself, else its JSON files (and one folder down) that are Label Studio exports."""
    candidates = [root] if root.is_file() else sorted([*root.glob("*.json"), *root.glob("*/*.json")])
    return [p for p in candidates if p.suffix == ".json" and p.is_file() and _is_export(p)]


def detect(root: Path) -> bool:
    """Whether ``root`` is (or holds) a JSON list of tasks with ``data`` and ``annotations``."""
    return bool(files(root))


def image_name(url: str) -> str:
    """The file name a task's image URL refers to (local-files ``?d=`` path; upload prefix removed)."""
    parsed = urlparse(url)
    local = parse_qs(parsed.query).get("d")
    name = Path(unquote(local[0] if local else parsed.path)).name
    return UPLOAD_PREFIX.sub("", name) if parsed.path.startswith("/data/upload/") else name


def _task_image(task: dict[str, Any]) -> str | None:
    values = [v for v in (task.get("data") or {}).values() if isinstance(v, str)]
    return next((v for v in values if Path(urlparse(v).path).suffix.lower() in IMAGE_SUFFIXES), None)


def _shape(result: dict[str, Any], where: str) -> tuple[str, tuple[float, float, float, float], Any] | None:
    value, kind = result.get("value") or {}, result.get("type")
    try:
        width, height = float(result["original_width"]), float(result["original_height"])
        if kind == "rectanglelabels":
            x, y = value["x"] * width / 100, value["y"] * height / 100
            w, h = value["width"] * width / 100, value["height"] * height / 100
            angle = math.radians(float(value.get("rotation") or 0))
            corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]  # turned about the top-left corner
            xs = [x + u * math.cos(angle) - v * math.sin(angle) for u, v in corners]
            ys = [y + u * math.sin(angle) + v * math.cos(angle) for u, v in corners]
            return str(value["rectanglelabels"][0]), (min(xs), min(ys), max(xs), max(ys)), None
        if kind == "polygonlabels":
            points = [c for px, py in value["points"] for c in (px * width / 100, py * height / 100)]
            xs, ys = points[0::2], points[1::2]
            return str(value["polygonlabels"][0]), (min(xs), min(ys), max(xs), max(ys)), [points]
    except (KeyError, IndexError, TypeError, ValueError):
        raise refusal(
            TITLE,
            where,
            f"a {kind} result needs original_width, original_height and value with its label and "
            + ("x, y, width, height" if kind == "rectanglelabels" else "points"),
            "export it again as JSON (not JSON-MIN)",
        ) from None
    return None


def _tasks(path: Path, problems: list[str]) -> list[Labelled]:
    try:
        tasks = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise refusal(TITLE, path, f"not valid JSON ({err})", "export it again") from err
    out = []
    for k, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', k)}"
        url = _task_image(task)
        if url is None:
            raise refusal(TITLE, where, "its 'data' names no image file", "export the project's image tasks")
        labelled = Labelled(image_name(url), where, folder=path.parent)
        done = [a for a in task.get("annotations") or task.get("completions") or [] if not a.get("was_cancelled")]
        for j, result in enumerate(done[0].get("result", []) if done else []):
            place = f"{where} result {result.get('id', j)}"
            shape = _shape(result, place)
            if shape is None:
                problems.append(f"{place}: a {result.get('type')} result is not a box or polygon; ignored")
                continue
            label, box, polygon = shape
            labelled.boxes.append(Box(label, box, place, polygon))
            size = (result.get("original_width"), result.get("original_height"))
            labelled.size = labelled.size or (int(size[0]), int(size[1]))
        out.append(labelled)
    return out


def read(root: Path) -> Found:
    """The Label Studio export at ``root`` (a file, or a folder of them with the images; a split per file whose
    name says one, e.g. ``train.json``)."""
    paths = files(root)
    base = root.parent if root.is_file() else root
    split_of = {p: split_name(p.stem, words=True) or split_name(p.parent.name) or "all" for p in paths}

    def read_all() -> dict:
        problems: list[str] = []
        splits: dict[str, list[Labelled]] = {}
        for path in paths:
            splits.setdefault(split_of[path], []).extend(_tasks(path, problems))
        return build(FORMAT, ImageIndex(base), splits, problems=problems)

    return found(FORMAT, paths[0] if len(paths) == 1 else base, base, sorted(set(split_of.values())), read_all)
