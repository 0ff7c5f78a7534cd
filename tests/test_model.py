"""The API document's shape contract, over every registered model; gradients; freezing; empty targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import detr
from detr import DETR, DETRConfig, ResNetBackbone, Transformer

from .conftest import random_targets


def small_detr(num_classes: int = 5, num_queries: int = 7, aux_loss: bool = True, **kwargs) -> DETR:
    """A tiny DETR (ResNet-18, 2 + 2 layers, d_model 32) for fast tests."""
    backbone = ResNetBackbone("resnet18", **kwargs)
    transformer = Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64)
    return DETR(DETRConfig(backbone, transformer, num_classes, num_queries=num_queries, aux_loss=aux_loss))


def test_registry_lists_the_factories():
    assert detr.list_models() == [
        "detr_r101", "detr_r101_dc5", "detr_r101_panoptic", "detr_r18", "detr_r34", "detr_r50", "detr_r50_dc5",
        "detr_r50_dc5_panoptic", "detr_r50_panoptic",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown model 'detr_r152'.*detr_r50"):
        detr.create_model("detr_r152")


DETECTION_MODELS = [n for n in detr.list_models() if not n.endswith("_panoptic")]  # the mask models: test_segmentation


@pytest.mark.parametrize("name", DETECTION_MODELS)
def test_every_registered_model_forward_and_gradients(name):
    torch.manual_seed(0)
    model = detr.create_model(name, num_classes=4, num_queries=10, aux_loss=True)
    model.train()
    assert model.backbone.stride == (16 if name.endswith("dc5") else 32)
    # At initialisation the first decoder layer's self-attention is degenerate (queries start
    # at zero and attention biases are zero, so its values, and some gradients, are exactly
    # zero, in the reference code too); give the biases the small values training gives them.
    with torch.no_grad():
        for pname, param in model.transformer.named_parameters():
            if pname.endswith("bias"):
                param.normal_(0, 0.02)
    x = torch.randn(1, 3, 96, 80)
    outputs = model(x)
    assert isinstance(outputs, list) and len(outputs) == 6
    for logits, boxes in outputs:
        assert logits.shape == (1, 10, 5) and boxes.shape == (1, 10, 4)
        assert torch.isfinite(logits).all() and ((boxes >= 0) & (boxes <= 1)).all()

    loss = model.get_loss(x, random_targets(1, 4, counts=(3,)))
    loss.backward()
    frozen_prefixes = ("backbone.body.conv1.", "backbone.body.layer1.")
    for pname, param in model.named_parameters():
        if pname.startswith(frozen_prefixes):
            assert not param.requires_grad, pname
        else:
            assert param.requires_grad, pname
            assert param.grad is not None and bool(param.grad.abs().sum() > 0), f"no gradient reaches {pname}"
    # batch norm is frozen: statistics are buffers, never parameters
    assert not any("bn" in n or "downsample.1" in n for n, _ in model.named_parameters())


def test_api_document_example_shapes():
    model = detr.detr_r50(pretrained_backbone=False, num_classes=91, num_queries=100, aux_loss=False).eval()
    with torch.no_grad():
        logits, boxes = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 100, 92) and boxes.shape == (1, 100, 4)
    probs = logits.softmax(-1)[..., :-1]
    assert probs.max(-1).values.shape == (1, 100)


def test_config_defaults_are_the_api_documents():
    cfg = DETRConfig(ResNetBackbone("resnet18"), Transformer(d_model=32, nhead=4), num_classes=3)
    assert (cfg.num_queries, cfg.aux_loss, cfg.matcher) == (100, True, None)
    assert (cfg.class_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef, cfg.eos_coef) == (1.0, 5.0, 2.0, 0.1)
    model = DETR(cfg)
    assert model.criterion.empty_weight[-1] == pytest.approx(0.1)
    assert isinstance(model.criterion.matcher, detr.HungarianMatcher)
    assert (
        model.criterion.matcher.cost_class,
        model.criterion.matcher.cost_bbox,
        model.criterion.matcher.cost_giou,
    ) == (
        1.0,
        5.0,
        2.0,
    )


def test_reference_architecture_numbers():
    model = detr.detr_r50()
    t = model.transformer
    assert (t.d_model, t.nhead, len(t.encoder.layers), len(t.decoder.layers)) == (256, 8, 6, 6)
    assert t.encoder.norm is None and t.decoder.norm is not None  # post-norm: no final encoder norm
    layer = t.encoder.layers[0]
    assert layer.linear1.out_features == 2048 and layer.dropout.p == 0.1 and layer.self_attn.dropout == 0.1
    assert isinstance(model.position_encoding, detr.PositionEmbeddingSine)
    assert model.position_encoding.num_pos_feats == 128 and model.position_encoding.temperature == 10000
    assert len(model.box_head.layers) == 3 and model.input_proj.kernel_size == (1, 1)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(41.5e6, rel=0.01)  # paper: 41M


def test_pre_norm_has_final_encoder_norm_and_runs():
    t = Transformer(
        d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64, normalize_before=True
    )
    assert t.encoder.norm is not None
    hs, memory = t(
        torch.randn(2, 32, 3, 4), torch.zeros(2, 3, 4, dtype=torch.bool), torch.randn(5, 32), torch.randn(2, 32, 3, 4)
    )
    assert hs.shape == (2, 2, 5, 32) and memory.shape == (2, 32, 3, 4)


@pytest.mark.parametrize("size", [(64, 64), (70, 45), (33, 129)])
def test_any_image_size_works(size):
    model = small_detr(aux_loss=False).eval()
    with torch.no_grad():
        logits, boxes = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 7, 6) and boxes.shape == (2, 7, 4)
    assert torch.isfinite(logits).all()


def test_transformer_ignores_masked_positions():
    torch.manual_seed(0)
    t = Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64).eval()
    src, pos, query = torch.randn(2, 32, 4, 6), torch.randn(2, 32, 4, 6), torch.randn(5, 32)
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    mask[0, :, 4:] = True
    mask[1, 3:, :] = True
    src2 = src.clone()
    src2[mask[:, None].expand_as(src)] = 50.0  # garbage where the mask says padding
    with torch.no_grad():
        hs, _ = t(src, mask, query, pos)
        hs2, _ = t(src2, mask, query, pos)
        hs_unmasked, _ = t(src2, torch.zeros_like(mask), query, pos)
    torch.testing.assert_close(hs, hs2, atol=1e-5, rtol=0)
    assert not torch.allclose(hs, hs_unmasked, atol=1e-3)


def test_mask_changes_the_result():
    torch.manual_seed(0)
    model = small_detr(aux_loss=False).eval()
    x = torch.randn(1, 3, 128, 128)
    mask = torch.zeros(1, 128, 128, dtype=torch.bool)
    mask[:, :, 64:] = True
    with torch.no_grad():
        assert not torch.allclose(model(x)[0], model(x, mask)[0], atol=1e-3)


def test_aux_loss_false_returns_a_tuple_and_loss_uses_last_layer_only():
    model = small_detr(aux_loss=False)
    out = model(torch.randn(1, 3, 64, 64))
    assert isinstance(out, tuple) and len(out) == 2
    terms = model.get_loss_dict(torch.randn(1, 3, 64, 64), random_targets(1, 5))
    assert not any(k.endswith("_0") for k in terms)
    expected = terms["loss_ce"] + 5 * terms["loss_bbox"] + 2 * terms["loss_giou"]
    torch.testing.assert_close(terms["loss"], expected)


def test_aux_loss_terms_and_total():
    model = small_detr(aux_loss=True)
    terms = model.get_loss_dict(torch.randn(2, 3, 64, 64), random_targets(2, 5, counts=(2, 3)))
    assert {"loss_ce_0", "loss_bbox_0", "loss_giou_0", "cardinality_error_0", "class_error"} <= set(terms)
    expected = sum(terms[f"loss_ce{s}"] + 5 * terms[f"loss_bbox{s}"] + 2 * terms[f"loss_giou{s}"] for s in ("_0", ""))
    torch.testing.assert_close(terms["loss"], expected)
    assert 0 <= terms["class_error"] <= 100


def test_empty_targets():
    torch.manual_seed(0)
    model = small_detr(aux_loss=True)
    empty = {"class_id": torch.zeros(0, dtype=torch.int64), "box": torch.zeros(0, 4)}
    x = torch.randn(2, 3, 64, 64)
    terms = model.get_loss_dict(x, [empty, empty])
    assert terms["loss_bbox"] == 0 and terms["loss_giou"] == 0 and terms["loss_ce"] > 0
    assert terms["class_error"] == 100  # nothing matched, as the reference reports it
    terms["loss"].backward()
    assert model.class_head.weight.grad.abs().sum() > 0
    # mixed: one image with boxes, one without
    loss = model.get_loss(x, [empty, random_targets(1, 5, counts=(2,))[0]])
    assert torch.isfinite(loss)


def test_custom_matcher_is_used():
    calls = []

    class FirstQueries(torch.nn.Module):
        def forward(self, outputs, targets):
            calls.append(len(targets))
            return [(torch.arange(len(t["class_id"])), torch.arange(len(t["class_id"]))) for t in targets]

    backbone = ResNetBackbone("resnet18")
    transformer = Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64)
    model = DETR(DETRConfig(backbone, transformer, 3, num_queries=5, matcher=FirstQueries()))
    model.get_loss(torch.randn(1, 3, 64, 64), random_targets(1, 3, counts=(2,)))
    assert calls == [1, 1]  # once per decoder layer


def test_train_backbone_false_freezes_the_whole_backbone():
    model = detr.detr_r50(train_backbone=False)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.transformer.parameters())


def test_learned_position_embedding_has_parameters_and_rejects_big_maps():
    model = detr.detr_r50(num_classes=3, position_embedding="learned").eval()
    assert "position_encoding.row_embed.weight" in model.state_dict()
    with pytest.raises(ValueError, match="at most 50x50"):
        model(torch.randn(1, 3, 64, 51 * 32))


def test_frozen_batch_norm_inside_the_convolution_is_conv_then_batch_norm():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from detr.models.backbone import ConvFrozenBN2d, FoldedFrozenBatchNorm2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False).double()
    bn = FrozenBatchNorm2d(16).double()
    bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    folded_bn = FoldedFrozenBatchNorm2d(16).double()
    folded_bn.load_state_dict(bn.state_dict())
    fused = ConvFrozenBN2d(conv, folded_bn)
    x = torch.randn(2, 8, 15, 15, dtype=torch.double, requires_grad=True)
    expected = bn(conv(x))
    got = folded_bn(fused(x))  # the batch norm module itself passes through
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, conv.weight), grad)
    got_grads = torch.autograd.grad(got, (x, fused.weight), grad)
    for e, g in zip(expected_grads, got_grads):
        torch.testing.assert_close(g, e)
    torch.testing.assert_close(fused.folded()(x), expected)


def test_resnet_backbone_keeps_the_reference_parameter_names():
    import torchvision

    backbone = ResNetBackbone("resnet50")
    reference = torchvision.models.resnet50(norm_layer=torchvision.ops.misc.FrozenBatchNorm2d).state_dict()
    ours = {k.removeprefix("body."): v for k, v in backbone.state_dict().items()}
    assert set(ours) == {k for k in reference if not k.startswith("fc.")}
    assert backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_attention_dropout_drops_and_rescales():
    from detr.models.transformer import _explicit_attention

    torch.manual_seed(0)
    q, k = torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 2000, 8)  # uniform attention: every weight 1/2000
    v = torch.ones(1, 1, 2000, 8)
    out = _explicit_attention(q, k, v, None, 0.3)
    # each output is the sum of the kept weights / 0.7: mean 1, and about 30% of the 2000 terms dropped
    kept = out[0, 0, :, 0] * 0.7 * 2000
    assert ((kept > 1300) & (kept < 1500)).all(), kept
    torch.testing.assert_close(out.mean(), torch.tensor(1.0), atol=0.05, rtol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_bf16_attention_on_cpu_is_as_accurate_as_the_fused_kernel(masked):
    """Under bf16 autocast on a CPU the attention runs as separate matmuls and a float32 softmax (faster there
    than the fused kernel). Against torch's fused scaled_dot_product_attention in float32, its output and
    gradients are off by no more than that kernel's own bf16 run is (with a key padding mask and a query-group
    mask, the decoder's)."""
    from detr.models.transformer import MultiheadAttention

    torch.manual_seed(0)
    attention = MultiheadAttention(64, 8)
    x = torch.randn(2, 30, 64)
    padding = torch.zeros(2, 30, dtype=torch.bool)
    groups = None
    if masked:
        padding[1, 24:] = True  # the second image's last 6 tokens are padding
        groups = torch.ones(30, 30, dtype=torch.bool)
        groups[:10, 10:] = False  # queries 0-9 see only each other

    def fused(inputs):  # the same projections, then torch's kernel
        c, w, b = 64, attention.in_proj_weight, attention.in_proj_bias
        q, k, v = (F.linear(inputs, w[i * c : (i + 1) * c], b[i * c : (i + 1) * c]) for i in range(3))
        q, k, v = (t.view(2, 30, 8, 8).transpose(1, 2) for t in (q, k, v))  # (B, h, L, d)
        mask = ~padding[:, None, None, :] if groups is None else ~padding[:, None, None, :] & groups
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, L, d)
        return attention.out_proj(out.transpose(1, 2).reshape(2, 30, 64))

    def ours(inputs):
        return attention(inputs, inputs, inputs, key_padding_mask=padding, attn_mask=groups)

    def run(forward, bf16):
        attention.zero_grad()
        inputs = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(inputs)
        assert out.dtype == (torch.bfloat16 if bf16 else torch.float32)
        out.float().sin().sum().backward()
        return out.float(), inputs.grad, attention.in_proj_weight.grad.clone()

    reference = run(fused, bf16=False)
    for got, theirs, exact in zip(run(ours, bf16=True), run(fused, bf16=True), reference):
        ours_error, fused_error = (got - exact).abs().max(), (theirs - exact).abs().max()
        assert 0 < ours_error <= 1.5 * fused_error, (ours_error, fused_error)  # 0: it did run in bf16


