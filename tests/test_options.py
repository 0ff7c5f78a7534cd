"""The options for fast training from scratch: query groups, denoising queries, backbone depth, schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

import detr
from detr.engine import TrainConfig, Trainer
from detr.models.layers import box_sine_embedding
from detr.options import from_switches
from detr.options.dense import DenseHead, varifocal_loss
from detr.processing.checks import pad_targets

from .conftest import random_targets

SMALL = dict(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64, dropout=0.0)


def small(**kwargs) -> detr.DETR:
    torch.manual_seed(0)
    return detr.detr_r18(
        num_classes=4, num_queries=5, aux_loss=True, backbone_norm="bn", freeze_stem=False, **SMALL, **kwargs
    )


def test_without_options_the_one_pass_is_the_transformers_reference_call():
    """The pass runs the transformer as its encoder and decoder steps (between which options act); without
    options that is, bitwise, the reference's single call with the heads on every layer, and what the mask
    head reads (the last layer's embeddings, the encoder output as a map) is what that call gives."""
    model = small().eval()
    x = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, 40:, 64:] = True
    with torch.no_grad():
        found = model.decoder_pass(x, mask)
        src, feat_mask, pos = model._features(x, mask)
        hs, memory = model.transformer(src, feat_mask, model.query_embed.weight, pos)  # (L, B, Q, d), (B, d, h, w)
        logits, boxes = model.class_head(hs), model.box_head(hs).sigmoid()
    assert torch.equal(found.logits, logits) and torch.equal(found.boxes, boxes)
    assert torch.equal(found.hidden, hs[-1]) and torch.equal(found.memory, memory)


def test_query_groups_train_separately_and_infer_with_the_first():
    model = small(query_groups=3)
    assert model.query_embed.weight.shape == (15, 32)
    x = torch.randn(2, 3, 64, 64)
    targets = random_targets(2, 4, counts=(2, 1))
    model.train()
    logits, boxes = model.decode(x)
    assert logits.shape == (2, 2, 15, 5)  # (L, B, groups * Q, K + 1) in training
    assert model(x)[-1][0].shape == (2, 5, 5)  # the API shape: first group
    # each group only sees itself: changing group 2's queries leaves group 1's outputs alone
    with torch.no_grad():
        model.query_embed.weight[5:] += 1.0
    logits2, _ = model.decode(x)
    torch.testing.assert_close(logits2[:, :, :5], logits[:, :, :5])
    assert not torch.allclose(logits2[:, :, 5:], logits[:, :, 5:])
    # the loss is the sum of the groups' losses
    terms = model.get_loss_dict(x, targets)
    per_group = [
        model.criterion(list(zip(logits2[:, :, q].unbind(0), _[:, :, q].unbind(0))), targets)["loss"]
        for q in (slice(0, 5), slice(5, 10), slice(10, 15))
    ]
    torch.testing.assert_close(terms["loss"], sum(per_group))
    model.eval()
    assert model.decode(x)[0].shape == (2, 2, 5, 5)


def test_denoising_queries_train_only_and_stay_out_of_the_matching_queries():
    model = small(denoising_groups=2).train()
    x = torch.randn(2, 3, 64, 64)
    targets = random_targets(2, 4, counts=(3, 0))
    terms = model.get_loss_dict(x, targets)
    assert {"loss_dn_ce", "loss_dn_bbox", "loss_dn_giou"} <= set(terms)
    terms["loss"].backward()
    assert model.denoising.label_embed.weight.grad.abs().sum() > 0
    assert model.denoising.box_embed[0].weight.grad.abs().sum() > 0
    # the matching queries never see the denoising ones
    dn = model.denoising(targets, x.device)
    assert dn.query_pos.shape == (2, 2 * 3, 32) and dn.valid.sum() == 2 * 3
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        with_dn, _, _ = model._decode(x, mask, None, targets)
        without, _, _ = model._decode(x, mask, None)
    torch.testing.assert_close(with_dn[:, :, :5], without, atol=1e-5, rtol=0)
    # inference does not use them at all
    model.eval()
    before = model(x)[-1][0]
    with torch.no_grad():
        model.denoising.label_embed.weight.add_(3.0)
    torch.testing.assert_close(model(x)[-1][0], before)


def test_pad_targets_pads_each_image_to_the_most_objects():
    # shared by the matcher and the denoising queries: image 0 has two objects, image 1 none, image 2 one
    targets = [
        {"class_id": torch.tensor([2, 1]), "box": torch.tensor([[0.2, 0.3, 0.1, 0.2], [0.6, 0.6, 0.4, 0.3]])},
        {"class_id": torch.zeros(0, dtype=torch.int64), "box": torch.zeros(0, 4)},
        {"class_id": torch.tensor([4]), "box": torch.tensor([[0.7, 0.2, 0.2, 0.2]], dtype=torch.float64)},
    ]
    class_id, box, valid = pad_targets(targets)
    assert torch.equal(class_id, torch.tensor([[2, 1], [0, 0], [4, 0]]))
    assert box.dtype == torch.float32 and box.shape == (3, 2, 4)
    assert torch.equal(box[0], targets[0]["box"])
    assert torch.equal(box[1], torch.full((2, 4), 0.5))
    assert torch.equal(box[2], torch.tensor([[0.7, 0.2, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5]]))
    assert torch.equal(valid, torch.tensor([[True, True], [False, False], [True, False]]))
    class_id, box, valid = pad_targets(targets[1:2])  # no object anywhere: N = 0
    assert class_id.shape == (1, 0) and box.shape == (1, 0, 4) and valid.shape == (1, 0)


def test_denoising_with_no_targets_at_all():
    model = small(denoising_groups=2).train()
    empty = {"class_id": torch.zeros(0, dtype=torch.int64), "box": torch.zeros(0, 4)}
    terms = model.get_loss_dict(torch.randn(1, 3, 64, 64), [empty])
    assert "loss_dn_ce" not in terms and torch.isfinite(terms["loss"])


