"""Segmentation post-processing agrees with Hugging Face transformers' DetrImageProcessor and with hand-made cases."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from detr.processing.mask_postprocess import (
    VOID_ID,
    instance_masks,
    panoptic_png,
    panoptic_segmentation,
    rgb_to_id,
    semantic_segmentation,
)

transformers = pytest.importorskip("transformers")

BATCH, QUERIES, CLASSES, MASK_H, MASK_W = 2, 10, 5, 24, 32
STUFF_LABEL = 4  # the class two confident queries of image 0 share, on disjoint regions: fusing makes one segment
IS_THING = [True, True, True, False, False]


@pytest.fixture(scope="module")
def processor():
    return transformers.DetrImageProcessor()  # built from defaults: nothing downloaded


def random_outputs(seed: int = 0) -> SimpleNamespace:
    """Outputs shaped like DetrForSegmentation's: (B, Q, K+1) logits, (B, Q, 4) boxes, (B, Q, h, w) mask logits.

    In each image six queries are confident (class logit +6 to +9) and own a random rectangle
    (mask logit about +5 inside, -5 outside, with noise, so rectangles overlap and boundaries are
    soft); two are unsure (scores mostly 0.5 to 0.85) with masks of probability about 0.5 everywhere;
    two mostly predict "no object". Queries 0 and 1 of image 0 are confident in STUFF_LABEL on
    disjoint thirds of the image, so that fusing that label merges two segments.
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(BATCH, QUERIES, CLASSES + 1, generator=gen)
    masks = torch.randn(BATCH, QUERIES, MASK_H, MASK_W, generator=gen) - 5.0
    confident = 6
    for image in range(BATCH):
        labels = torch.randint(0, CLASSES, (confident,), generator=gen)
        for query in range(confident):
            logits[image, query, labels[query]] += 6.0 + 3.0 * torch.rand((), generator=gen)
            top, left = torch.randint(0, MASK_H - 8, (), generator=gen), torch.randint(0, MASK_W - 8, (), generator=gen)
            height, width = torch.randint(6, 14, (2,), generator=gen)
            masks[image, query, top : top + height, left : left + width] += 10.0
        # two unsure queries, kept only at low thresholds, with undecided masks over the whole image
        unsure = torch.arange(confident, confident + 2)
        logits[image, unsure, torch.randint(0, CLASSES, (2,), generator=gen)] += 2.5
        masks[image, unsure] += 5.0
        logits[image, confident + 2 :, -1] += 4.0  # the rest: mostly "no object"
    # image 0: queries 0 and 1 both say STUFF_LABEL, on the left and right thirds
    logits[0, :2] = torch.randn(2, CLASSES + 1, generator=gen)
    logits[0, :2, STUFF_LABEL] += 9.0
    masks[0, :2] = torch.randn(2, MASK_H, MASK_W, generator=gen) - 5.0
    masks[0, 0, :, :10] += 10.0
    masks[0, 1, :, 22:] += 10.0
    boxes = torch.rand(BATCH, QUERIES, 4, generator=gen) * 0.5 + 0.25  # (B, Q, 4) cxcywh
    return SimpleNamespace(logits=logits, pred_masks=masks, pred_boxes=boxes)


def dedup_by_id(segments_info: list[dict]) -> list[dict]:
    """transformers lists a fused segment once per fused query; keep its first entry per id."""
    first = {}
    for segment in segments_info:
        first.setdefault(segment["id"], segment)
    return list(first.values())