def test_iou_class_targets_put_each_matched_querys_iou_on_its_class():
    from detr.losses.criterion import SetCriterion

    class InOrder(torch.nn.Module):  # query i <-> target i
        def forward(self, outputs, targets):
            return [(torch.arange(len(t["class_id"])), torch.arange(len(t["class_id"]))) for t in targets]

    eos = 0.1
    target = {"class_id": torch.tensor([0, 2]), "box": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2]])}
    # query 0 on target 0 exactly (IoU 1); query 1 shifted by half a width from target 1 (IoU 1/3); query 2 unmatched
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]]])
    logits = torch.randn(1, 3, 4)  # 3 classes + "no object"
    criterion = SetCriterion(3, InOrder(), eos_coef=eos, iou_class_targets=True)
    loss_ce = criterion.layer_losses(logits, boxes, [target], num_boxes=2.0)[0]["loss_ce"]
    logp = logits[0].log_softmax(-1)
    expected = -(logp[0, 0] + logp[1, 2] / 3 + eos * (2 / 3) * logp[1, 3] + eos * logp[2, 3]) / (1 + 1 + eos)
    torch.testing.assert_close(loss_ce, expected)
    hard = SetCriterion(3, InOrder(), eos_coef=eos).layer_losses(logits, boxes, [target], num_boxes=2.0)[0]
    assert not torch.allclose(hard["loss_ce"], loss_ce)  # the soft target is not the one-hot one

    config = dict(num_classes=3, num_queries=4, iou_class_targets="yes")
    with pytest.raises(TypeError, match="iou_class_targets must be a bool"):
        DETRConfig(ResNetBackbone("resnet18"), Transformer(d_model=32, nhead=4, dim_feedforward=64), **config)