def test_box_refinement_starts_at_the_anchors_and_refines_per_layer(tmp_path):
    model = small(box_refinement=True, denoising_groups=2).train()
    x = torch.randn(2, 3, 64, 64)
    targets = random_targets(2, 4, counts=(2, 1))
    # before training the box head predicts no correction: every layer's boxes are the learned anchors
    _, boxes = model.decode(x)
    anchors = model.refinement.initial_anchors(5)
    torch.testing.assert_close(boxes, anchors.expand_as(boxes))
    terms = model.get_loss_dict(x, targets)
    terms["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    # anchors, their position MLP and the denoising labels all learn; the box head's hidden layers
    # get gradients once its zero-initialised last layer has moved
    assert no_grad == [f"box_head.layers.{i}.{w}" for i in (0, 1) for w in ("weight", "bias")], no_grad
    # the denoising queries start from the noised ground truth: their anchors are the noised boxes
    assert model.denoising.box_embed is None
    with pytest.raises(ValueError, match="box_refinement models cannot be exported"):
        model.export_hf(tmp_path / "hf")
    model.eval()
    model.save_pretrained(tmp_path / "m")
    torch.testing.assert_close(detr.DETR.from_pretrained(tmp_path / "m").eval()(x)[-1], model(x)[-1])


def test_box_sine_embedding():
    emb = box_sine_embedding(torch.tensor([[0.5, 0.25, 0.1, 0.2]]), 16)
    assert emb.shape == (1, 64)
    # first feature of each coordinate is sin(2 pi * coordinate), in the order cy, cx, h, w
    torch.testing.assert_close(emb[0, [0, 16, 32, 48]], torch.sin(2 * math.pi * torch.tensor([0.25, 0.5, 0.2, 0.1])))


@pytest.mark.parametrize("layers, stride, channels", [(2, 8, 128), (3, 16, 256), (4, 32, 512)])
def test_backbone_depth(layers, stride, channels):
    backbone = detr.ResNetBackbone("resnet18", num_layers=layers)
    assert (backbone.stride, backbone.num_channels) == (stride, channels)
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, channels, 64 // stride, 64 // stride)


def test_backbone_blocks_per_stage_runs_the_first_blocks_of_torchvisions_resnet(tmp_path, monkeypatch):
    """A ResNet-18 cut to one block a stage computes stem -> layer1[0] -> layer2[0] of torchvision's own
    network with the same weights, and its ImageNet weights are the first blocks' (loaded before the cut)."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    # train mode makes fresh batch statistics, eval the running ones: give them values to catch a mix-up
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    monkeypatch.setattr("detr.models.backbone.download", lambda url, instead: weights)
    cut = detr.ResNetBackbone("resnet18", pretrained=True, num_layers=2, blocks_per_stage=1).eval()
    assert [len(cut.body[stage]) for stage in ("layer1", "layer2")] == [1, 1]
    assert cut.spec()["blocks_per_stage"] == 1
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        r = reference
        stem = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        expected = r.layer2[0](r.layer1[0](stem))  # (2, 128, 8, 8): stride 8, the second block of each skipped
        torch.testing.assert_close(cut(x), expected, rtol=1e-4, atol=1e-4)
    full = detr.ResNetBackbone("resnet18", num_layers=2)
    removed = sum(p.numel() for stage in ("layer1", "layer2") for p in full.body[stage][1].parameters())
    assert sum(p.numel() for p in cut.parameters()) == sum(p.numel() for p in full.parameters()) - removed
    # a ResNet-50's stages have 3, 4, 6, 3 blocks: 4 keeps all of layer1 and layer4
    r50 = detr.ResNetBackbone("resnet50", blocks_per_stage=4)
    assert [len(r50.body[f"layer{i}"]) for i in range(1, 5)] == [3, 4, 4, 3]


def test_backbone_blocks_survive_save_and_load_and_block_the_transformers_export(tmp_path):
    model = small(backbone_layers=2, backbone_blocks=1).eval()
    assert len(model.backbone.body["layer2"]) == 1
    model.save_pretrained(tmp_path / "m")
    loaded = detr.DETR.from_pretrained(tmp_path / "m").eval()
    assert loaded.backbone.blocks_per_stage == 1
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x)[-1], model(x)[-1])
    # a model built from parts is saved by its backbone's spec
    transformer = detr.Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64)
    backbone = detr.ResNetBackbone("resnet18", num_layers=2, blocks_per_stage=1)
    detr.DETR(detr.DETRConfig(backbone, transformer, 3, num_queries=4)).save_pretrained(tmp_path / "parts")
    assert len(detr.DETR.from_pretrained(tmp_path / "parts").backbone.body["layer1"]) == 1
    # a checkpoint of the full network is not this model's: refused, not half loaded
    with pytest.raises((RuntimeError, ValueError), match="layer1.1"):
        small(backbone_layers=2, backbone_blocks=1, weights=small(backbone_layers=2).state_dict())
    with pytest.raises(ValueError, match="all their blocks and channels"):
        detr.detr_r50(num_classes=2, backbone_blocks=2).export_hf(tmp_path / "hf")


def test_backbone_width_is_torchvisions_blocks_at_fewer_channels(tmp_path):
    """width 0.5: a ResNet-18 cut at layer2 with 32 / 32 / 64 channels, which a network assembled here from
    torchvision's own BasicBlock (stride-2 block with a 1x1 downsample, as in the paper's network) loads weight
    for weight and reproduces; about a quarter of the full width's arithmetic; saved and loaded with its width."""
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    narrow = detr.ResNetBackbone("resnet18", num_layers=2, norm="bn", width=0.5).eval()
    assert (narrow.num_channels, narrow.level_channels, narrow.spec()["width"]) == (64, [32, 64], 0.5)

    def bn(c):
        return torch.nn.BatchNorm2d(c)

    downsample = torch.nn.Sequential(torch.nn.Conv2d(32, 64, 1, stride=2, bias=False), bn(64))
    reference = torch.nn.ModuleDict(
        {
            "conv1": torch.nn.Conv2d(3, 32, 7, stride=2, padding=3, bias=False),
            "bn1": bn(32),
            "layer1": torch.nn.Sequential(BasicBlock(32, 32), BasicBlock(32, 32)),
            "layer2": torch.nn.Sequential(BasicBlock(32, 64, stride=2, downsample=downsample), BasicBlock(64, 64)),
        }
    ).eval()
    for module in narrow.modules():  # running statistics other than the initial ones, to catch a mix-up
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    reference.load_state_dict(narrow.body.state_dict())  # strict: the same names and shapes, nothing left over
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        r = reference
        stem = torch.nn.functional.max_pool2d(r["bn1"](r["conv1"](x)).relu(), 3, 2, 1)
        torch.testing.assert_close(narrow(x), r["layer2"](r["layer1"](stem)))  # (2, 64, 8, 8)

    def flops(backbone):
        with FlopCounterMode(display=False) as counter:
            backbone(x)
        return counter.get_total_flops()

    full = detr.ResNetBackbone("resnet18", num_layers=2, norm="bn")
    assert 0.25 < flops(narrow) / flops(full) < 0.3  # every conv a quarter, but the stem's 3 input channels
    model = small(backbone_layers=2, backbone_width=0.5).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = detr.DETR.from_pretrained(tmp_path / "m").eval()
    assert loaded.backbone.width == 0.5 and loaded.backbone.num_channels == 64
    torch.testing.assert_close(loaded(x)[-1], model(x)[-1])


