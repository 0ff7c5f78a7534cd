"""The paper's mask head: equal to transformers' DetrForSegmentation on the same weights, its layouts."""

from __future__ import annotations

import copy

import pytest
import torch

import detr
from detr.hub.checkpoints import convert_segmentation_state_dict, convert_to_hf_segmentation_state_dict
from detr.models.segmentation import DETRSegmentation

from .conftest import make_hf_detr, padded_pair


@pytest.fixture(scope="module")
def hf_segmentation():
    model = make_hf_detr(num_labels=250, segmentation=True)
    with torch.no_grad():  # a mask head of realistic scale: its random GroupNorm affines vary
        for name, param in model.mask_head.named_parameters():
            if "norm" in name:
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def our_segmentation(hf_segmentation) -> DETRSegmentation:
    state, layout = convert_segmentation_state_dict(hf_segmentation.state_dict())
    assert layout == "hf"
    model = DETRSegmentation(detr.detr_r50(num_classes=250, aux_loss=False))
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_masks_boxes_and_logits_equal_transformers_on_a_padded_batch(hf_segmentation, our_segmentation):
    x, mask = padded_pair(sizes=((192, 256), (160, 224)))
    with torch.no_grad():
        theirs = hf_segmentation(pixel_values=x, pixel_mask=(~mask).long())
        logits, boxes, masks = our_segmentation(x, mask)
    assert masks.shape == theirs.pred_masks.shape == (2, 100, 48, 64)  # 1/4 of the padded input
    assert theirs.pred_masks.std() > 0.1 and theirs.logits.std() > 0.1  # outputs that vary
    torch.testing.assert_close(logits, theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, theirs.pred_boxes, atol=1e-4, rtol=0)
    torch.testing.assert_close(masks, theirs.pred_masks, atol=1e-4, rtol=1e-4)


def test_the_layouts_round_trip(hf_segmentation, our_segmentation):
    ours = our_segmentation.state_dict()
    back = convert_to_hf_segmentation_state_dict(ours)
    expected = {k: v for k, v in hf_segmentation.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert back.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(back[key], value, atol=0, rtol=0, msg=key)
    # the reference's panoptic release: detector in the reference's names, head as ours
    from detr.hub.checkpoints import convert_to_hf_state_dict  # noqa: F401  (the detector's names are shared)

    reference = {}
    for key, value in ours.items():
        key = key.replace("detr.backbone.body.", "detr.backbone.0.body.")
        key = key.replace("detr.class_head.", "detr.class_embed.").replace("detr.box_head.", "detr.bbox_embed.")
        reference[key] = value
    converted, layout = convert_segmentation_state_dict(reference)
    assert layout == "reference" and converted.keys() == ours.keys()


def test_the_mask_head_on_a_shorter_backbone_with_the_training_options():
    torch.manual_seed(0)
    model = detr.detr_r18(num_classes=3, num_queries=5, backbone_layers=2, d_model=32, nhead=4, num_encoder_layers=1,
                          num_decoder_layers=2, dim_feedforward=32, denoising_groups=2, box_refinement=True,
                          dense_aux_loss=True, two_stage=True, masks=True)  # fmt: skip
    assert model.mask_head.stages == 1 and not hasattr(model.mask_head, "lay4")  # layer1 alone under layer2
    x = torch.randn(2, 3, 64, 96)
    targets = _targets_with_masks(((64, 96), (64, 96)), counts=(2, 1), num_classes=3)
    terms = model.get_loss_dict(x, targets)
    assert {"loss_mask", "loss_dice", "loss_ce"} <= set(terms) and any(k.startswith("loss_dn") for k in terms)
    terms["loss"].backward()
    assert model.mask_head.adapter1.weight.grad.abs().sum() > 0 and model.detr.dense_head is not None
    model.eval()
    *_, (logits, boxes, masks) = model(x)
    assert logits.shape == (2, 5, 4) and masks.shape == (2, 5, 16, 24)  # the model's queries only
    found = model.predict(x, k=3)
    assert len(found[0]) == 3 and found[0][0]["mask"].shape == (64, 96)
    own_backbone = torch.nn.Conv2d(3, 8, 32, stride=32)  # a backbone of one's own, without stages
    own_backbone.num_channels = 8
    with pytest.raises(ValueError, match="num_layers >= 2"):
        DETRSegmentation(detr.DETR(detr.DETRConfig(own_backbone, detr.Transformer(d_model=32, nhead=4), 2)))


def _targets_with_masks(sizes, counts=(3, 2), num_classes=250, seed=0):
    gen = torch.Generator().manual_seed(seed)
    targets = []
    for (h, w), n in zip(sizes, counts):
        xy = torch.rand(n, 2, generator=gen) * 0.5 + 0.25
        wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.1
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for i in range(n):  # a rectangle per object, where its box is
            cx, cy, bw, bh = (xy[i, 0] * w, xy[i, 1] * h, wh[i, 0] * w, wh[i, 1] * h)
            masks[i, int(cy - bh / 2) : int(cy + bh / 2), int(cx - bw / 2) : int(cx + bw / 2)] = True
        class_id = torch.randint(0, num_classes, (n,), generator=gen)
        targets.append({"class_id": class_id, "box": torch.cat([xy, wh], 1), "masks": masks})
    return targets


def test_loss_terms_equal_transformers_including_masks(hf_segmentation, our_segmentation):
    sizes = ((192, 256), (160, 224))  # multiples of 32: the padded input is the largest image, as theirs
    x, mask = padded_pair(sizes=sizes)
    targets = _targets_with_masks(sizes)
    labels = [{"class_labels": t["class_id"], "boxes": t["box"], "masks": t["masks"].float()} for t in targets]
    with torch.no_grad():
        theirs = hf_segmentation(pixel_values=x, pixel_mask=(~mask).long(), labels=labels).loss_dict
        ours = our_segmentation.get_loss_dict(x, targets, mask)
    for name in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
        assert ours[name] > 0.01, name  # terms that measure something
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5, msg=name)
    expected = ours["loss_ce"] + 5 * ours["loss_bbox"] + 2 * ours["loss_giou"] + ours["loss_mask"] + ours["loss_dice"]
    torch.testing.assert_close(ours["loss"], expected)