# --- panoptic ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "overlap", "fuse", "target_sizes"),
    [
        (0.85, 0.8, set(), [(MASK_H, MASK_W), (MASK_H, MASK_W)]),
        (0.85, 0.8, {STUFF_LABEL}, [(50, 70), (37, 41)]),
        # (threshold 0.5 here would meet transformers' id collision, see test_panoptic_ids_stay_unique_after_a_fusion)
        (0.6, 0.7, {STUFF_LABEL, 3}, [(61, 45), (24, 100)]),
    ],
)
def test_panoptic_equals_transformers(processor, threshold, overlap, fuse, target_sizes):
    outputs = random_outputs()
    theirs = processor.post_process_panoptic_segmentation(
        outputs,
        threshold=threshold,
        overlap_mask_area_threshold=overlap,
        label_ids_to_fuse=set(fuse),
        target_sizes=target_sizes,
    )
    ours = panoptic_segmentation(
        outputs.logits,
        outputs.pred_masks,
        target_sizes,
        is_thing=IS_THING,
        threshold=threshold,
        overlap_mask_area_threshold=overlap,
        label_ids_to_fuse=fuse,
    )
    fused_somewhere = False
    for image, (our, their) in enumerate(zip(ours, theirs)):
        assert our["segmentation"].shape == target_sizes[image]
        torch.testing.assert_close(our["segmentation"], their["segmentation"], rtol=0, atol=0)
        their_segments = dedup_by_id(their["segments_info"])
        fused_somewhere |= len(their_segments) < len(their["segments_info"])
        # non-trivial: several segments, all drawn, and some pixels left void by a dropped query or not
        assert len(their_segments) >= 2
        assert [s["id"] for s in our["segments_info"]] == [s["id"] for s in their_segments]
        assert [s["label_id"] for s in our["segments_info"]] == [s["label_id"] for s in their_segments]
        assert [s["was_fused"] for s in our["segments_info"]] == [s["was_fused"] for s in their_segments]
        for our_segment, their_segment in zip(our["segments_info"], their_segments):
            assert our_segment["score"] == pytest.approx(their_segment["score"], abs=1e-6)
            assert our_segment["isthing"] == IS_THING[our_segment["label_id"]]
            assert our_segment["area"] == int((their["segmentation"] == their_segment["id"]).sum()) > 0
    if fuse:
        assert fused_somewhere, "the fusing setting must actually fuse two queries into one segment"


def test_panoptic_fusing_merges_the_two_stuff_queries():
    outputs = random_outputs()
    size = [(MASK_H, MASK_W)] * BATCH
    args = (outputs.logits, outputs.pred_masks, size)
    apart = panoptic_segmentation(*args, is_thing=IS_THING, label_ids_to_fuse=set())[0]
    fused = panoptic_segmentation(*args, is_thing=IS_THING)[0]  # default: fuse the stuff classes of is_thing
    stuff_apart = [s for s in apart["segments_info"] if s["label_id"] == STUFF_LABEL]
    stuff_fused = [s for s in fused["segments_info"] if s["label_id"] == STUFF_LABEL]
    assert len(stuff_apart) == 2 and len(stuff_fused) == 1
    assert stuff_fused[0]["was_fused"] and not stuff_apart[0]["was_fused"]
    assert stuff_fused[0]["area"] == stuff_apart[0]["area"] + stuff_apart[1]["area"]
    assert len(fused["segments_info"]) == len(apart["segments_info"]) - 1
    # one id fewer, the same pixels claimed
    assert torch.equal(fused["segmentation"] == VOID_ID, apart["segmentation"] == VOID_ID)


def test_panoptic_ids_stay_unique_after_a_fusion(processor):
    # four columns: stuff (class 2), thing (class 0), stuff (class 2 again: fused into the first), thing (class 1)
    logits = torch.full((1, 4, 4), -5.0)  # (1, Q = 4, K+1 = 4)
    for query, label in enumerate([2, 0, 2, 1]):
        logits[0, query, label] = 5.0
    masks = torch.full((1, 4, 4, 4), -10.0)  # (1, 4, 4, 4)
    for query in range(4):
        masks[0, query, :, query] = 10.0
    [ours] = panoptic_segmentation(logits, masks, [(4, 4)], is_thing=[True, True, False])
    expected = torch.tensor([[1, 2, 1, 3]] * 4, dtype=torch.int32)
    assert torch.equal(ours["segmentation"], expected)
    assert [(s["id"], s["label_id"], s["area"]) for s in ours["segments_info"]] == [(1, 2, 8), (2, 0, 4), (3, 1, 4)]
    # transformers (5.x) restarts its counter from the fused segment's id, so the thing after the fusion gets
    # id 2 again, merged with the other thing: an invalid panoptic map. Where it does, that is the only difference.
    [theirs] = processor.post_process_panoptic_segmentation(
        SimpleNamespace(logits=logits, pred_masks=masks), label_ids_to_fuse={2}, target_sizes=[(4, 4)]
    )
    if not torch.equal(theirs["segmentation"], ours["segmentation"]):
        assert torch.equal(theirs["segmentation"], torch.where(expected == 3, 2, expected))
        assert [(s["id"], s["label_id"]) for s in theirs["segments_info"]] == [(1, 2), (2, 0), (1, 2), (2, 1)]


