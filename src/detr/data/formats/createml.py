"""Apple CreateML JSON: a list of ``{"image": name, "annotations": [{"label", "coordinates": {"x", "y", "width",
"height"}}]}`` with ``x, y`` the box's centre in pixels; one file for the dataset, or Roboflow's
``_annotations.createml.json`` in each ``train/ valid/ test/`` folder. Classes: the names found, sorted.
Ignored: any other key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import Box, Found, ImageIndex, Labelled, build, folder_split, found, refusal

FORMAT = "createml"
TITLE = "CreateML JSON"


def _head(path: Path) -> str:
    with path.open(errors="replace") as f:
        return f.read(2048).lstrip()


def _is_createml(path: Path) -> bool:
    head = _head(path)
    return head.startswith("[") and '"image"' in head and '"coordinates"' in head


def files(root: Path) -> list[Path]:
    """The CreateML files: ``root`` itself, else the JSON files in it or one folder down that are CreateML."""
    candidates = [root] if root.is_file() else sorted([*root.glob("*.json"), *root.glob("*/*.json")])
    return [p for p in candidates if p.suffix == ".json" and p.is_file() and _is_createml(p)]


def detect(root: Path) -> bool:
    """Whether ``root`` is (or holds) JSON files listing ``image`` and ``annotations`` with ``coordinates``."""
    return bool(files(root))


def _entries(path: Path) -> list[Labelled]:
    try:
        content: Any = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise refusal(TITLE, path, f"not valid JSON ({err})", "export it again") from err
    out = []
    for k, entry in enumerate(content):
        where = f"{path}: entry {k}"
        if not isinstance(entry, dict) or "image" not in entry:
            raise refusal(TITLE, where, "has no 'image'", 'each entry is {"image": name, "annotations": [...]}')
        labelled = Labelled(str(entry["image"]), where, folder=path.parent)
        for j, ann in enumerate(entry.get("annotations") or []):
            place = f"{where} annotation {j}"
            try:
                c = ann["coordinates"]
                cx, cy, w, h = (float(c[key]) for key in ("x", "y", "width", "height"))
                label = str(ann["label"])
            except (KeyError, TypeError, ValueError):
                raise refusal(
                    TITLE, place, "needs 'label' and 'coordinates' {x, y, width, height}", "give both (pixels)"
                ) from None
            labelled.boxes.append(Box(label, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), place))
        out.append(labelled)
    return out


def read(root: Path) -> Found:
    """The CreateML dataset at ``root`` (a file, or a folder of them; a split per ``train/ valid/ test/`` folder)."""
    paths = files(root)
    base = root.parent if root.is_file() else root
    names = sorted({folder_split(p, base) for p in paths})

    def read_all() -> dict:
        splits: dict[str, list[Labelled]] = {}
        for path in paths:
            splits.setdefault(folder_split(path, base), []).extend(_entries(path))
        return build(FORMAT, ImageIndex(base), splits)

    return found(FORMAT, paths[0] if len(paths) == 1 else base, base, names, read_all)