def test_a_training_step_reaches_the_mask_head_and_freezing_keeps_the_detector():
    model = DETRSegmentation(detr.detr_r18(num_classes=3, num_queries=5, d_model=64, nhead=4, num_encoder_layers=1,
                                           num_decoder_layers=2, dim_feedforward=64, aux_loss=True))  # fmt: skip
    x = torch.randn(2, 3, 96, 128)
    targets = _targets_with_masks(((96, 128), (96, 128)), counts=(2, 1), num_classes=3)
    outputs = model(x)
    assert len(outputs) == 2 and len(outputs[0]) == 2 and outputs[-1][2].shape == (2, 5, 24, 32)
    model.get_loss(x, targets).backward()
    assert (
        model.mask_head.lay1.weight.grad.abs().sum() > 0 and model.bbox_attention.q_linear.weight.grad.abs().sum() > 0
    )
    assert model.detr.query_embed.weight.grad.abs().sum() > 0
    frozen = DETRSegmentation(model.detr, freeze_detr=True)
    frozen.get_loss(x, targets).backward()
    assert all(not p.requires_grad for p in frozen.detr.parameters())
    assert frozen.mask_head.out_lay.weight.grad.abs().sum() > 0


PANOPTIC = [n for n in detr.list_models() if n.endswith("_panoptic")]


@pytest.mark.parametrize("name", PANOPTIC)
def test_every_panoptic_factory_builds_the_reference_label_space_and_trains(name):
    torch.manual_seed(0)
    model = detr.create_model(name, num_queries=6, aux_loss=True)
    assert isinstance(model, DETRSegmentation) and model.num_classes == 250
    assert model.class_names[1] == "person" and model.class_names[187] == "sky-other-merged"
    assert model.class_names[91] == "N/A" and model.category_ids[187] == 187
    x = torch.randn(1, 3, 96, 64)
    *layers, (logits, boxes, masks) = model(x)
    assert len(layers) == 5 and logits.shape == (1, 6, 251) and masks.shape == (1, 6, 24, 16)
    model.get_loss(x, _targets_with_masks(((96, 64),), counts=(2,))).backward()
    assert model.mask_head.adapter3.weight.grad.abs().sum() > 0  # layer1's features reach the loss