def test_panoptic_hand_made_thing_and_stuff_squares():
    # classes 0 (thing), 1 (stuff), 2 (thing); query 0: a thing on the top-left square, query 1: stuff on the
    # bottom-right square, query 2: "no object". Outside the squares both masks are equally unsure, and the
    # score weighting gives those pixels to the more confident query 0.
    logits = torch.tensor([[[10.0, 0, 0, 0], [0, 8.0, 0, 0], [0, 0, 0, 10.0]]])  # (1, 3, K+1 = 4)
    masks = torch.full((1, 3, 4, 4), -10.0)  # (1, 3, 4, 4) logits
    masks[0, 0, :2, :2] = 10.0
    masks[0, 1, 2:, 2:] = 10.0
    masks[0, 2] = 10.0  # a "no object" query's mask plays no part
    [result] = panoptic_segmentation(logits, masks, [(4, 4)], is_thing=lambda label: label != 1)
    expected = torch.tensor(
        [
            [1, 1, 1, 1],
            [1, 1, 1, 1],
            [1, 1, 2, 2],
            [1, 1, 2, 2],
        ],
        dtype=torch.int32,
    )
    assert torch.equal(result["segmentation"], expected)
    thing_score = math.exp(10) / (math.exp(10) + 3)
    stuff_score = math.exp(8) / (math.exp(8) + 3)
    assert result["segments_info"] == [
        {"id": 1, "label_id": 0, "score": pytest.approx(thing_score), "isthing": True, "was_fused": False, "area": 12},
        {"id": 2, "label_id": 1, "score": pytest.approx(stuff_score), "isthing": False, "was_fused": True, "area": 4},
    ]


def test_panoptic_drops_a_query_mostly_covered_by_a_better_one():
    # query 1's mask lies inside query 0's, and query 0 is more confident: query 1 wins no pixel and is dropped
    logits = torch.tensor([[[10.0, 0, 0], [0, 6.0, 0]]])  # (1, 2, K+1 = 3)
    masks = torch.full((1, 2, 4, 4), -10.0)
    masks[0, 0] = 10.0
    masks[0, 1, 1:3, 1:3] = 10.0
    [result] = panoptic_segmentation(logits, masks, [(4, 4)], is_thing=[True, True])
    assert torch.equal(result["segmentation"], torch.ones(4, 4, dtype=torch.int32))
    assert [(s["id"], s["label_id"], s["area"]) for s in result["segments_info"]] == [(1, 0, 16)]


def test_panoptic_counts_a_query_own_mask_after_weighting_by_its_score():
    # as transformers: a query's own mask is where score * probability >= mask_threshold. Query 1 (score 0.6) has
    # probability 0.75 on its square: 0.45 < 0.5, so its own mask is empty and it is dropped although it wins
    # its square. Query 0 takes the rest; the square is left void.
    logits = torch.tensor([[[6.0, 0, 0], [0, math.log(0.6 / 0.2), 0]]])  # (1, 2, K+1 = 3): scores ~1 and 0.6
    masks = torch.full((1, 2, 4, 4), -10.0)
    masks[0, 0, :, :2] = 10.0
    masks[0, 1, :, 2:] = math.log(3.0)  # sigmoid 0.75
    [result] = panoptic_segmentation(logits, masks, [(4, 4)], is_thing=[True, True], threshold=0.5)
    expected = torch.zeros(4, 4, dtype=torch.int32)
    expected[:, :2] = 1
    assert torch.equal(result["segmentation"], expected)
    assert [(s["id"], s["label_id"], s["area"]) for s in result["segments_info"]] == [(1, 0, 8)]
    # with mask_threshold 0.4 it counts, and becomes segment 2
    [lenient] = panoptic_segmentation(logits, masks, [(4, 4)], is_thing=[True, True], threshold=0.5, mask_threshold=0.4)
    assert [(s["id"], s["label_id"], s["area"]) for s in lenient["segments_info"]] == [(1, 0, 8), (2, 1, 8)]


def test_panoptic_with_nothing_kept_is_all_void(processor):
    logits = torch.zeros(1, 3, 4)  # (1, 3, K+1): every class equally likely, no score above 0.85
    masks = torch.zeros(1, 3, 5, 6)
    [result] = panoptic_segmentation(logits, masks, [(7, 9)], is_thing=[True] * 3)
    assert result["segments_info"] == []
    assert torch.equal(result["segmentation"], torch.full((7, 9), VOID_ID, dtype=torch.int32))
    # transformers marks this case with -1 instead
    [theirs] = processor.post_process_panoptic_segmentation(
        SimpleNamespace(logits=logits, pred_masks=masks), threshold=0.85, target_sizes=[(7, 9)]
    )
    assert theirs["segments_info"] == [] and bool((theirs["segmentation"] == -1).all())


