"""Datasets as annotation tools export them: each written here in the tool's own file layout (its documented field
names and coordinate conventions), read back and compared with the boxes it was written from, in pixels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detr.cli import main
from detr.data import CocoDetection, DatasetError, find_split
from detr.data.formats import recognise
from detr.data.formats.common import hashed_part, in_validation

# the truth every test writes in its tool's form: image -> (size, [(class, x0, y0, x1, y1) in pixels])
TRUTH = {
    "a.jpg": ((64, 48), [("cat", 10, 5, 30, 25), ("dog", 40, 10, 60, 40)]),
    "b.jpg": ((64, 48), [("dog", 0, 0, 20, 16)]),
    "c.jpg": ((40, 30), [("cat", 5, 6, 35, 29)]),
}


def write_images(folder: Path, names=TRUTH) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        size = TRUTH[name][0]
        Image.new("RGB", size, (90, 120, 150)).save(folder / name)


def read_back(root: Path) -> dict[str, list]:
    """Every split of the dataset at ``root``: image file name -> sorted (class, x0, y0, x1, y1), and the format."""
    found = recognise(root)
    assert found is not None, f"{root} not recognised"
    out = {}
    for read in found.splits.values():
        coco = read()
        names = {c["id"]: c["name"] for c in coco["categories"]}
        sizes = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
        files = {i["id"]: Path(i["file_name"]).name for i in coco["images"]}
        for image_id, name in files.items():
            out.setdefault(name, [])
            assert sizes[image_id] == TRUTH[name][0]
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            out[files[ann["image_id"]]].append((names[ann["category_id"]], x, y, x + w, y + h))
    return {k: sorted(v) for k, v in out.items()}


def assert_truth(root: Path, tolerance: float = 1e-6, images=TRUTH) -> None:
    got = read_back(root)
    assert sorted(got) == sorted(images)
    for name in images:
        want = sorted(TRUTH[name][1])
        assert [b[0] for b in got[name]] == [b[0] for b in want], name
        assert np.allclose([b[1:] for b in got[name]], [b[1:] for b in want], atol=tolerance), (name, got[name])


def voc_xml(name: str, size, objects, path="C:/Users/annotator/Pictures") -> str:
    """An XML file as LabelImg writes it (1-based pixel corners; <path> from the annotator's machine)."""
    body = "".join(
        f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, x0, y0, x1, y1 in objects
    )
    return (
        f"<annotation><folder>images</folder><filename>{name}</filename><path>{path}/{name}</path>"
        f"<source><database>Unknown</database></source><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size><segmented>0</segmented>{body}</annotation>"
    )


@pytest.mark.parametrize("shape", ["labelimg", "annotations_beside_images", "roboflow"])
def test_pascal_voc_xml_in_any_folder_shape(tmp_path, shape):
    for name, (size, objects) in TRUTH.items():
        if shape == "labelimg":  # the XML beside its image
            image_dir = xml_dir = tmp_path
        elif shape == "annotations_beside_images":
            image_dir, xml_dir = tmp_path / "images", tmp_path / "annotations"
        else:  # Roboflow: train/ valid/ folders of image + XML
            image_dir = xml_dir = tmp_path / ("valid" if name == "c.jpg" else "train")
        write_images(image_dir, [name])
        xml_dir.mkdir(parents=True, exist_ok=True)
        (xml_dir / f"{Path(name).stem}.xml").write_text(voc_xml(name, size, objects))
    assert_truth(tmp_path)
    if shape == "roboflow":
        assert CocoDetection(tmp_path, "val").images[0]["file_name"] == "valid/c.jpg"


def test_voc_size_that_disagrees_is_reported_and_the_image_wins(tmp_path, capsys):
    write_images(tmp_path / "JPEGImages")
    (tmp_path / "Annotations").mkdir()
    for name, (size, objects) in TRUTH.items():
        declared = (size[0] * 2, size[1]) if name == "b.jpg" else size
        (tmp_path / "Annotations" / f"{Path(name).stem}.xml").write_text(voc_xml(name, declared, objects))
    assert_truth(tmp_path)
    assert main(["check-data", str(tmp_path), "--plot", str(tmp_path.parent / "plot.png")]) == 0
    out = capsys.readouterr().out
    assert "b.xml: declares the image 128x48 but b.jpg is 64x48; the image's size is used" in out


def test_the_published_200_image_voc_layout_takes_its_split_from_the_csv_lists(tmp_path):
    """The raccoon dataset's shape: images/, annotations/ (one XML per image), data/train_labels.csv and
    test_labels.csv (TensorFlow's tables, which here only say the split)."""
    write_images(tmp_path / "images")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "data").mkdir()
    for name, (size, objects) in TRUTH.items():
        (tmp_path / "annotations" / f"{Path(name).stem}.xml").write_text(voc_xml(name, size, objects))
    for split, names in (("train", ["a.jpg", "b.jpg"]), ("test", ["c.jpg"])):
        rows = [["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]]
        rows += [[n, *TRUTH[n][0], c, x0, y0, x1, y1] for n in names for c, x0, y0, x1, y1 in TRUTH[n][1]]
        with open(tmp_path / "data" / f"{split}_labels.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    found = recognise(tmp_path)
    assert found.format == "voc" and sorted(found.splits) == ["test", "train"]
    assert [i["file_name"] for i in CocoDetection(tmp_path, "test").images] == ["images/c.jpg"]
    assert_truth(tmp_path)


def write_tf_csv(root: Path) -> None:
    """TensorFlow Object Detection API tables: data/<split>_labels.csv, images in images/<split>/."""
    for split, names in (("train", ["a.jpg", "b.jpg"]), ("test", ["c.jpg"])):
        write_images(root / "images" / split, names)
        rows = [["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]]
        rows += [[n, *TRUTH[n][0], c, x0, y0, x1, y1] for n in names for c, x0, y0, x1, y1 in TRUTH[n][1]]
        (root / "data").mkdir(exist_ok=True)
        with open(root / "data" / f"{split}_labels.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)


def test_tensorflow_csv_tables(tmp_path):
    write_tf_csv(tmp_path)
    assert recognise(tmp_path).format == "csv"
    assert_truth(tmp_path)


def test_header_named_csv_and_roboflow_per_split_csv(tmp_path):
    table = tmp_path / "boxes.csv"  # columns in another order, named in the header
    write_images(tmp_path)
    rows = [["image", "x0", "y0", "x1", "y1", "label"]]
    rows += [[n, x0, y0, x1, y1, c] for n, (_, objects) in TRUTH.items() for c, x0, y0, x1, y1 in objects]
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert_truth(table)  # --data FILE
    roboflow = tmp_path / "roboflow"
    for split, names in (("train", ["a.jpg", "b.jpg"]), ("valid", ["c.jpg"])):
        write_images(roboflow / split, names)
        rows = [["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]]
        rows += [[n, *TRUTH[n][0], c, x0, y0, x1, y1] for n in names for c, x0, y0, x1, y1 in TRUTH[n][1]]
        with open(roboflow / split / "_annotations.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    assert sorted(recognise(roboflow).splits) == ["train", "val"]
    assert_truth(roboflow)


def test_labelme_rectangles_and_polygons(tmp_path):
    write_images(tmp_path)
    for name, (size, objects) in TRUTH.items():
        shapes = []
        for k, (c, x0, y0, x1, y1) in enumerate(objects):
            if k == 0:  # a rectangle, drawn from its bottom-right corner
                shapes.append({"label": c, "points": [[x1, y1], [x0, y0]], "group_id": None, "shape_type": "rectangle",
                               "flags": {}})  # fmt: skip
            else:  # a polygon touching the box's four sides
                points = [[x0, y0 + 2], [x1 - 3, y0], [x1, y1], [x0 + 1, y1]]
                shapes.append({"label": c, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}})
        shapes.append({"label": "x", "points": [[1, 1], [3, 3]], "group_id": None, "shape_type": "line", "flags": {}})
        content = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": f"..\\photos\\{name}",
                   "imageData": None, "imageHeight": size[1], "imageWidth": size[0]}  # fmt: skip
        (tmp_path / f"{Path(name).stem}.json").write_text(json.dumps(content))
    assert_truth(tmp_path)
    coco = recognise(tmp_path).splits["all"]()
    polygons = [a["segmentation"] for a in coco["annotations"] if "segmentation" in a]
    assert polygons == [[[40, 12, 57, 10, 60, 40, 41, 40]]]  # a.jpg's dog: the polygon kept as its mask
    assert any("a line of 2 points is not a box or polygon; ignored" in p for p in coco["problems"])


def test_cvat_for_images_1_1(tmp_path):
    write_images(tmp_path / "images")
    images = ""
    for k, (name, (size, objects)) in enumerate(TRUTH.items()):
        shapes = ""
        for c, x0, y0, x1, y1 in objects:
            if name == "c.jpg":  # a polygon
                shapes += f'<polygon label="{c}" source="manual" occluded="0" points="{x0},{y0};{x1},{y0 + 3};{x1 - 2},{y1}" z_order="0"></polygon>'
            else:
                shapes += f'<box label="{c}" source="manual" occluded="0" xtl="{x0}" ytl="{y0}" xbr="{x1}" ybr="{y1}" z_order="0"></box>'
        images += f'<image id="{k}" name="{name}" width="{size[0]}" height="{size[1]}">{shapes}</image>'
    # the declared order (dog before cat) is kept, and a declared label that nothing uses
    labels = "".join(f"<label><name>{n}</name><color>#ff0000</color><type>any</type><attributes></attributes></label>"
                     for n in ("dog", "cat", "bird"))  # fmt: skip
    (tmp_path / "annotations.xml").write_text(
        f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version><meta><task><id>3</id>'
        f"<name>pets</name><size>3</size><mode>annotation</mode><labels>{labels}</labels></task></meta>"
        f"{images}</annotations>"
    )
    assert_truth(tmp_path)
    train = CocoDetection(tmp_path, "train")
    assert train.format == "cvat" and train.class_names == ["dog", "cat", "bird"]


def test_label_studio_json_export(tmp_path):
    write_images(tmp_path)
    tasks = []
    for k, (name, (size, objects)) in enumerate(TRUTH.items()):
        results = []
        for j, (c, x0, y0, x1, y1) in enumerate(objects):
            w, h = size
            value = {"x": 100 * x0 / w, "y": 100 * y0 / h, "width": 100 * (x1 - x0) / w,
                     "height": 100 * (y1 - y0) / h, "rotation": 0, "rectanglelabels": [c]}  # fmt: skip
            results.append({"original_width": w, "original_height": h, "image_rotation": 0, "value": value,
                            "id": f"r{j}", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
                            "origin": "manual"})  # fmt: skip
        tasks.append({"id": k + 1, "annotations": [{"id": k + 10, "result": results, "was_cancelled": False}],
                      "data": {"image": f"/data/upload/1/{k:07d}a-{name}"}, "predictions": []})  # fmt: skip
    (tmp_path / "project-1-at-2026-12-06.json").write_text(json.dumps(tasks))
    assert_truth(tmp_path, tolerance=1e-4)


def test_label_studio_turned_rectangle_and_polygon(tmp_path):
    write_images(tmp_path, ["a.jpg"])
    turned = {"x": 50, "y": 25, "width": 25, "height": 25, "rotation": 90, "rectanglelabels": ["cat"]}
    polygon = {"points": [[10, 10], [50, 20], [30, 80]], "polygonlabels": ["dog"]}
    results = [{"original_width": 64, "original_height": 48, "value": v, "type": t}
               for v, t in ((turned, "rectanglelabels"), (polygon, "polygonlabels"))]  # fmt: skip
    (tmp_path / "export.json").write_text(
        json.dumps([{"data": {"img": "a.jpg"}, "annotations": [{"result": results}]}])
    )
    coco = recognise(tmp_path).splits["all"]()
    boxes = sorted(a["bbox"] for a in coco["annotations"])
    # turned 90 degrees clockwise about its top-left corner (32, 12): 16 wide, 12 high -> x 20..32, y 12..28
    assert np.allclose(boxes, [[6.4, 4.8, 25.6, 33.6], [20, 12, 12, 16]])


def test_createml_json(tmp_path):
    for split, names in (("train", ["a.jpg", "b.jpg"]), ("valid", ["c.jpg"])):  # as Roboflow exports it
        write_images(tmp_path / split, names)
        entries = [
            {"image": n, "annotations": [
                {"label": c, "coordinates": {"x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "width": x1 - x0,
                                             "height": y1 - y0}}
                for c, x0, y0, x1, y1 in TRUTH[n][1]]}
            for n in names
        ]  # fmt: skip
        (tmp_path / split / "_annotations.createml.json").write_text(json.dumps(entries))
    assert recognise(tmp_path).format == "createml"
    assert_truth(tmp_path)


def test_instance_mask_pngs_in_the_penn_fudan_layout(tmp_path):
    write_images(tmp_path / "PNGImages", ["a.jpg", "c.jpg"])
    (tmp_path / "PedMasks").mkdir()
    for name in ("a.jpg", "c.jpg"):
        size, objects = TRUTH[name]
        ids = np.zeros((size[1], size[0]), np.uint8)
        for value, (_, x0, y0, x1, y1) in enumerate(objects, start=1):
            ids[y0:y1, x0:x1] = value
        Image.fromarray(ids, mode="L").save(tmp_path / "PedMasks" / f"{Path(name).stem}_mask.png")
    coco = recognise(tmp_path).splits["all"]()
    assert [c["name"] for c in coco["categories"]] == ["object"]
    boxes = {(Path(i["file_name"]).name, tuple(a["bbox"])) for i in coco["images"] for a in coco["annotations"]
             if a["image_id"] == i["id"]}  # fmt: skip
    want = {(n, (x0, y0, x1 - x0, y1 - y0)) for n in ("a.jpg", "c.jpg") for _, x0, y0, x1, y1 in TRUTH[n][1]}
    assert boxes == want
    (tmp_path / "classes.txt").write_text("pedestrian\n")
    dataset = CocoDetection(find_split(tmp_path, "train", val_fraction=0.5), masks=True)
    assert dataset.class_names == ["pedestrian"]
    for index in range(len(dataset)):
        _, target = dataset[index]
        for mask, box in zip(target["masks"], target["boxes"]):  # each mask fills its box exactly
            x0, y0, x1, y1 = (int(v) for v in box)
            assert mask.sum() == (x1 - x0) * (y1 - y0) and mask[y0:y1, x0:x1].all()


def test_the_hash_split_keeps_each_image_on_its_side_when_images_are_added(tmp_path):
    names = [f"img_{k:04d}.jpg" for k in range(400)]
    val = {n for n in names if in_validation(n, 0.1)}
    assert 20 < len(val) < 60  # about a tenth
    more = names + [f"new_{k}.jpg" for k in range(100)]
    assert {n for n in more if in_validation(n, 0.1)} & set(names) == val
    tiny = {"images": [{"id": k, "file_name": n} for k, n in enumerate(TRUTH)], "annotations": [], "categories": []}
    assert not any(in_validation(n, 0.1) for n in TRUTH)  # none falls under a tenth: one image still validates
    parts = {part: [i["file_name"] for i in hashed_part(tiny, part, 0.1)["images"]] for part in ("train", "val")}
    assert len(parts["val"]) == 1 and sorted(parts["train"] + parts["val"]) == sorted(TRUTH)


def problems_of(root: Path, capsys) -> str:
    assert main(["check-data", str(root), "--plot", str(root.parent / f"{root.name}.png")]) == 0
    return capsys.readouterr().out


def test_check_data_reports_every_problem_with_its_file_and_element(tmp_path, capsys):
    write_images(tmp_path / "images", ["a.jpg", "b.jpg", "c.jpg"])
    write_images(tmp_path / "images" / "more", ["c.jpg"])  # the same file name twice
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "unlabelled.jpg")
    rows = [
        ["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"],
        ["a.jpg", 64, 48, "cat", 10, 5, 30, 25],
        ["a.jpg", 64, 48, "cat", 10, 5, 10, 25],  # zero width
        ["a.jpg", 64, 48, "dog", 70, 50, 90, 60],  # outside the image
        ["b.jpg", 64, 48, "dog", 0, 0, 20, 16],
        ["gone.jpg", 64, 48, "dog", 0, 0, 20, 16],  # no such image
        ["c.jpg", 40, 30, "cat", 5, 6, 35, 29],
    ]
    with open(tmp_path / "train_labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = problems_of(tmp_path, capsys)
    table = tmp_path / "train_labels.csv"
    assert f"{table}:3: box [10.0, 5.0, 10.0, 25.0] has zero size; left out" in out
    assert f"{table}:4: box [70.0, 50.0, 90.0, 60.0] lies outside the image (64x48); left out" in out
    assert f"{table}:6: label for a missing image: no gone.jpg" in out
    assert f"{table}:7: duplicated file name: c.jpg is 2 files" in out
    assert f"{tmp_path / 'images' / 'unlabelled.jpg'}: image without labels" in out
    assert "csv" in out and "split made here" in out


def test_unknown_class_of_a_declared_label_list_is_reported(tmp_path, capsys):
    write_images(tmp_path / "images", ["b.jpg"])
    (tmp_path / "annotations.xml").write_text(
        "<annotations><version>1.1</version><meta><task><labels><label><name>dog</name></label></labels></task>"
        '</meta><image id="0" name="b.jpg" width="64" height="48"><box label="dgo" xtl="0" ytl="0" xbr="20" '
        'ybr="16"></box></image></annotations>'
    )
    out = problems_of(tmp_path, capsys)
    assert f"{tmp_path / 'annotations.xml'}: <image name='b.jpg'> <box> 1: unknown class 'dgo' (declared: dog)" in out


def test_a_refusal_names_the_format_the_file_and_the_fix(tmp_path):
    write_images(tmp_path)
    (tmp_path / "boxes.csv").write_text("a.jpg,10,5,30,25,cat\n")  # no header line
    with pytest.raises(DatasetError, match=r"boxes.csv \(read as CSV box table\): .* give it a header line"):
        CocoDetection(tmp_path / "boxes.csv", "train")
    (tmp_path / "x.xml").write_text(
        voc_xml("a.jpg", (64, 48), []).replace("</annotation>", "<object><name>cat</name></object></annotation>")
    )
    with pytest.raises(
        DatasetError, match=r"x.xml: <object> 1 \(read as Pascal VOC XML\): has no <name> or no numeric"
    ):
        CocoDetection(tmp_path, "train")


def test_labelme_folder_trains_on_a_hash_split_that_eval_of_the_run_reuses(tmp_path, capsys):
    """`detr train --data DIR` on LabelMe files without a split: the split is made, written to the run folder, said
    in the start-up summary, and `detr eval` with the run's weights validates on the same images."""
    from detr.engine.train import train

    from .conftest import tiny_train_config

    data = tmp_path / "labelme"
    data.mkdir()
    rng = np.random.default_rng(0)
    for k in range(24):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / f"photo_{k:02d}.jpg")
        x0, y0 = (int(v) for v in rng.integers(0, 16, 2))
        shape = {"label": ("cat", "dog")[k % 2], "points": [[x0, y0], [x0 + 12, y0 + 10]], "shape_type": "rectangle"}
        content = {"version": "5.4.1", "flags": {}, "shapes": [shape], "imagePath": f"photo_{k:02d}.jpg",
                   "imageData": None, "imageHeight": 32, "imageWidth": 32}  # fmt: skip
        (data / f"photo_{k:02d}.json").write_text(json.dumps(content))
    run = tmp_path / "run"
    summary = train(tiny_train_config(data, run, max_steps=2, val_fraction=0.3))
    assert summary["steps"] == 2 and "AP" in summary["metrics"]
    out = capsys.readouterr().out
    made = json.loads((run / "split.json").read_text())
    want_val = sorted(f"photo_{k:02d}.jpg" for k in range(24) if in_validation(f"photo_{k:02d}.jpg", 0.3))
    assert sorted(made["val"]) == want_val and 0 < len(want_val) < 24
    assert sorted(made["train"] + made["val"]) == sorted(f"photo_{k:02d}.jpg" for k in range(24))
    assert f"val: {len(want_val)} images" in out and "split made here: 0.3 of the images" in out
    code = main(["eval", "--data", str(data), "--weights", str(run / "final"), "--device", "cpu", "--workers", "0"])
    assert code == 0
    assert f"val: {len(want_val)} images, split made here: 0.3 of the images" in capsys.readouterr().out
    # export's gate (--check-data) checks the images the run held out, unless --val-fraction says otherwise
    from detr.cli import build_parser
    from detr.cli.flags import held_out_fraction

    export = ["export", "--weights", str(run / "final"), "--out", str(tmp_path / "m.onnx"), "--check-data", str(data)]
    parser, _ = build_parser()
    assert held_out_fraction(parser.parse_args(export)) == 0.3
    assert held_out_fraction(parser.parse_args([*export, "--val-fraction", "0.5"])) == 0.5


def test_convert_writes_a_cvat_export_as_coco_and_as_yolo(tmp_path, capsys):
    write_images(tmp_path / "cvat" / "images")
    images = ""
    for k, (name, (size, objects)) in enumerate(TRUTH.items()):
        boxes = "".join(
            f'<box label="{c}" occluded="0" xtl="{x0}" ytl="{y0}" xbr="{x1}" ybr="{y1}" z_order="0"></box>'
            for c, x0, y0, x1, y1 in objects
        )
        images += f'<image id="{k}" name="{name}" width="{size[0]}" height="{size[1]}">{boxes}</image>'
    (tmp_path / "cvat" / "annotations.xml").write_text(f"<annotations><version>1.1</version>{images}</annotations>")
    for to in ("coco", "yolo"):
        assert main(["convert", str(tmp_path / "cvat"), "--out", str(tmp_path / to), "--to", to]) == 0
    capsys.readouterr()
    written = {}  # what both conversions hold, read back by file name: COCO's JSON and YOLO's normalized lines
    for split in ("train", "val"):
        coco = json.loads((tmp_path / "coco" / split / "_annotations.coco.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        for info in coco["images"]:
            boxes = [a for a in coco["annotations"] if a["image_id"] == info["id"]]
            written[Path(info["file_name"]).name] = sorted(
                (names[a["category_id"]], a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                 a["bbox"][1] + a["bbox"][3]) for a in boxes
            )  # fmt: skip
            (w, h), objects = TRUTH[Path(info["file_name"]).name]
            yolo_lines = (tmp_path / "yolo" / "labels" / split / info["file_name"]).with_suffix(".txt").read_text()
            yolo = sorted(
                (["cat", "dog"][int(c)], (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
                for c, cx, cy, bw, bh in (map(float, line.split()) for line in yolo_lines.splitlines())
            )
            assert np.allclose([b[1:] for b in yolo], [b[1:] for b in sorted(objects)], atol=1e-3)
            assert [b[0] for b in yolo] == [b[0] for b in sorted(objects)]
    assert sorted(written) == sorted(TRUTH) and all(written[n] == sorted(TRUTH[n][1]) for n in TRUTH)


def test_a_voc_filename_without_its_extension_finds_the_image(tmp_path):
    write_images(tmp_path)
    for name, (size, objects) in TRUTH.items():
        written = voc_xml(Path(name).stem if name != "c.jpg" else name, size, objects)
        if name == "b.jpg":  # and no <filename> at all: the image of the XML's own name
            written = written.replace("<filename>b</filename>", "")
        (tmp_path / f"{Path(name).stem}.xml").write_text(written)
    assert_truth(tmp_path)


def test_show_gt_reads_every_image_of_a_dataset_split_here(tmp_path):
    from detr.engine.predict import ground_truth_by_name

    write_images(tmp_path)
    rows = [["image", "x0", "y0", "x1", "y1", "label"]]
    rows += [[n, x0, y0, x1, y1, c] for n, (_, objects) in TRUTH.items() for c, x0, y0, x1, y1 in objects]
    with open(tmp_path / "boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    for source in (tmp_path, tmp_path / "boxes.csv"):  # both sides of the hash split, from a folder or the file
        truth = ground_truth_by_name(source)
        assert {n: sorted((b["class_name"], *b["box"]) for b in v) for n, v in truth.items()} == {
            n: sorted(objects) for n, (_, objects) in TRUTH.items()
        }


def test_one_export_file_as_data_trains_and_validates_on_its_hash_split(tmp_path):
    from detr.engine.splits import dataset_splits

    from .conftest import tiny_train_config

    write_images(tmp_path)
    (tmp_path / "export.json").write_text(json.dumps([
        {"image": n, "annotations": [{"label": c, "coordinates": {"x": (x0 + x1) / 2, "y": (y0 + y1) / 2,
                                                                  "width": x1 - x0, "height": y1 - y0}}
                                     for c, x0, y0, x1, y1 in objects]}
        for n, (_, objects) in TRUTH.items()
    ]))  # fmt: skip
    train, val = dataset_splits(tiny_train_config(tmp_path / "export.json", tmp_path / "run"))
    assert train.format == val.format == "createml"
    files = [sorted(Path(i["file_name"]).name for i in CocoDetection(s).images) for s in (train, val)]
    assert len(files[1]) == 1 and sorted(files[0] + files[1]) == sorted(TRUTH)


def labelimg_txt(size, objects, classes) -> str:
    """A label file as LabelImg's YOLO mode writes it: a line "%d %.6f %.6f %.6f %.6f" per box (class index in
    classes.txt, centre and size as fractions of the image)."""
    w, h = size
    return "".join(
        f"{classes.index(c)} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n"
        for c, x0, y0, x1, y1 in objects
    )


@pytest.mark.parametrize("shape", ["beside_images", "save_dir", "split_folders"])
def test_labelimg_yolo_mode(tmp_path, shape, capsys):
    classes = ["dog", "cat"]  # LabelImg's order (the order they were first used), not sorted: it numbers them
    for name, (size, objects) in TRUTH.items():
        if shape == "beside_images":  # LabelImg's default: the .txt and classes.txt beside the images
            image_dir = label_dir = tmp_path
        elif shape == "save_dir":  # "Change Save Dir": labels and classes.txt in a folder of their own
            image_dir, label_dir = tmp_path / "images", tmp_path / "labels"
        else:
            image_dir = label_dir = tmp_path / ("valid" if name == "c.jpg" else "train")
        write_images(image_dir, [name])
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / f"{Path(name).stem}.txt").write_text(labelimg_txt(size, objects, classes))
        (label_dir / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    (tmp_path / "readme.txt").write_text("Labelled with LabelImg 1.8.6 in YOLO mode.\n")  # not labels: ignored
    found = recognise(tmp_path)
    assert found.format == "labelimg-yolo"
    assert sorted(found.splits) == (["train", "val"] if shape == "split_folders" else ["all"])
    assert_truth(tmp_path, tolerance=1e-3)  # 6 decimals of a 64 px side
    assert CocoDetection(find_split(tmp_path, "train", val_fraction=0.5)).class_names == classes
    assert "\n0 problems" in problems_of(tmp_path, capsys)


def test_labelimg_yolo_problems_are_reported_with_file_and_line(tmp_path, capsys):
    classes = ["dog", "cat"]
    write_images(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "unlabelled.jpg")  # LabelImg saved no .txt for it
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    good = labelimg_txt(*TRUTH["a.jpg"], classes).splitlines()
    bad = ["1 0.5 0.5 0.2", "2 0.5 0.5 0.2 0.2", "0 1.5 0.5 0.2 0.2"]  # a field short, class 2 of 2, outside 0..1
    (tmp_path / "a.txt").write_text("\n".join([good[0], *bad, good[1]]) + "\n")
    for name in ("b.jpg", "c.jpg"):
        (tmp_path / f"{Path(name).stem}.txt").write_text(labelimg_txt(*TRUTH[name], classes))
    out = problems_of(tmp_path, capsys)
    labels = tmp_path / "a.txt"
    assert f"{labels}:2: expected 'class cx cy w h' (or a polygon), got 4 numbers; left out" in out
    assert f"{labels}:3: class 2 is not one of the 2 classes in {tmp_path / 'classes.txt'} (0..1); left out" in out
    assert f"{labels}:4: box [1.5, 0.5, 0.2, 0.2] is not normalized to [0, 1]" in out
    assert f"{tmp_path / 'unlabelled.jpg'}: image without labels" in out
    assert "4 problems" in out
    assert_truth(tmp_path, tolerance=1e-3)  # the good lines around the bad ones, and the other files, are read


def label_studio_min_record(task, name, size, objects, annotation) -> dict:
    """One record of a JSON-MIN export as Label Studio writes it: the task's data, its id, the regions of the
    labelling control named "label" (percent of the image, with the image's original size), the annotation's
    annotator, id and times."""
    w, h = size
    regions = [
        {"x": 100 * x0 / w, "y": 100 * y0 / h, "width": 100 * (x1 - x0) / w, "height": 100 * (y1 - y0) / h,
         "rotation": 0, "rectanglelabels": [c], "original_width": w, "original_height": h}
        for c, x0, y0, x1, y1 in objects
    ]  # fmt: skip
    return {"image": f"/data/upload/3/5f3e9c1a-{name}", "id": task, "label": regions, "annotator": 1,
            "annotation_id": annotation, "created_at": "2026-12-06T09:12:30.411228Z",
            "updated_at": "2026-12-06T09:12:30.411228Z", "lead_time": 7.25}  # fmt: skip


def test_label_studio_json_min_export(tmp_path):
    write_images(tmp_path)
    records = [label_studio_min_record(k + 1, n, *TRUTH[n], k + 10) for k, n in enumerate(TRUTH)]
    # a second, older annotation of task 1: Label Studio writes a record per annotation, the newest first
    records.insert(1, label_studio_min_record(1, "a.jpg", (64, 48), [("cat", 0, 0, 5, 5)], 9))
    (tmp_path / "project-3-at-2026-12-06-09-15-1a2b3c4d.json").write_text(json.dumps(records, indent=2))
    found = recognise(tmp_path)
    assert found.format == "label-studio-json-min"
    assert found.splits["all"]()["problems"] == []  # the older annotation is not read (nor reported as a duplicate)
    assert_truth(tmp_path, tolerance=1e-4)


def test_label_studio_json_min_polygon_older_export_and_other_regions(tmp_path):
    write_images(tmp_path, ["a.jpg"])
    polygon = {"points": [[10, 10], [50, 20], [30, 80]], "closed": True, "polygonlabels": ["dog"],
               "original_width": 64, "original_height": 48}  # fmt: skip
    older = {"x": 50, "y": 25, "width": 25, "height": 25, "rotation": 0, "rectanglelabels": ["cat"]}  # no size
    record = {
        "image": "/data/local-files/?d=photos/a.jpg",
        "id": 7,
        "label": [polygon, older],
        "quality": [{"choices": ["sharp", "bright"]}],
        "annotator": 2,
        "annotation_id": 3,
        "lead_time": 1.5,
    }
    path = tmp_path / "export.json"
    path.write_text(json.dumps([record]))
    coco = recognise(path).splits["all"]()
    boxes = sorted(a["bbox"] for a in coco["annotations"])
    # the polygon's box in pixels; the older rectangle in percent of the image's own 64 x 48
    assert np.allclose(boxes, [[6.4, 4.8, 25.6, 33.6], [32, 12, 16, 12]])
    assert [len(a.get("segmentation", [[]])[0]) for a in coco["annotations"]] == [6, 0]
    assert coco["problems"] == [
        f"{path}: record 0 (task 7) quality 0: a choices region is not a box or polygon; ignored"
    ]


def test_check_data_and_convert_split_by_the_val_fraction_given(tmp_path, capsys):
    names = [f"img_{k:02d}.jpg" for k in range(20)]
    data = tmp_path / "data"
    data.mkdir()
    rows = [["image", "x0", "y0", "x1", "y1", "label"]]
    for name in names:
        Image.new("RGB", (16, 16), (90, 120, 150)).save(data / name)
        rows.append([name, 2, 2, 10, 10, "cat"])
    with open(data / "boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    plots = iter(range(10))

    def split_sizes(*flags: str) -> dict[str, int]:
        assert main(["check-data", str(data), "--plot", str(tmp_path / f"{next(plots)}.png"), *flags]) == 0
        lines = capsys.readouterr().out.splitlines()
        return {line.split()[0]: int(line.split()[1]) for line in lines if line.split()[:1] in (["train"], ["val"])}

    val = {fraction: sum(in_validation(n, fraction) for n in names) for fraction in (0.1, 0.5)}
    assert val[0.1] != val[0.5]  # the two fractions give splits apart
    for fraction, count in val.items():
        assert split_sizes("--val-fraction", str(fraction)) == {"train": 20 - count, "val": count}
    assert split_sizes() == {"train": 20 - val[0.1], "val": val[0.1]}  # the default, as detr train's
    with pytest.raises(SystemExit):
        split_sizes("--val-fraction", "1.5")
    assert "--val-fraction: must be between 0 and 1" in capsys.readouterr().err
    assert main(["convert", str(data), "--out", str(tmp_path / "coco"), "--val-fraction", "0.5"]) == 0
    written = json.loads((tmp_path / "coco" / "val" / "_annotations.coco.json").read_text())
    assert len(written["images"]) == val[0.5]