def test_backbone_pyramid_adds_the_deeper_stages_top_down_into_the_output_stage(tmp_path):
    """pyramid=True on a ResNet-18 cut at layer2: torchvision's own ResNet-18 with the same weights gives the
    stages C2, C3, C4 (layer2-4), and the output is FPN's finest map written out here (Lin et al. 2017: 1x1
    laterals, each added to the nearest-upsampled coarser sum, then a 3x3 conv, each conv with the backbone's
    batch norm), at the cut's stride and channels; the model saves and loads with it, folds for inference, and a checkpoint without the pyramid is refused."""
    torch.manual_seed(0)
    backbone = detr.ResNetBackbone("resnet18", num_layers=2, norm="bn", pyramid=True).eval()
    for module in backbone.modules():  # running statistics other than the initial ones, to catch a mix-up
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    reference = torchvision.models.resnet18(weights=None).eval()
    missing, unexpected = reference.load_state_dict(backbone.body.state_dict(), strict=False)
    assert (sorted(missing), unexpected) == (["fc.bias", "fc.weight"], [])  # every stage up to layer4 computed
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        r = reference
        c2 = r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))  # (2, 128, 12, 8)
        c3 = r.layer3(c2)  # (2, 256, 6, 4)
        c4 = r.layer4(c3)  # (2, 512, 3, 2)
        # conv + batch norm each: 1x1 laterals of C2, C3, C4, and the 3x3 output conv of the finest level, the
        # one output read (the coarser levels' output convs are not built)
        inner, outer = backbone.pyramid.inner_blocks, backbone.pyramid.layer_blocks
        assert [block[0].kernel_size for block in [*inner, outer[0]]] == [(1, 1)] * 3 + [(3, 3)]
        assert all(isinstance(block[1], torch.nn.BatchNorm2d) for block in [*inner, outer[0]])
        assert all(isinstance(block, torch.nn.Identity) for block in outer[1:])
        up = torch.nn.functional.interpolate
        p4 = inner[2](c4)
        p3 = inner[1](c3) + up(p4, size=c3.shape[-2:], mode="nearest")
        p2 = inner[0](c2) + up(p3, size=c2.shape[-2:], mode="nearest")
        torch.testing.assert_close(backbone(x), outer[0](p2), rtol=1e-4, atol=1e-4)
    assert (backbone.stride, backbone.num_channels, backbone(x).shape) == (8, 128, (2, 128, 12, 8))
    # every parameter of layer3, layer4 and the pyramid gets a gradient (DDP refuses parameters left without one)
    backbone.train()(x).square().mean().backward()
    assert [name for name, p in backbone.named_parameters() if p.requires_grad and p.grad is None] == []
    assert backbone.spec()["pyramid"] is True
    model = small(backbone_layers=2, backbone_pyramid=True).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = detr.DETR.from_pretrained(tmp_path / "m").eval()
    assert loaded.backbone.pyramid is not None
    torch.testing.assert_close(loaded(x)[-1], model(x)[-1])
    # the inference copy folds the pyramid's batch norms into its convolutions too, with the same outputs
    inference = model.optimize_for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inference.modules())
    torch.testing.assert_close(inference(x), model(x)[-1], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="missing keys.*backbone.body.layer3"):
        small(backbone_layers=2, backbone_pyramid=True, weights=small(backbone_layers=2).state_dict())
    with pytest.raises(ValueError, match="pyramid adds the stages after the output one"):
        detr.ResNetBackbone("resnet18", pyramid=True)


@pytest.mark.parametrize("width", [0, 1.5, 0.3, "half"])
def test_backbone_width_errors(width, tmp_path):
    with pytest.raises(ValueError, match="width must be in"):
        detr.ResNetBackbone("resnet18", width=width)
    with pytest.raises(ValueError, match="full width only"):
        detr.ResNetBackbone("resnet18", pretrained=True, width=0.5)
    with pytest.raises(ValueError, match="all their blocks and channels"):
        detr.detr_r50(num_classes=2, backbone_width=0.5).export_hf(tmp_path / "hf")