# --- instance masks ---------------------------------------------------------------------------------------


def tiled_outputs() -> tuple[SimpleNamespace, list[int]]:
    """Four confident queries whose hard masks tile an 8x12 map (and two "no object" queries).

    transformers' instance post-processing (score-weighted argmax into one exclusive map, then the
    overlap-area check) and the reference's (each query's own ``sigmoid > 0.5`` mask) coincide only when
    the kept masks are disjoint, cover every pixel and are near-certain: then each query's argmax
    region is exactly its thresholded mask. Elsewhere the rules differ (tested by hand below).
    """
    gen = torch.Generator().manual_seed(1)
    tile_labels = [2, 0, 4, 2]
    logits = torch.randn(1, 6, CLASSES + 1, generator=gen)  # (1, 6, K+1)
    for query, label in enumerate(tile_labels):
        logits[0, query, label] += 12.0
    logits[0, 4:, -1] += 12.0
    masks = torch.full((1, 6, 8, 12), -20.0)  # (1, 6, h, w)
    masks[0, 0, :4, :5] = 20.0
    masks[0, 1, :4, 5:] = 20.0
    masks[0, 2, 4:, :7] = 20.0
    masks[0, 3, 4:, 7:] = 20.0
    masks[0, 4:] = torch.randn(2, 8, 12, generator=gen) * 5  # unconfident queries' masks, anywhere
    boxes = torch.rand(1, 6, 4, generator=gen) * 0.5 + 0.25
    return SimpleNamespace(logits=logits, pred_masks=masks, pred_boxes=boxes), tile_labels


@pytest.mark.parametrize("target_size", [(8, 12), (16, 24)])
def test_instance_masks_equal_transformers_where_their_rules_coincide(processor, target_size):
    outputs, tile_labels = tiled_outputs()
    [theirs] = processor.post_process_instance_segmentation(outputs, threshold=0.5, target_sizes=[target_size])
    [ours] = instance_masks(outputs.logits, outputs.pred_boxes, outputs.pred_masks, [target_size], k=4)
    assert len(theirs["segments_info"]) == 4
    assert ours["masks"].shape == (4, *target_size) and ours["masks"].dtype == torch.bool
    assert sorted(ours["labels"].tolist()) == sorted(tile_labels)
    # ours are by decreasing score, theirs by query: pair them by label and score
    for their_segment in theirs["segments_info"]:
        match = (ours["labels"] == their_segment["label_id"]) & ((ours["scores"] - their_segment["score"]).abs() < 1e-6)
        assert int(match.sum()) == 1
        our_mask = ours["masks"][match][0]
        their_mask = theirs["segmentation"] == their_segment["id"]
        assert 0 < int(their_mask.sum()) < their_mask.numel()
        assert torch.equal(our_mask, their_mask)


def test_instance_masks_hand_made():
    # two queries on a 2x2 mask grid, image 4x6 (height, width), K = 2; the better query comes second
    logits = torch.tensor([[[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]]])  # (1, 2, K+1): query 0 is mostly "no object"
    boxes = torch.tensor([[[0.25, 0.5, 0.5, 1.0], [0.5, 0.5, 0.5, 0.5]]])  # (1, 2, 4) cxcywh
    masks = torch.tensor([[[[5.0, 5.0], [5.0, 5.0]], [[5.0, -5.0], [5.0, -5.0]]]])  # (1, 2, 2, 2)
    [result] = instance_masks(logits, boxes, masks, [(4, 6)])
    # scores: the best class other than "no object", even where "no object" wins (query 0); best first
    score0 = math.exp(2) / (math.exp(2) + 2)
    score1 = math.exp(1) / (1 + math.exp(1) + math.exp(3))
    torch.testing.assert_close(result["scores"], torch.tensor([score0, score1]))
    assert result["labels"].tolist() == [0, 1]
    torch.testing.assert_close(result["boxes"], torch.tensor([[1.5, 1.0, 4.5, 3.0], [0.0, 0.0, 3.0, 4.0]]))
    # the better query: the left half (its 2x2 logits upsampled to 4x6 cross zero halfway); masks overlap freely
    left_half = torch.zeros(4, 6, dtype=torch.bool)
    left_half[:, :3] = True
    assert torch.equal(result["masks"][0], left_half)
    assert bool(result["masks"][1].all())
    # k keeps the best
    [best] = instance_masks(logits, boxes, masks, [(4, 6)], k=1)
    assert best["labels"].tolist() == [0] and best["masks"].shape == (1, 4, 6)
    # on is sigmoid > threshold, strictly: a logit of 0 (probability 0.5) is off
    [undecided] = instance_masks(logits, boxes, torch.zeros(1, 2, 2, 2), [(4, 6)])
    assert not bool(undecided["masks"].any())
    # a higher threshold shrinks the mask: column 2's upsampled logit is 5/3, sigmoid 0.84
    [strict] = instance_masks(logits, boxes, masks, [(4, 6)], threshold=0.9)
    assert strict["masks"][0].sum(0).tolist() == [4, 4, 0, 0, 0, 0]