def test_save_and_from_pretrained_round_trip(our_segmentation, tmp_path):
    model = detr.detr_r50(num_classes=250, aux_loss=False, masks=True, weights=our_segmentation.state_dict())
    model.save_pretrained(tmp_path / "mine")
    again = DETRSegmentation.from_pretrained(tmp_path / "mine")
    x, mask = padded_pair(sizes=((96, 128), (64, 96)))
    with torch.no_grad():
        for a, b in zip(model.eval()(x, mask), again.eval()(x, mask)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="without a mask head"):
        detr.detr_r18(num_classes=2).save_pretrained(tmp_path / "boxes")
        DETRSegmentation.from_pretrained(tmp_path / "boxes")


def test_transformers_segmentation_directories_load_and_export_back(hf_segmentation, our_segmentation, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_segmentation.save_pretrained(tmp_path / "hf")
    ours = detr.from_pretrained(tmp_path / "hf").eval()
    assert isinstance(ours, DETRSegmentation)
    x, mask = padded_pair(sizes=((128, 160), (96, 128)))
    with torch.no_grad():
        theirs = hf_segmentation(pixel_values=x, pixel_mask=(~mask).long())
        logits, boxes, masks = ours(x, mask)
    torch.testing.assert_close(masks, theirs.pred_masks, atol=1e-4, rtol=1e-4)
    ours.export_hf(tmp_path / "back")
    config = (tmp_path / "back" / "config.json").read_text()
    assert "DetrForSegmentation" in config
    back = transformers.DetrForSegmentation.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        again = back(pixel_values=x, pixel_mask=(~mask).long())
    torch.testing.assert_close(again.pred_masks, theirs.pred_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again.logits, theirs.logits, atol=1e-4, rtol=0)


def _reference_layout(state: dict) -> dict:
    """Our mask model's weights written as the reference's panoptic release names them."""
    out = {}
    for key, value in state.items():
        key = key.replace("detr.backbone.body.", "detr.backbone.0.body.")
        key = key.replace("detr.class_head.", "detr.class_embed.").replace("detr.box_head.", "detr.bbox_embed.")
        out[key] = value
    return out


def test_reference_panoptic_checkpoints_load_strictly_and_detection_ones_start_a_mask_head(our_segmentation, tmp_path):
    reference = _reference_layout(our_segmentation.state_dict())
    assert any(k.startswith("detr.backbone.0.body.") for k in reference) and "mask_head.lay1.weight" in reference
    torch.save({"model": reference}, tmp_path / "detr-r50-panoptic.pth")
    model = detr.detr_r50_panoptic(aux_loss=False, weights=tmp_path / "detr-r50-panoptic.pth")
    for key, value in our_segmentation.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0, msg=key)
    broken = dict(reference)
    del broken["mask_head.out_lay.weight"]
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(detr.CheckpointError, match=r"missing keys \(1\): mask_head.out_lay.weight"):
        detr.detr_r50_panoptic(aux_loss=False, weights=tmp_path / "broken.pth")
    # a detection checkpoint: the detector loads, the mask head starts fresh (the reference's second stage)
    detector = {k[len("detr.") :]: v for k, v in our_segmentation.state_dict().items() if k.startswith("detr.")}
    with pytest.warns(UserWarning, match="mask head starts from its initialisation"):
        model = detr.detr_r50(num_classes=250, aux_loss=False, masks=True, freeze_detector=True, weights=detector)
    torch.testing.assert_close(model.detr.class_head.weight, our_segmentation.detr.class_head.weight)
    assert not any(p.requires_grad for p in model.detr.parameters())
    assert all(p.requires_grad for p in model.mask_head.parameters())


