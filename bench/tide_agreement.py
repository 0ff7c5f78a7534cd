"""How our TIDE-style error counts (detr.engine.report.error_analysis) compare with the tidecv
package's (Bolya et al. 2020) on the same detections: a hand-made case and random jittered ones.

Needs tidecv and what it imports (not a dependency of detr):
    pip install tidecv opencv-python-headless pandas seaborn appdirs
    python bench/tide_agreement.py

Prints, per error type, our count and tidecv's. "missed" is not compared: we count every object no
correct detection found, TIDE only those no other error explains.
"""

from __future__ import annotations

import random
from collections import Counter

from tidecv import TIDE, Data

from detr.engine.report import error_analysis

TIDE_NAMES = {
    "DuplicateError": "duplicate",
    "ClassError": "classification",
    "BoxError": "localisation",
    "OtherError": "both",
    "BackgroundError": "background",
}


def tide_counts(gt: dict, results: list[dict], threshold: float) -> Counter:
    truth, predictions = Data("gt"), Data("pred")
    for image in gt["images"]:
        truth.add_image(image["id"], image["file_name"])
        predictions.add_image(image["id"], image["file_name"])
    for cat in gt["categories"]:
        truth.add_class(cat["id"], cat["name"])
        predictions.add_class(cat["id"], cat["name"])
    for ann in gt["annotations"]:
        if ann.get("iscrowd"):
            truth.add_ignore_region(ann["image_id"], ann["category_id"], ann["bbox"])
        else:
            truth.add_ground_truth(ann["image_id"], ann["category_id"], ann["bbox"])
    for r in results:
        if r["score"] >= threshold:
            predictions.add_detection(r["image_id"], r["category_id"], r["score"], r["bbox"])
    tide = TIDE()
    tide.evaluate(truth, predictions, mode=TIDE.BOX, name="pred")
    return Counter(TIDE_NAMES[type(e).__name__] for e in tide.runs["pred"].errors if type(e).__name__ in TIDE_NAMES)


def jittered_case(seed: int, images: int = 200) -> tuple[dict, list[dict]]:
    rng = random.Random(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    results = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 200, "height": 200})
        for _ in range(rng.randint(0, 4)):
            x, y, w, h = rng.uniform(0, 120), rng.uniform(0, 120), rng.uniform(10, 80), rng.uniform(10, 80)
            category = rng.choice((1, 2, 3))
            gt["annotations"].append(
                {"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": category, "bbox": [x, y, w, h]}
            )
            for _ in range(rng.choice((0, 1, 1, 1, 2))):  # missed, found, found twice
                shift = rng.choice((0.05, 0.2, 0.6))  # good, sloppy, poor boxes
                box = [x + rng.gauss(0, shift * w), y + rng.gauss(0, shift * h), w * rng.uniform(0.7, 1.3), h]
                label = category if rng.random() < 0.8 else rng.choice((1, 2, 3))
                results.append({"image_id": image_id, "category_id": label, "bbox": box, "score": rng.random()})
        for _ in range(rng.randint(0, 2)):  # detections of nothing
            box = [rng.uniform(0, 150), rng.uniform(0, 150), rng.uniform(5, 40), rng.uniform(5, 40)]
            results.append({"image_id": image_id, "category_id": rng.choice((1, 2, 3)), "bbox": box, "score": rng.random()})
    return gt, results


def main() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_report import two_class_case

    cases = {"hand-made (tests/test_report.py)": two_class_case()}
    cases.update({f"jittered, seed {seed}": jittered_case(seed) for seed in (0, 1, 2)})
    threshold = 0.5
    for name, (gt, results) in cases.items():
        ours = error_analysis(gt, results, threshold)["errors"]
        theirs = tide_counts(gt, results, threshold)
        print(f"{name}: {sum(r['score'] >= threshold for r in results)} detections scored >= {threshold}")
        for kind in TIDE_NAMES.values():
            mark = "" if ours[kind] == theirs[kind] else "   <- differs"
            print(f"  {kind:<15} ours {ours[kind]:>4}  tidecv {theirs[kind]:>4}{mark}")


if __name__ == "__main__":
    main()