def test_instance_masks_crop_the_padding_as_the_reference():
    # masks cover a padded 4x4 input; image 0 filled the left 4x2 block of it, image 1 the whole of it
    masks = torch.full((2, 1, 4, 4), -10.0)  # (2, 1, 4, 4)
    masks[:, 0, :, :2] = 10.0  # on over the left half
    logits = torch.tensor([[[3.0, 0.0]], [[3.0, 0.0]]])  # (2, 1, K+1 = 2)
    boxes = torch.full((2, 1, 4), 0.5)
    original_sizes = [(8, 4), (8, 8)]
    cropped = instance_masks(logits, boxes, masks, original_sizes, input_sizes=[(4, 2), (4, 4)])
    # image 0: the valid block is all "on" and fills its 8x4 original; image 1: its left half
    assert bool(cropped[0]["masks"].all()) and cropped[0]["masks"].shape == (1, 8, 4)
    expected_left = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected_left[:, :, :4] = True
    assert torch.equal(cropped[1]["masks"], expected_left)
    # without input_sizes the padding is stretched over image 0 too: only its left half is "on"
    stretched = instance_masks(logits, boxes, masks, original_sizes)
    assert int(stretched[0]["masks"].sum()) == 16
    # a batch padded past its largest image: say so with padded_size. Image 0 now is the left quarter of 4x8
    wide = torch.full((2, 1, 4, 8), -10.0)
    wide[:, 0, :, :2] = 10.0
    padded = instance_masks(logits, boxes, wide, original_sizes, input_sizes=[(4, 2), (4, 4)], padded_size=(4, 8))
    assert bool(padded[0]["masks"].all()) and torch.equal(padded[1]["masks"], expected_left)


# --- semantic ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target_sizes", [[(MASK_H, MASK_W)] * BATCH, [(50, 70), (37, 41)]])
def test_semantic_equals_transformers(processor, target_sizes):
    outputs = random_outputs(seed=2)
    theirs = processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    ours = semantic_segmentation(outputs.logits, outputs.pred_masks, target_sizes)
    for image, (our_map, their_map) in enumerate(zip(ours, theirs)):
        assert our_map.shape == target_sizes[image]
        assert len(their_map.unique()) >= 3
        assert torch.equal(our_map, their_map)


# --- panoptic PNG -----------------------------------------------------------------------------------------


def test_panoptic_png_and_rgb_to_id_round_trip():
    ids = np.array([[0, 1, 255, 256], [65536, 70000, 16777215, 3]], dtype=np.int64)
    image = panoptic_png(torch.from_numpy(ids).int())
    assert image.mode == "RGB" and image.size == (4, 2)
    rgb = np.asarray(image)
    assert rgb[0, 1].tolist() == [1, 0, 0]
    assert rgb[0, 3].tolist() == [0, 1, 0]
    assert rgb[1, 0].tolist() == [0, 0, 1]
    assert rgb[1, 1].tolist() == [112, 17, 1]  # 70000 = 112 + 256 * 17 + 65536
    assert rgb[1, 2].tolist() == [255, 255, 255]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    reloaded = Image.open(io.BytesIO(buffer.getvalue()))
    np.testing.assert_array_equal(rgb_to_id(reloaded), ids)
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)
    assert torch.equal(rgb_to_id(torch.from_numpy(rgb.copy())), torch.from_numpy(ids))
    assert int(rgb_to_id(np.array([112, 17, 1]))) == 70000


