"""LabelMe JSON: one file per image, ``{"shapes": [{"label", "points": [[x, y], ...], "shape_type"}], "imagePath",
"imageWidth", "imageHeight", ...}``, usually beside its image.

Read: ``rectangle`` shapes (two corners, in any order) as boxes, ``polygon`` shapes as their box and their mask;
the image by ``imagePath``'s file name (never the folders it names). Splits: the ``train/ val/ test/`` folders the
files are in, else the split lists beside them, else none. Classes: the names found, sorted. Ignored: ``imageData``
(the image is read from its file), ``flags``, ``group_id``, ``description``; other shape types (circles, lines,
points) are reported and ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import Box, Found, ImageIndex, Labelled, build, folder_split, found, listed_splits, refusal

FORMAT = "labelme"
TITLE = "LabelMe JSON"


def _is_labelme(path: Path) -> bool:
    with path.open(errors="replace") as f:
        head = f.read(4096).lstrip()
    return head.startswith("{") and '"shapes"' in head


def files(root: Path) -> list[Path]:
    """The LabelMe files: ``root`` itself, else every JSON file under it that is one."""
    candidates = [root] if root.is_file() else sorted(root.rglob("*.json"))
    return [p for p in candidates if p.suffix == ".json" and p.is_file() and _is_labelme(p)]


def detect(root: Path) -> bool:
    """Whether ``root`` is (or holds) JSON files with ``shapes`` (the first few looked at)."""
    candidates = [root] if root.is_file() else sorted(root.rglob("*.json"))[:5]
    return any(p.suffix == ".json" and p.is_file() and _is_labelme(p) for p in candidates)


def parse(path: Path, problems: list[str]) -> Labelled:
    """One LabelMe file's image, declared size and boxes (polygons also as masks)."""
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise refusal(TITLE, path, f"not valid JSON ({err})", "fix or delete the file") from err
    image = str(content.get("imagePath") or f"{path.stem}.jpg")
    size = (int(content.get("imageWidth") or 0), int(content.get("imageHeight") or 0))
    labelled = Labelled(image, str(path), size=size if all(size) else None, folder=path.parent)
    for k, shape in enumerate(content.get("shapes") or []):
        where = f"{path}: shape {k} ({shape.get('label')!r})"
        kind = shape.get("shape_type") or "polygon"
        try:
            points = [(float(x), float(y)) for x, y in shape["points"]]
            label = str(shape["label"])
        except (KeyError, TypeError, ValueError):
            raise refusal(TITLE, where, "needs 'label' and 'points' [[x, y], ...]", "give both (pixels)") from None
        xs, ys = [x for x, _ in points], [y for _, y in points]
        if kind == "rectangle" and len(points) == 2:
            labelled.boxes.append(Box(label, (min(xs), min(ys), max(xs), max(ys)), where))
        elif kind == "polygon" and len(points) >= 3:
            flat = [c for point in points for c in point]
            labelled.boxes.append(Box(label, (min(xs), min(ys), max(xs), max(ys)), where, [flat]))
        else:
            problems.append(f"{where}: a {kind} of {len(points)} points is not a box or polygon; ignored")
    return labelled


def read(root: Path) -> Found:
    """The LabelMe files at ``root`` (a file, or a folder of them and their images)."""
    paths = files(root)
    base = root.parent if root.is_file() else root

    def read_all() -> dict:
        problems: list[str] = []
        splits: dict[str, list] = {}
        for path in paths:
            splits.setdefault(folder_split(path, base), []).append(parse(path, problems))
        if list(splits) == ["all"]:
            splits = listed_splits(base, splits["all"]) or splits
        return build(FORMAT, ImageIndex(base), splits, problems=problems)

    names = sorted({folder_split(p, base) for p in paths})
    if names == ["all"]:
        names = list(listed_splits(base, [], names_only=True)) or names
    return found(FORMAT, paths[0] if len(paths) == 1 else base, base, names, read_all)
