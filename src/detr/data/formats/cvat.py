"""CVAT for images 1.1 XML: one ``annotations.xml`` (``<annotations>`` with ``<version>``, ``<meta>`` declaring the
``<labels>``, and an ``<image name width height>`` per image holding its shapes), as CVAT exports it beside an
``images/`` folder.

Read: ``<box xtl ytl xbr ybr>`` (pixels; a ``rotation`` gives the box around the turned rectangle) and
``<polygon points="x0,y0;x1,y1;...">`` (its box, and the polygon as its mask); the labels in the order ``<meta>``
declares them (else the names found, sorted); an image's ``subset`` (project exports) as its split, else no split.
Ignored, and reported: polylines, points, ellipses, cuboids, masks and tags. Ignored: attributes, ``occluded``,
``z_order``, ``source``, ``group_id``.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from .common import Box, Found, ImageIndex, Labelled, build, found, refusal, root_tag, split_name

FORMAT = "cvat"
TITLE = "CVAT for images 1.1 XML"
SHAPES_IGNORED = ("polyline", "points", "ellipse", "cuboid", "mask", "tag", "skeleton")


def annotation_file(root: Path) -> Path | None:
    """The CVAT XML file: ``root`` itself, else ``annotations.xml`` or another XML file whose root is
    ``<annotations>``, in ``root``."""
    candidates = [root] if root.is_file() else [root / "annotations.xml", *sorted(root.glob("*.xml"))]
    return next((p for p in candidates if p.suffix == ".xml" and p.is_file() and root_tag(p) == "annotations"), None)


def detect(root: Path) -> bool:
    """Whether ``root`` is (or holds) an XML file whose root element is ``<annotations>``."""
    return annotation_file(root) is not None


def _box(element: ET.Element, where: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(element.get(k, "nan")) for k in ("xtl", "ytl", "xbr", "ybr"))
    if any(math.isnan(v) for v in (x0, y0, x1, y1)):
        raise refusal(TITLE, where, "a <box> needs xtl, ytl, xbr and ybr", "give all four (pixels)")
    angle = math.radians(float(element.get("rotation", 0) or 0))
    if angle:  # turned about its centre: the box around the turned corners
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        dx, dy = (
            abs(hw * math.cos(angle)) + abs(hh * math.sin(angle)),
            abs(hw * math.sin(angle)) + abs(hh * math.cos(angle)),
        )
        return cx - dx, cy - dy, cx + dx, cy + dy
    return x0, y0, x1, y1


def read(root: Path) -> Found:
    """The CVAT dataset at ``root`` (the XML file, or the folder holding it and its images)."""
    xml = annotation_file(root)
    assert xml is not None
    base = xml.parent

    def read_all() -> dict:
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as err:
            raise refusal(TITLE, xml, f"not valid XML ({err})", "export the task again") from err
        declared = list(dict.fromkeys(n.text.strip() for n in tree.findall("meta//labels/label/name") if n.text))
        splits: dict[str, list[Labelled]] = {}
        problems: list[str] = []
        for k, image in enumerate(tree.findall("image")):
            name = image.get("name")
            if not name:
                raise refusal(TITLE, f"{xml}: <image> {k + 1}", "has no name", "give each <image> its file's name")
            element = f"{xml}: <image name={name!r}>"
            size = (int(image.get("width", 0)), int(image.get("height", 0)))
            labelled = Labelled(name, element, size=size if all(size) else None)
            for j, shape in enumerate(image, start=1):
                where = f"{element} <{shape.tag}> {j}"
                label = shape.get("label", "")
                if shape.tag == "box":
                    labelled.boxes.append(Box(label, _box(shape, where), where))
                elif shape.tag == "polygon":
                    try:
                        points = [float(v) for pair in shape.get("points", "").split(";") for v in pair.split(",")]
                    except ValueError:
                        points = []
                    if len(points) < 6 or len(points) % 2:
                        raise refusal(TITLE, where, "points must be 'x0,y0;x1,y1;...' (3 points or more)", "fix it")
                    xs, ys = points[0::2], points[1::2]
                    labelled.boxes.append(Box(label, (min(xs), min(ys), max(xs), max(ys)), where, [points]))
                elif shape.tag in SHAPES_IGNORED:
                    problems.append(f"{where}: a {shape.tag} is not an object box; ignored")
            split = split_name(image.get("subset", "")) or "all"
            splits.setdefault(split, []).append(labelled)
        return build(FORMAT, ImageIndex(base), splits or {"all": []}, declared or None, problems)

    tree_splits = {split_name(s) or "all" for s in _subsets(xml)} or {"all"}
    return found(FORMAT, xml, base, sorted(tree_splits), read_all)


def _subsets(xml: Path) -> set[str]:
    return {element.get("subset", "") for _, element in ET.iterparse(xml) if element.tag == "image"}