def test_backbone_option_errors():
    with pytest.raises(ValueError, match="num_layers must be 4"):
        detr.ResNetBackbone("resnet50", num_layers=1)
    with pytest.raises(ValueError, match="DC5.*num_layers=4"):
        detr.ResNetBackbone("resnet50", dilation=True, num_layers=3)
    for blocks in (0, 1.5, True):
        with pytest.raises(ValueError, match="blocks_per_stage must be a positive number"):
            detr.ResNetBackbone("resnet18", blocks_per_stage=blocks)
    with pytest.raises(ValueError, match="norm must be 'frozen_bn'"):
        detr.ResNetBackbone("resnet18", norm="group")
    with pytest.raises(ValueError, match="query_groups must be an int >= 1"):
        small(query_groups=0)
    with pytest.raises(ValueError, match="label_noise must be in"):
        small(denoising_groups=1, denoising_label_noise=2.0)


def test_trainable_batch_norm_and_stem():
    model = small()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_learning_rate_schedules(tmp_path):
    from detr.data.synthetic import SynthConfig, make_dataset

    data = make_dataset(tmp_path / "d", train=8, val=2, seed=0, config=SynthConfig(image_size=32, max_objects=1))
    base = dict(
        data=str(data),
        output_dir=str(tmp_path / "r"),
        model="detr_r18",
        pretrained_backbone=False,
        batch_size=4,
        val_split="",
        model_kwargs=SMALL,
    )
    cosine = Trainer(TrainConfig(**base, lr_schedule="cosine", warmup_steps=4, max_steps=20))
    assert cosine.steps_per_epoch == 2
    assert cosine.lr_factor(0) == pytest.approx(0.25) and cosine.lr_factor(3) == pytest.approx(1.0)
    assert cosine.lr_factor(12) == pytest.approx(0.5) and cosine.lr_factor(20) == pytest.approx(0.0)
    step = Trainer(TrainConfig(**base, lr_drop=3, epochs=10))
    assert step.lr_factor(5) == 1.0 and step.lr_factor(6) == pytest.approx(0.1)  # epoch 3 starts at step 6
    with pytest.raises(ValueError, match="lr_schedule must be step or cosine"):
        TrainConfig(**base, lr_schedule="linear")
    # annealed by time: half the minutes gone at a tenth of the steps is half-way down the cosine
    timed = Trainer(TrainConfig(**base, lr_schedule="cosine", max_steps=1000, max_minutes=2.0, anneal_by_time=True))
    timed.started -= 60.0  # one of the two minutes has passed
    assert timed.lr_factor(100) == pytest.approx(0.5, abs=0.01)
    assert timed.lr_factor(900) == pytest.approx(cosine_factor(0.9), abs=1e-6)  # steps ahead of the clock
    timed.started -= 120.0
    assert timed.lr_factor(100) == 0.0
    with pytest.raises(ValueError, match="anneal_by_time needs lr_schedule cosine and max_minutes > 0"):
        TrainConfig(**base, lr_schedule="cosine", anneal_by_time=True)


def cosine_factor(progress: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * progress))


def test_export_leaves_out_training_only_parts(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = detr.detr_r50(num_classes=2, num_queries=4, aux_loss=False, query_groups=2, denoising_groups=2).eval()
    model.export_hf(tmp_path / "hf")
    hf = transformers.DetrForObjectDetection.from_pretrained(tmp_path / "hf").eval()
    assert hf.model.query_position_embeddings.weight.shape == (4, 256)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(pixel_values=x).logits, atol=1e-4, rtol=0)


def test_dense_head_assigns_tokens_by_centre_sampling():
    head = DenseHead()
    anchors, valid = head.anchors(4, 4, None, torch.device("cpu"))  # cell centres at 0.125, 0.375, ...
    assert anchors.shape == (1, 16, 4) and valid.all()
    torch.testing.assert_close(anchors[0, 5], torch.tensor([0.375, 0.375, 0.5, 0.5]))  # 2 cells wide
    target = {
        "class_id": torch.tensor([0, 1, 2]),
        "box": torch.tensor([[0.375, 0.375, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.9, 0.02, 0.02]]),
    }
    assigned = head.assign(anchors[0], valid[0], target)
    # the small box owns the cell of its centre, which the big one's central region also covers;
    # the big one keeps the other three cells of its central region; the tiny one gets its own cell
    expected = torch.full((16,), -1)
    expected[5] = 0
    expected[[6, 9, 10]] = 1
    expected[12] = 2
    torch.testing.assert_close(assigned, expected)
    # padded tokens are never positive, and the valid region sets the cell centres
    feat_mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    feat_mask[:, :, 2:] = True  # right half padded: two valid columns
    anchors, valid = head.anchors(4, 4, feat_mask, torch.device("cpu"))
    assert valid.sum() == 8 and anchors[0, 1, 0] == 0.75  # column 1's centre is 3/4 of the valid width
    assigned = head.assign(anchors[0], valid[0], target)
    assert (assigned[~valid[0]] == -1).all() and (assigned >= 0).any()


def test_dense_head_center_cells_gives_a_small_object_its_neighbourhood():
    anchors, valid = DenseHead().anchors(8, 8, None, torch.device("cpu"))  # cells 1/8 wide
    # a box a fifth of a cell wide, its centre 0.2 cells right of cell (3, 4)'s centre (row 3, column 4)
    target = {"class_id": torch.tensor([0]), "box": torch.tensor([[4.7 / 8, 3.5 / 8, 0.025, 0.025]])}
    alone = DenseHead().assign(anchors[0], valid[0], target)
    assert (alone == 0).nonzero().flatten().tolist() == [3 * 8 + 4]  # its own cell only
    near = DenseHead(center_cells=1.5).assign(anchors[0], valid[0], target)
    # within 1.5 cells in both axes: rows 2-4 (1, 0, 1 cell away), columns 3-5 (1.2, 0.2, 0.8 away)
    rows, cols = (near == 0).nonzero().flatten().div(8, rounding_mode="floor"), (near == 0).nonzero().flatten() % 8
    assert sorted(set(rows.tolist())) == [2, 3, 4] and sorted(set(cols.tolist())) == [3, 4, 5]
    assert int((near == 0).sum()) == 9
    # a larger box whose central region covers cell (2, 4) keeps it: the neighbourhood takes unclaimed tokens only
    target = {
        "class_id": torch.tensor([0, 1]),
        "box": torch.cat([target["box"], torch.tensor([[4.5 / 8, 2.5 / 8, 0.2, 0.2]])]),
    }
    shared = DenseHead(center_cells=1.5).assign(anchors[0], valid[0], target)
    assert shared[2 * 8 + 4] == 1 and int((shared == 0).sum()) == 8 and shared[3 * 8 + 4] == 0
    with pytest.raises(ValueError, match="center_cells"):
        DenseHead(center_cells=-1)
    with pytest.raises(ValueError, match="dense_aux_loss=True"):
        from_switches(dense_center_cells=1.5)
    with pytest.raises(ValueError, match="dense_aux_loss=True"):
        from_switches(dense_varifocal=True)
    assert [o.spec()["center_cells"] for o in from_switches(dense_aux_loss=True, dense_center_cells=1.5)] == [1.5]