def test_predict_gives_each_detection_its_mask_in_original_pixels(our_segmentation):
    from PIL import Image

    model = our_segmentation
    small = detr.ImagePreprocessor(short_side=160, max_size=240)
    images = [Image.new("RGB", (300, 200), "orange"), Image.new("RGB", (150, 250), "teal")]
    found = model.predict(images, k=5, preprocessor=small)
    assert [len(d) for d in found] == [5, 5]
    for dets, image in zip(found, images):
        for det in dets:
            assert det["mask"].shape == (image.height, image.width) and det["mask"].dtype == torch.bool
    # the same as the reference route by hand: the query's mask logits, upsampled to the padded input,
    # binarized, cropped to the resized image, resized to the original
    batch = small(images)
    with torch.no_grad():
        logits, boxes, masks = model(batch.pixel_values, batch.mask)
    query = logits[1].softmax(-1)[:, :-1].max(-1).values.argmax()  # image 1's best query
    up = torch.nn.functional.interpolate(
        masks[1:2, query : query + 1], size=batch.pixel_values.shape[-2:], mode="bilinear"
    )
    h, w = batch.resized_sizes[1].tolist()
    expected = torch.nn.functional.interpolate((up[:, :, :h, :w].sigmoid() > 0.5).float(), size=(250, 150))[0, 0] > 0
    assert torch.equal(found[1][0]["mask"], expected)
    # panoptic: a segment-id map of the original image, stuff and things by COCO panoptic's rule
    confident = copy.deepcopy(model)
    with torch.no_grad():  # random heads are unsure of everything: make every query sure of class 1 (a thing)
        confident.detr.class_head.bias[1] += 20
        confident.mask_head.out_lay.bias += 10  # and of masks that cover something (3: none, on an AMD EPYC)
    panoptic = confident.panoptic(images, preprocessor=small)
    assert panoptic[0]["segmentation"].shape == (200, 300) and panoptic[1]["segmentation"].shape == (250, 150)
    ids = {s["id"] for s in panoptic[0]["segments_info"]}
    assert ids and set(panoptic[0]["segmentation"].unique().tolist()) - {0} <= ids


def test_a_mask_model_exports_to_onnx_with_masks_as_a_third_output(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from detr.deploy.export import check_onnx, check_onnx_masks, export_onnx

    torch.manual_seed(0)
    model = detr.detr_r18(num_classes=3, num_queries=5, backbone_layers=2, d_model=32, nhead=4, num_encoder_layers=1,
                          num_decoder_layers=2, dim_feedforward=32, denoising_groups=2, box_refinement=True,
                          dense_aux_loss=True, two_stage=True, masks=True, backbone_norm="bn").eval()  # fmt: skip
    path = export_onnx(model, tmp_path / "masks.onnx", height=64, width=96)
    import onnx

    assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits", "boxes", "masks"]
    gen = torch.Generator().manual_seed(1)
    for batch, height, width in ((1, 64, 96), (2, 96, 64)):  # other sizes and batch than traced, one image padded
        x = torch.randn(batch, 3, height, width, generator=gen)
        mask = torch.zeros(batch, height, width, dtype=torch.bool)
        mask[-1, :, width // 2 :] = batch > 1
        logits, boxes = check_onnx(path, model, x, mask)
        assert logits < 1e-4 and boxes < 1e-4
        assert check_onnx_masks(path, model, x, mask) < 1e-4
    exported = detr.load(path)
    assert exported.class_names is None and exported.num_queries == 5  # the metadata of the mask model


def test_training_computes_the_masks_of_matched_queries_only_and_the_same_loss(our_segmentation):
    from detr.losses.mask_loss import mask_loss_terms

    model = our_segmentation
    sizes = ((96, 128), (64, 128))
    x, mask = padded_pair(sizes=sizes)
    targets = _targets_with_masks(sizes, counts=(3, 2))
    with torch.no_grad():
        fast = model.get_loss_dict(x, targets, mask)
        logits, boxes, masks, _ = model._decode(x, mask)  # every query's mask, as inference computes them
        indices = model.detr.criterion.matcher((logits[-1], boxes[-1]), targets)
        full = mask_loss_terms(masks, targets, indices, 5.0, pad_to=tuple(x.shape[-2:]))
    for name in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(fast[name], full[name], atol=1e-6, rtol=1e-5)
