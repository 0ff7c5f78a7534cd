"""Pascal VOC XML in any folder shape: one ``<annotation>`` file per image with its ``<filename>``, ``<size>`` and
``<object>``\\ s (``<name>``, ``<difficult>``, ``<bndbox>`` ``xmin ymin xmax ymax``, 1-based, last pixel
included).

Found wherever the XML files are: beside the images (LabelImg), in ``Annotations/`` (or ``annotations/``,
``labels/``, ``xml/``) beside ``JPEGImages/`` (or ``images/``), in Roboflow's ``train/`` ``valid/`` ``test/``
folders, or in a ``VOCdevkit/VOC20xx`` folder. The image is the file named by ``<filename>`` in the dataset
(never ``<path>``, a path on the annotator's machine); its own size wins over ``<size>``. Splits: the
``ImageSets/Main/<split>.txt`` lists, else the split folders the files are in, else split lists beside the data
(``train_labels.csv``, ``test.txt``, ...), else none. ``difficult`` objects become COCO's crowd boxes (ignored in
training and evaluation); categories are the names found, sorted. Ignored: ``<path>``, ``<source>``,
``<segmented>``, ``<pose>``, ``<truncated>``, ``<part>``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .common import (
    Box,
    DatasetError,
    Found,
    ImageIndex,
    Labelled,
    build,
    folder_split,
    found,
    listed_splits,
    refusal,
    root_tag,
)

FORMAT = "voc"
TITLE = "Pascal VOC XML"
VOC_ALIASES = {"train": ("train",), "val": ("val",), "trainval": ("trainval",), "test": ("test",)}


def voc_root(root: Path) -> Path | None:
    """The folder holding ``Annotations/`` and ``JPEGImages/`` (root, or a ``VOC20xx`` folder inside it or inside
    its ``VOCdevkit``), if any."""
    candidates = [root, *sorted(root.glob("VOC*")), *sorted(root.glob("VOCdevkit/VOC*"))] if root.is_dir() else []
    for folder in candidates:
        if (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir():
            return folder
    return None


def _is_voc(xml: Path) -> bool:
    return root_tag(xml) == "annotation"


def _xml_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.xml") if p.is_file())


def detect(root: Path) -> bool:
    """Whether ``root`` is a folder holding Pascal VOC XML files (the first few looked at)."""
    return root.is_dir() and any(_is_voc(xml) for xml in _xml_files(root)[:5])


def parse(xml: Path) -> Labelled:
    """One VOC XML file's image name, declared size and boxes (pixels, 0-based: ``xmin - 1, ymin - 1, xmax, ymax``)."""
    try:
        tree = ET.parse(xml).getroot()
    except ET.ParseError as err:
        raise refusal(TITLE, xml, f"not valid XML ({err})", "fix or delete the file") from err
    width, height = (int(float(tree.findtext(f"size/{k}") or 0)) for k in ("width", "height"))
    name = (tree.findtext("filename") or "").strip() or xml.stem  # no <filename>: the image of the same stem
    labelled = Labelled(name, str(xml), size=(width, height) if width and height else None, folder=xml.parent)
    for k, obj in enumerate(tree.findall("object"), start=1):
        where = f"{xml}: <object> {k}"
        try:
            box = [float(obj.findtext(f"bndbox/{c}")) for c in ("xmin", "ymin", "xmax", "ymax")]
            label = obj.findtext("name").strip()
        except (TypeError, ValueError, AttributeError):
            raise refusal(
                TITLE, where, "has no <name> or no numeric <bndbox> xmin, ymin, xmax, ymax", "give it both"
            ) from None
        difficult = int(float(obj.findtext("difficult") or 0))
        labelled.boxes.append(Box(label, (box[0] - 1, box[1] - 1, box[2], box[3]), where, crowd=difficult))
    return labelled


def read(root: Path) -> Found:
    """The VOC dataset at ``root``, its splits read together (see the module's text for where they come from)."""
    devkit = voc_root(root)
    base = devkit or root
    listing = base / "ImageSets" / "Main"
    listed = (
        {alias: listing / f"{alias}.txt" for aliases in VOC_ALIASES.values() for alias in aliases} if devkit else {}
    )
    listed = {split: path for split, path in listed.items() if path.is_file()}
    if listed:
        splits = {
            split: [
                base / "Annotations" / f"{line.split()[0]}.xml"
                for line in path.read_text().splitlines()
                if line.strip()
            ]
            for split, path in listed.items()
        }
    else:
        splits = {}
        for xml in (x for x in _xml_files(base) if _is_voc(x)):
            splits.setdefault(folder_split(xml, base), []).append(xml)
    source = listing if listed else base

    def read_all() -> dict:
        for xmls in splits.values():
            missing = [x for x in xmls if not x.is_file()]
            if missing:
                raise DatasetError(f"annotation file not found: {missing[0]} (listed in {source}); "
                                   "add it or take its id out of the list")  # fmt: skip
        labelled = {split: [parse(xml) for xml in xmls] for split, xmls in splits.items()}
        if list(labelled) == ["all"]:  # no split of its own: split lists beside the data, if any
            labelled = listed_splits(base, labelled["all"]) or labelled
        return build(FORMAT, ImageIndex(base), labelled)

    names = list(splits)
    if names == ["all"]:
        names = list(listed_splits(base, [], names_only=True)) or names
    return found(FORMAT, source, base, names, read_all)