def test_panoptic_png_of_a_panoptic_result():
    outputs = random_outputs()
    [result, _] = panoptic_segmentation(outputs.logits, outputs.pred_masks, [(30, 40)] * BATCH, is_thing=IS_THING)
    decoded = torch.from_numpy(rgb_to_id(panoptic_png(result["segmentation"])))
    assert torch.equal(decoded, result["segmentation"].long())
    assert len(decoded.unique()) >= 3


# --- input checks -----------------------------------------------------------------------------------------


def good_inputs():
    return {
        "pred_logits": torch.zeros(2, 3, 4),
        "pred_boxes": torch.full((2, 3, 4), 0.5),
        "pred_masks": torch.zeros(2, 3, 5, 6),
        "image_sizes": [(10, 12), (8, 9)],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pred_logits": torch.zeros(3, 4)}, r"pred_logits must be a \(B, Q, K\+1\)"),
        ({"pred_logits": torch.zeros(2, 3, 1)}, r"K\+1 >= 2"),
        ({"pred_masks": torch.zeros(1, 3, 5, 6)}, r"disagree on \(B, Q\)"),
        ({"pred_masks": torch.zeros(2, 4, 5, 6)}, r"disagree on \(B, Q\)"),
        ({"pred_masks": torch.zeros(2, 3, 1, 5, 6)}, r"squeeze\(2\)"),
        ({"pred_masks": torch.zeros(2, 3, 30)}, r"pred_masks must be a \(B, Q, h, w\)"),
        ({"pred_boxes": torch.zeros(2, 3, 3)}, r"pred_boxes must be \(B, Q, 4\)"),
        ({"image_sizes": [(10, 12)]}, r"image_sizes must have shape \(B, 2\) = \(2, 2\)"),
        ({"image_sizes": [(10, 12), (0, 9)]}, r"positive"),
        ({"input_sizes": [(4, 4)]}, r"input_sizes must have shape"),
        ({"threshold": 1.5}, r"threshold must be in \[0, 1\]"),
        ({"k": 0}, r"k must be at least 1"),
        ({"padded_size": (4, 4)}, r"padded_size only applies with input_sizes"),
        ({"input_sizes": [(6, 4), (4, 4)], "padded_size": (5, 5)}, r"past the padded batch size"),
    ],
)
def test_instance_masks_reject_bad_inputs(change, message):
    with pytest.raises(ValueError, match=message):
        instance_masks(**{**good_inputs(), **change})


def test_panoptic_and_semantic_reject_bad_inputs():
    inputs = good_inputs()
    logits, masks, sizes = inputs["pred_logits"], inputs["pred_masks"], inputs["image_sizes"]
    with pytest.raises(ValueError, match=r"disagree on \(B, Q\)"):
        panoptic_segmentation(logits, masks[:, :2], sizes, is_thing=[True] * 3)
    with pytest.raises(ValueError, match=r"is_thing has 2 entries but the model has K = 3 classes"):
        panoptic_segmentation(logits, masks, sizes, is_thing=[True, False])
    with pytest.raises(ValueError, match=r"is_thing has no entry for class id 2"):
        panoptic_segmentation(logits, masks, sizes, is_thing={0: True, 1: False})
    with pytest.raises(ValueError, match=r"overlap_mask_area_threshold must be in \[0, 1\]"):
        panoptic_segmentation(logits, masks, sizes, is_thing=[True] * 3, overlap_mask_area_threshold=2.0)
    with pytest.raises(ValueError, match=r"image_sizes must have shape"):
        semantic_segmentation(logits, masks, [(4, 4, 4), (4, 4, 4)])
    with pytest.raises(ValueError, match=r"pred_masks must be a \(B, Q, h, w\)"):
        semantic_segmentation(logits, masks[0], sizes)
    with pytest.raises(TypeError, match=r"pred_logits must be a \(B, Q, K\+1\) tensor"):
        semantic_segmentation(logits.numpy(), masks, sizes)


def test_png_helpers_reject_bad_inputs():
    with pytest.raises(ValueError, match=r"\(H, W\) id map"):
        panoptic_png(np.zeros((2, 2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"map it to 0 first"):
        panoptic_png(np.full((2, 2), -1))
    with pytest.raises(ValueError, match=r"integer segment ids"):
        panoptic_png(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"last axis of 3"):
        rgb_to_id(np.zeros((2, 2, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"mode 'L'"):
        rgb_to_id(Image.new("L", (2, 2)))
