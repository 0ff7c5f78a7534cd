"""Label Studio JSON-MIN export: a list of records, one per annotation, each the task's data fields (``"image"``: its
URL), its ``id``, then per labelling control (named as in the labelling config, e.g. ``"label"``) a list of regions
``{"x", "y", "width", "height", "rotation", "rectanglelabels": [name], "original_width", "original_height"}`` or
``{"points": [[x, y], ...], "polygonlabels": [name], ...}`` in percent of the image, and ``annotator``,
``annotation_id``, ``created_at``, ``updated_at``, ``lead_time``.

Read as :mod:`.label_studio` reads the JSON export (the image by the URL's file name, rectangles and polygons, a split
per file whose name says one); a task that appears in several records (several annotations; Label Studio writes the
newest first) is read from its first. Older exports without ``original_width`` / ``original_height``: the percentages
are of the image's own size. Ignored: the other records of a task, annotator and times, other data fields; other
region types (choices, keypoints, brushes: reported).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import Found, ImageIndex, Labelled, refusal
from .label_studio import KINDS, add_region, head, image_name, read_exports, task_image

FORMAT = "label-studio-json-min"
TITLE = "Label Studio JSON-MIN export"
# what a record holds besides the task's data and its regions
RECORD_KEYS = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement")


def _is_min_export(path: Path) -> bool:
    start = head(path)
    marks = ('"annotation_id"', '"rectanglelabels"', '"polygonlabels"')
    tasks = ('"annotations"', '"completions"')  # the JSON export's
    return start.startswith("[") and any(m in start for m in marks) and not any(t in start for t in tasks)


def files(root: Path) -> list[Path]:
    """The JSON-MIN files: ``root`` itself, else its JSON files (and one folder down) that are JSON-MIN exports."""
    candidates = [root] if root.is_file() else sorted([*root.glob("*.json"), *root.glob("*/*.json")])
    return [p for p in candidates if p.suffix == ".json" and p.is_file() and _is_min_export(p)]


def detect(root: Path) -> bool:
    """Whether ``root`` is (or holds) a JSON list of records with ``annotation_id`` or rectangle or polygon labels
    (and no tasks' ``annotations``: the JSON export, read by :mod:`.label_studio`)."""
    return bool(files(root))


def _records(path: Path, problems: list[str], index: ImageIndex) -> list[Labelled]:
    try:
        records: Any = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise refusal(TITLE, path, f"not valid JSON ({err})", "export it again") from err
    out: list[Labelled] = []
    seen: set[Any] = set()
    for k, record in enumerate(records):
        task = record.get("id", f"#{k}") if isinstance(record, dict) else k
        where = f"{path}: record {k} (task {task})"
        url = task_image(record) if isinstance(record, dict) else None
        if url is None:
            raise refusal(TITLE, where, "names no image file", "export the project's image tasks")
        if task in seen:
            continue  # another annotation of a task read already (the newest comes first)
        seen.add(task)
        labelled = Labelled(image_name(url), where, folder=path.parent)
        for control, regions in record.items():
            if control in RECORD_KEYS or not isinstance(regions, list):
                continue
            for j, value in enumerate(v for v in regions if isinstance(v, dict)):
                kind = next((key for key in KINDS if key in value), None)  # else what the region says it is:
                kind = kind or "/".join(key for key in value if key.endswith("labels") or key == "choices") or "unknown"
                size = (value.get("original_width"), value.get("original_height"))
                add_region(labelled, kind, value, size, f"{where} {control} {j}", index, problems, TITLE)
        out.append(labelled)
    return out


def read(root: Path) -> Found:
    """The Label Studio JSON-MIN export at ``root`` (a file, or a folder of them with the images)."""
    return read_exports(FORMAT, root, files(root), _records)