def test_varifocal_loss_weights_positives_by_quality_and_negatives_by_their_score():
    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    quality = torch.tensor([[0.6, 0.0], [0.0, 0.0]])
    p = 1 / (1 + torch.exp(-logits))
    # VarifocalNet's eq. 2 written out: -q (q log p + (1 - q) log (1 - p)) on a positive, -alpha p^gamma log(1 - p)
    positive = -0.6 * (0.6 * torch.log(p[0, 0]) + 0.4 * torch.log(1 - p[0, 0]))
    negatives = -(0.75 * p[[0, 1, 1], [1, 0, 1]] ** 2 * torch.log(1 - p[[0, 1, 1], [1, 0, 1]])).sum()
    torch.testing.assert_close(varifocal_loss(logits, quality), positive + negatives)


def test_dense_head_varifocal_targets_are_the_positives_iou():
    head = DenseHead(varifocal=True)
    head.weights = {"loss_dense_ce": 1.0, "loss_dense_bbox": 5.0, "loss_dense_giou": 2.0}  # attach() sets them
    anchors, valid = head.anchors(4, 4, None, torch.device("cpu"))
    target = {"class_id": torch.tensor([1]), "box": torch.tensor([[0.375, 0.375, 0.5, 0.5]])}
    logits = torch.zeros(1, 16, 2, requires_grad=True)
    boxes = anchors.clone()  # each token's box its 2-cell anchor: the positive (cell 5) fits its target exactly
    terms = head.loss(logits, boxes, anchors, valid, [target])
    (grad,) = torch.autograd.grad(terms["loss_dense_ce"], logits)
    # at p = 0.5 the gradient on a logit is weight * (p - target) / positives: the positive's target is its IoU, 1
    assert grad[0, 5, 1] == pytest.approx(1.0 * (0.5 - 1.0) / 1)
    assert grad[0, 5, 0] == pytest.approx(0.75 * 0.25 * 0.5)  # another class of it: a negative
    boxes = anchors.clone()
    boxes[0, 5, 2:] = 0.25  # half as wide and high: IoU 1/4
    terms = head.loss(logits, boxes, anchors, valid, [target])
    (grad,) = torch.autograd.grad(terms["loss_dense_ce"], logits)
    assert grad[0, 5, 1] == pytest.approx(0.25 * (0.5 - 0.25))


def test_dense_head_per_target_weighs_each_target_once_in_the_box_terms():
    weights = {"loss_dense_ce": 1.0, "loss_dense_bbox": 1.0, "loss_dense_giou": 1.0}  # attach() sets them
    anchors, valid = DenseHead().anchors(4, 4, None, torch.device("cpu"))
    a, b = [0.375, 0.375, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]
    # image 0: a owns token 5 (its anchor, a's box exactly), b tokens 6, 9, 10; image 1: b alone, tokens 5, 6, 9, 10
    targets = [
        {"class_id": torch.tensor([0, 1]), "box": torch.tensor([a, b])},
        {"class_id": torch.tensor([1]), "box": torch.tensor([b])},
    ]
    logits = torch.zeros(2, 16, 2)
    boxes = anchors.expand(2, -1, -1).clone()  # every token's box its anchor: half b's side, a cell off its centre
    terms = {}
    for per_target in (False, True):
        head = DenseHead(per_target=per_target)
        head.weights = weights
        terms[per_target] = head.loss(logits, boxes, anchors.expand(2, -1, -1), valid.expand(2, -1), targets)
    # a b token's L1: 1/8 + 1/8 + 1/2 + 1/2; its GIoU loss: 1 - 1/4 (inside b, a quarter of it); a's token: 0
    assert terms[False]["loss_dense_bbox"] == pytest.approx(7 * 1.25 / 8)  # eight positive tokens
    assert terms[False]["loss_dense_giou"] == pytest.approx(7 * 0.75 / 8)
    assert terms[True]["loss_dense_bbox"] == pytest.approx(2 * 1.25 / 3)  # three targets: a, b and image 1's b
    assert terms[True]["loss_dense_giou"] == pytest.approx(2 * 0.75 / 3)
    assert terms[True]["loss_dense_ce"] == terms[False]["loss_dense_ce"]  # the class term is the tokens' still
    with pytest.raises(ValueError, match="dense_aux_loss=True"):
        from_switches(dense_per_target=True)
    assert [o.spec()["per_target"] for o in from_switches(dense_aux_loss=True, dense_per_target=True)] == [True]