def test_iou_class_targets_survive_save_and_load(tmp_path):
    model = detr.detr_r18(num_classes=3, num_queries=5, d_model=32, nhead=4, dim_feedforward=64, iou_class_targets=True)
    model.save_pretrained(tmp_path / "m")
    assert DETR.from_pretrained(tmp_path / "m").criterion.iou_class_targets
    # a model built from parts is saved by its config fields, not by a factory's arguments
    transformer = Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64)
    parts = DETR(DETRConfig(ResNetBackbone("resnet18"), transformer, 3, num_queries=4, iou_class_targets=True))
    parts.save_pretrained(tmp_path / "parts")
    assert DETR.from_pretrained(tmp_path / "parts").criterion.iou_class_targets


def test_broadcast_box_iou_equals_torchvision_box_iou():
    from torchvision.ops import box_iou

    from detr.models.layers import broadcast_box_iou

    torch.manual_seed(0)
    corners = torch.rand(2, 6, 2, 2).sort(dim=2).values  # (B, k, 2 corners, xy): x0 < x1, y0 < y1
    xyxy = corners.transpose(2, 3).reshape(2, 6, 4)[..., [0, 2, 1, 3]]  # (B, k, 4) x0, y0, x1, y1
    every_pair = broadcast_box_iou(xyxy[:, :, None], xyxy[:, None])  # (B, k, k)
    for b in range(2):
        torch.testing.assert_close(every_pair[b], box_iou(xyxy[b], xyxy[b]))
    torch.testing.assert_close(broadcast_box_iou(xyxy[0], xyxy[1]), box_iou(xyxy[0], xyxy[1]).diag())
