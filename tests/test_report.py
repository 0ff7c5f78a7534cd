"""The evaluation report: error counts, confusion matrix and precision-recall points on hand-made cases."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from detr.engine.evaluate import coco_evaluate
from detr.engine.report import error_analysis, evaluation_report

from .test_evaluation import hand_made_ground_truth


def two_class_case():
    gt = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 100, "height": 100},
            {"id": 2, "file_name": "2.jpg", "width": 100, "height": 100},
        ],
        "categories": [{"id": 4, "name": "A"}, {"id": 9, "name": "B"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 4, "bbox": [10, 10, 20, 20]},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [50, 50, 30, 30]},
            {"id": 3, "image_id": 2, "category_id": 4, "bbox": [0, 0, 40, 40]},
            {"id": 4, "image_id": 2, "category_id": 9, "bbox": [70, 0, 20, 20], "iscrowd": 1},  # left out
        ],
    }
    dets = [
        (1, 4, [10, 10, 20, 20], 0.9),  # correct
        (1, 4, [11, 10, 20, 20], 0.8),  # duplicate: its object is taken by the better one
        (1, 4, [50, 50, 30, 30], 0.7),  # classification: an object of B
        (2, 4, [0, 0, 40, 14], 0.6),  # localisation: IoU 560 / 1600 = 0.35 with an A
        (2, 9, [60, 60, 10, 10], 0.55),  # background: nothing there
        (2, 9, [0, 0, 40, 14], 0.52),  # both: IoU 0.35 with an object of another class
        (2, 9, [0, 0, 40, 40], 0.3),  # below the score threshold: not counted
    ]
    results = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in dets]
    return gt, results


def test_errors_and_confusion_on_a_hand_made_case():
    gt, results = two_class_case()
    analysis = error_analysis(gt, results, score_threshold=0.5)
    assert analysis["errors"] == {
        "correct": 1, "duplicate": 1, "classification": 1, "localisation": 1, "both": 1, "background": 1, "missed": 2,
    }  # fmt: skip
    assert analysis["confusion"]["labels"] == ["A", "B", "background"]
    # rows: the detection's class; columns: the object's (background: none); last row: objects never found
    assert analysis["confusion"]["matrix"] == [[1, 1, 1], [0, 0, 2], [1, 1, 0]]


def test_the_report_files_and_its_precision_recall_points(tmp_path):
    detections = [
        {"image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [60, 5, 20, 20], "score": 0.8},
        {"image_id": 1, "category_id": 7, "bbox": [50, 50, 30, 18.6], "score": 0.7},
    ]
    report = evaluation_report(hand_made_ground_truth(), detections, tmp_path / "r")
    # TP, FP, TP at IoU 0.5: precision 1 up to recall 0.5, then 2/3 (pycocotools' interpolation)
    curve = report["iou_0.5"]["thing"]
    assert curve[:51] == pytest.approx([1.0] * 51) and curve[51:] == pytest.approx([2 / 3] * 50)
    assert report["iou_0.75"]["thing"][51:] == pytest.approx([0.0] * 50)  # the third is no hit at 0.75
    # both objects are small (under 32 x 32 px): no medium or large AP to measure, "n/a", not 0
    assert report["ap_by_size"] == {
        "small": pytest.approx(report["ap_per_class"]["thing"]),
        "medium": None,
        "large": None,
    }
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["errors"]["correct"] == 2 and saved["metrics"]["APl"] is None
    for name, size in (
        ("pr_curves.png", (1100, 450)),
        ("ap_per_class.png", (600, 400)),
        ("ap_by_size.png", (500, 400)),
    ):
        with Image.open(tmp_path / "r" / name) as png:
            assert png.size == size, name
    assert (tmp_path / "r" / "confusion_matrix.png").is_file()


def test_the_report_shows_what_nms_would_change(tmp_path):
    gt, results = two_class_case()
    report = evaluation_report(gt, results, tmp_path / "r", nms_iou=0.7)
    after = report["with_nms"]
    # NMS removes exactly the planted duplicate (IoU 0.9 with a better box of its class); the overlapping
    # detections of class B (other class) and the localisation error (IoU 0.35) stay
    assert after["iou"] == 0.7 and after["detections_removed"] == 1
    assert after["errors"] == dict(report["errors"], correct=1, duplicate=0)
    by_hand = coco_evaluate(gt, [r for r in results if r["score"] != 0.8])  # the duplicate taken out
    assert after["metrics"] == pytest.approx(by_hand)
    assert json.loads((tmp_path / "r" / "report.json").read_text())["with_nms"]["detections_removed"] == 1


def test_a_box_near_an_object_of_its_class_is_a_localisation_error_as_tide_counts_it():
    gt = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "A"}, {"id": 2, "name": "B"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 0, 40, 40]},
        ],
    }
    # an A box on the B object (IoU 1) that also overlaps the A object (IoU 1/3): TIDE says localisation
    results = [{"image_id": 1, "category_id": 1, "bbox": [20, 0, 40, 40], "score": 0.9}]
    analysis = error_analysis(gt, results)
    assert analysis["errors"]["localisation"] == 1 and analysis["errors"]["classification"] == 0
    assert analysis["confusion"]["matrix"][0] == [0, 1, 0]  # still drawn as an A covering a B