def test_dense_head_cells_coding_moves_a_box_the_same_pixels_anywhere():
    """The box head's output (dx, dy, dw, dh) in cells: the centre moves dx cells, the width scales by e^dw."""
    memory = torch.randn(1, 4 * 8, 16)  # a 4 x 8 map: cells 1/8 wide, 1/4 high
    heads = {coding: DenseHead(box_coding=coding) for coding in ("logit", "cells")}
    for head in heads.values():
        head.class_head, head.box_head = torch.nn.Linear(16, 3), torch.nn.Linear(16, 4)  # attach() makes them
        torch.nn.init.zeros_(head.box_head.weight)
        torch.nn.init.zeros_(head.box_head.bias)
        _, boxes, anchors, _ = head(memory, 4, 8, None)
        torch.testing.assert_close(boxes, anchors)  # zero corrections: every box its token's anchor
        with torch.no_grad():
            head.box_head.bias.copy_(torch.tensor([1.0, -0.5, math.log(2.0), 0.0]))
    _, boxes, anchors, _ = heads["cells"](memory, 4, 8, None)
    # every token's box one cell right and half a cell up of its own centre, twice its anchor's width
    torch.testing.assert_close(boxes[..., 0] - anchors[..., 0], torch.full((1, 32), 1 / 8))
    torch.testing.assert_close(boxes[..., 1] - anchors[..., 1], torch.full((1, 32), -0.5 / 4))
    torch.testing.assert_close(boxes[..., 2:], anchors[..., 2:] * torch.tensor([2.0, 1.0]))
    # logit space moves a box by an amount that depends on where it is: the border's tokens less than the middle's
    _, boxes, anchors, _ = heads["logit"](memory, 4, 8, None)
    shift = boxes[0, :8, 0] - anchors[0, :8, 0]  # the first row, left to right
    assert shift[0] < 0.6 * shift[3]
    with pytest.raises(ValueError, match="box_coding must be one of 'logit', 'cells'"):
        DenseHead(box_coding="ltrb")
    with pytest.raises(ValueError, match="dense_aux_loss=True"):
        from_switches(dense_box_coding="cells")
    assert [o.spec()["box_coding"] for o in from_switches(dense_aux_loss=True, dense_box_coding="cells")] == ["cells"]


def test_dense_head_cells_coding_trains_saves_and_loads(tmp_path):
    model = small(box_refinement=True, dense_aux_loss=True, two_stage=True, dense_box_coding="cells", backbone_layers=2)
    x = torch.randn(2, 3, 64, 64)
    model.get_loss(x, random_targets(2, 4, counts=(2, 1))).backward()
    assert model.dense_head.box_head.layers[-1].weight.grad.abs().sum() > 0
    model.eval()
    model.save_pretrained(tmp_path / "m")
    again = detr.DETR.from_pretrained(tmp_path / "m").eval()
    assert again.dense_head.box_coding == "cells"
    with torch.no_grad():
        torch.testing.assert_close(again(x)[-1], model(x)[-1])


def test_dense_aux_loss_trains_encoder_and_leaves_inference_alone(tmp_path):
    model = small(dense_aux_loss=True, denoising_groups=2).train()
    x = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 64:] = True
    targets = random_targets(2, 4, counts=(2, 1))
    terms = model.get_loss_dict(x, targets, mask)
    assert {"loss_dense_ce", "loss_dense_bbox", "loss_dense_giou"} <= set(terms)
    weights = model.dense_head.weights
    dense_total = sum(weights[k] * terms[k] for k in weights)
    assert dense_total > 0
    terms["loss"].backward()
    assert model.dense_head.class_head.weight.grad.abs().sum() > 0
    assert model.dense_head.box_head.layers[-1].weight.grad.abs().sum() > 0
    # the dense head's gradient reaches the encoder: alone, it moves the encoder's weights
    model.zero_grad()
    model.dense_head.loss(*_dense_outputs(model, x, mask, targets), targets)["loss"].backward()
    assert model.transformer.encoder.layers[0].linear1.weight.grad.abs().sum() > 0
    assert model.transformer.decoder.layers[0].linear1.weight.grad is None
    # inference ignores the head; saved and reloaded, the model predicts the same
    model.eval()
    before = model(x)[-1][0]
    with torch.no_grad():
        model.dense_head.class_head.weight.add_(3.0)
    torch.testing.assert_close(model(x)[-1][0], before)
    model.save_pretrained(tmp_path / "m")
    torch.testing.assert_close(detr.DETR.from_pretrained(tmp_path / "m").eval()(x)[-1], model(x)[-1])
    assert model.optimize_for_inference().model.dense_head is None


def _dense_outputs(model: detr.DETR, x: torch.Tensor, mask: torch.Tensor, targets):
    _, _, state = model._decode(x, mask, all_layers=None, targets=targets)
    return state.proposals


def test_dense_aux_loss_with_box_refinement():
    model = small(dense_aux_loss=True, box_refinement=True).train()
    terms = model.get_loss_dict(torch.randn(2, 3, 64, 64), random_targets(2, 4, counts=(1, 2)))
    assert torch.isfinite(terms["loss"]) and terms["loss_dense_giou"] > 0


def test_two_stage_anchors_are_the_best_dense_proposals(tmp_path):
    with pytest.raises(ValueError, match="set box_refinement=True and dense_aux_loss=True"):
        small(two_stage=True, dense_aux_loss=True)
    model = small(box_refinement=True, dense_aux_loss=True, two_stage=True, denoising_groups=2, backbone_layers=2)
    model.train()
    x = torch.randn(2, 3, 64, 96)  # stride 8: 8 x 12 tokens
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 64:] = True
    targets = random_targets(2, 4, counts=(2, 1))
    terms = model.get_loss_dict(x, targets, mask)
    terms["loss"].backward()
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())}
    assert "refinement.anchors.weight" in no_grad  # 64 valid tokens >= 5 queries: no learned anchor is used
    assert model.dense_head.class_head.weight.grad.abs().sum() > 0
    # before any training step the box head adds nothing: the first layer's boxes are the selected proposals
    model.eval()
    with torch.no_grad():
        logits, boxes, state = model._decode(x, mask, all_layers=True)
        scores, proposal_boxes, _, valid = state.proposals
        best = scores.max(-1).values.masked_fill(~valid, -float("inf")).topk(5, dim=1).indices  # (B, 5)
        expected = proposal_boxes.gather(1, best.unsqueeze(-1).expand(-1, -1, 4))
    torch.testing.assert_close(boxes[0], expected)  # layer 0 (the box head's last layer is still zero)
    assert (valid[1].view(8, 12)[:, 8:] == 0).all()  # padded tokens are never chosen...
    assert valid[1].gather(0, best[1]).all()  # ...the chosen ones are valid
    # the dense head stays in the inference copy (it chooses the anchors), which matches the model
    fast = model.optimize_for_inference()
    assert fast.model.dense_head is not None
    torch.testing.assert_close(fast(x, mask), model(x, mask)[-1], atol=1e-4, rtol=1e-4)
    model.save_pretrained(tmp_path / "m")
    torch.testing.assert_close(detr.DETR.from_pretrained(tmp_path / "m").eval()(x, mask)[-1], model(x, mask)[-1])


def test_two_stage_falls_back_on_learned_anchors_when_tokens_run_out():
    model = small(box_refinement=True, dense_aux_loss=True, two_stage=True).eval()  # stride 32
    x = torch.randn(1, 3, 64, 64)  # 2 x 2 tokens for 5 queries
    _, boxes = model.decode(x)
    learned = model.refinement.initial_anchors(5)
    torch.testing.assert_close(boxes[0, 0, 4:], learned[:1])  # the fifth query gets the first learned anchor
    assert not torch.allclose(boxes[0, 0, :4], learned[:4])  # the others are the 4 tokens' proposals


def test_distinct_anchors_demote_proposals_that_repeat_a_better_one(tmp_path):
    """Hand-made proposals: two near-copies of a large box (IoU 0.9) and two small boxes. Plain two-stage
    takes both copies; the distinct choice takes the large box once, then the small ones."""
    from detr.options.two_stage import demote_duplicates, select_anchors

    boxes = torch.tensor([[[0.5, 0.25, 1.0, 0.5], [0.5, 0.26, 1.0, 0.48], [0.2, 0.7, 0.1, 0.1], [0.7, 0.8, 0.2, 0.2]]])
    logits = torch.tensor([[[5.0, 0.0], [4.0, 0.0], [1.0, 0.0], [0.5, 0.0]]])  # best class score 5, 4, 1, 0.5
    valid = torch.ones(1, 4, dtype=torch.bool)
    proposals = (logits, boxes, boxes, valid)
    learned = torch.full((1, 3, 4), 0.5)
    plain = select_anchors(proposals, learned, 3, 1)
    torch.testing.assert_close(plain, boxes[:, :3])
    distinct = select_anchors(proposals, learned, 3, 1, distinct_iou=0.7)
    torch.testing.assert_close(distinct, boxes[:, [0, 2, 3]])
    # the demoted copy stays ahead of the learned anchors, padding stays last
    score = demote_duplicates(torch.tensor([[5.0, 4.0, -math.inf, 0.5]]), boxes, 0.7, candidates=4)
    assert score[0, 1] < score[0, 3] and score[0, 1] > -1e6 and score[0, 2] == -math.inf
    # with four queries the copy is taken last, before any learned anchor
    torch.testing.assert_close(select_anchors(proposals, torch.full((1, 4, 4), 0.5), 4, 1, 0.7), boxes[:, [0, 2, 3, 1]])


def test_distinct_anchors_train_save_and_load(tmp_path):
    with pytest.raises(ValueError, match="set two_stage=True with it"):
        small(two_stage_distinct_iou=0.7)
    with pytest.raises(ValueError, match="distinct_iou must be in"):
        small(box_refinement=True, dense_aux_loss=True, two_stage=True, two_stage_distinct_iou=1.5)
    model = small(
        box_refinement=True, dense_aux_loss=True, two_stage=True, two_stage_distinct_iou=0.3, backbone_layers=2
    )
    x = torch.randn(2, 3, 64, 64)
    model.get_loss(x, random_targets(2, 4, counts=(2, 1))).backward()
    model.eval()
    model.save_pretrained(tmp_path / "m")
    again = detr.DETR.from_pretrained(tmp_path / "m").eval()
    assert again.two_stage.distinct_iou == 0.3
    with torch.no_grad():
        torch.testing.assert_close(again(x)[-1], model(x)[-1])
        plain = small(box_refinement=True, dense_aux_loss=True, two_stage=True, backbone_layers=2).eval()
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(plain.decode(x)[1], model.decode(x)[1])  # the choice changed some anchors


def test_deformable_attention_reads_the_memory_at_its_box_and_ignores_padding():
    from detr.options.deformable import DeformableCrossAttention

    torch.manual_seed(0)
    attention = DeformableCrossAttention(d_model=8, nhead=2, points=1)
    with torch.no_grad():  # identity projections, no offsets: each head reads the point at the box's centre
        for linear in (attention.value_proj, attention.output_proj):
            linear.weight.copy_(torch.eye(8))
        attention.sampling_offsets.bias.zero_()
    memory = torch.randn(1, 4 * 6, 8)  # a 4 x 6 map
    # centres on token (row 2, column 3) and halfway between columns 0 and 1 of row 1
    anchors = torch.tensor([[[3.5 / 6, 2.5 / 4, 0.2, 0.2], [1.0 / 6, 1.5 / 4, 0.2, 0.2]]])
    # the query does not move the point; the key is not read
    out = attention(torch.randn(1, 2, 8), None, memory, anchors=anchors, feature_size=(4, 6))
    grid = memory.view(4, 6, 8)
    torch.testing.assert_close(out[0, 0], grid[2, 3])
    torch.testing.assert_close(out[0, 1], (grid[1, 0] + grid[1, 1]) / 2)

    # the same map padded to 5 x 8 (boxes relative to the valid 4 x 6 region) gives the same output
    attention.reset_parameters()
    with torch.no_grad():
        attention.sampling_offsets.weight.normal_(std=0.5)  # offsets and weights that depend on the query
        attention.attention_weights.weight.normal_()
    query = torch.randn(1, 2, 8)
    padded = torch.randn(1, 5, 8, 8)  # what lies on the padding must not count
    padded[0, :4, :6] = grid
    mask = torch.ones(1, 5, 8, dtype=torch.bool)
    mask[0, :4, :6] = False
    expected = attention(query, None, memory, anchors=anchors, feature_size=(4, 6))
    found = attention(query, None, padded.view(1, 40, 8), mask.flatten(1), anchors=anchors, feature_size=(5, 8))
    torch.testing.assert_close(found, expected)


def test_deformable_decoder_trains_saves_and_loads(tmp_path):
    with pytest.raises(ValueError, match="set box_refinement=True with it"):
        small(deformable_decoder=True)
    model = small(box_refinement=True, dense_aux_loss=True, two_stage=True, deformable_decoder=True, backbone_layers=2)
    x = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 64:] = True
    model.get_loss(x, random_targets(2, 4, counts=(2, 1)), mask).backward()
    cross = model.transformer.decoder.layers[1].multihead_attn
    assert cross.sampling_offsets.weight.grad.abs().sum() > 0 and cross.attention_weights.weight.grad.abs().sum() > 0
    model.eval()
    model.save_pretrained(tmp_path / "m")
    again = detr.DETR.from_pretrained(tmp_path / "m").eval()
    assert again.deformable.points == 4
    with torch.no_grad():
        torch.testing.assert_close(again(x, mask)[-1], model(x, mask)[-1])
        fast = model.optimize_for_inference()
        torch.testing.assert_close(fast(x, mask), model(x, mask)[-1], atol=1e-4, rtol=1e-4)


def test_deformable_decoder_is_a_part_of_the_paper_layers_that_samples_where_its_hook_says():
    """The decoder layers stay the paper's (their own forward); only their cross-attention is the option's, and
    where it reads comes from the option's hook. A bf16 inference copy, whose decoder layers run wrapped in
    float32, reads there too (before the hook, the wrapper hid the deformable layer: the copy failed)."""
    from detr.models.transformer import TransformerDecoderLayer
    from detr.options.deformable import DeformableCrossAttention

    model = small(box_refinement=True, deformable_decoder=True, backbone_layers=2).eval()
    for layer in model.transformer.decoder.layers:
        assert type(layer) is TransformerDecoderLayer and isinstance(layer.multihead_attn, DeformableCrossAttention)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = model(x)[-1][0]
        hook = model.deformable.cross_attention_inputs
        # the hook hands over the anchors to sample around: hand over others and the layers read elsewhere
        model.deformable.cross_attention_inputs = lambda m, state, anchors: hook(m, state, anchors.flip(1))
        moved = model(x)[-1][0]
        del model.deformable.cross_attention_inputs
        assert not torch.allclose(moved, logits, atol=1e-3)
        torch.testing.assert_close(model(x)[-1][0], logits)
        bf16 = model.optimize_for_inference(dtype=torch.bfloat16)
        assert (bf16(x)[0].softmax(-1) - logits.softmax(-1)).abs().max() < 0.05  # scores


def test_deformable_attention_records_the_weights_it_read_the_map_with():
    """The recorded (B, heads, N, hw) map, times the projected memory, is what the layer read: the same as
    its bilinear samples, on a padded map with points that move with the query."""
    from detr.options.deformable import DeformableCrossAttention

    torch.manual_seed(0)
    attention = DeformableCrossAttention(d_model=8, nhead=2, points=3)
    with torch.no_grad():
        attention.sampling_offsets.weight.normal_(std=0.5)
        attention.attention_weights.weight.normal_()
        attention.output_proj.weight.copy_(torch.eye(8))
        attention.output_proj.bias.zero_()
    memory, query = torch.randn(2, 5 * 7, 8), torch.randn(2, 4, 8)
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, :, 5:] = True
    anchors = torch.rand(2, 4, 4) * 0.6 + 0.2
    attention.record_weights = True
    out = attention(query, None, memory, mask.flatten(1), anchors=anchors, feature_size=(5, 7))  # (B, N, d)
    weights = attention.weights  # (B, heads, N, hw)
    assert weights.shape == (2, 2, 4, 35) and (weights.view(2, 2, 4, 5, 7)[1, ..., 5:] == 0).all()
    values = attention.value_proj(memory).masked_fill(mask.flatten(1)[..., None], 0).view(2, 35, 2, 4)  # heads of 4
    read = torch.einsum("bhnk,bkhc->bnhc", weights, values).reshape(2, 4, 8)
    torch.testing.assert_close(read, out)
    assert weights.sum(-1).max() <= 1 + 1e-5  # points off the map read nothing


def test_detr_explain_shows_where_a_deformable_decoder_reads():
    from detr.explain import attention_maps

    model = small(box_refinement=True, deformable_decoder=True, backbone_layers=2).eval()
    x = torch.randn(1, 3, 64, 96)
    maps = attention_maps(model, x)["decoder"]
    assert maps.shape == (2, 1, 4, 5, 8, 12)  # (L, B, heads, Q, h, w)
    # untrained, each head reads points on one axis through its anchor's centre, the four heads on both
    # sides: their mean weights' centre of mass is the centre of the anchor (the first layer's: learned)
    anchors = model.refinement.initial_anchors(5)  # (Q, 4)
    heat = maps[0, 0].mean(0)  # (Q, h, w)
    rows, columns = torch.meshgrid(torch.arange(8) + 0.5, torch.arange(12) + 0.5, indexing="ij")
    centre_x = (heat * columns).sum((-1, -2)) / heat.sum((-1, -2)) / 12
    centre_y = (heat * rows).sum((-1, -2)) / heat.sum((-1, -2)) / 8
    inside = ((anchors[:, :2] - anchors[:, 2:] / 2 > 0) & (anchors[:, :2] + anchors[:, 2:] / 2 < 1)).all(-1)
    assert inside.any()
    # (to a tenth of a cell: a point within half a cell of the map's edge loses weight to the outside)
    torch.testing.assert_close(centre_x[inside], anchors[inside, 0], atol=0.1 / 12, rtol=0)
    torch.testing.assert_close(centre_y[inside], anchors[inside, 1], atol=0.1 / 8, rtol=0)
