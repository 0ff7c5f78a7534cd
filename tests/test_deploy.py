"""Deployment: the optimized inference path and ONNX export with dynamic shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import detr
from detr.cli import main as cli_main
from detr.deploy.export import check_onnx, export_onnx
from detr.deploy.inference import fold_batch_norms

from .conftest import padded_pair

TINY = dict(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64)


def _batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in module.modules())


@pytest.mark.parametrize("mask", [True, False], ids=["padded", "unpadded"])
def test_inference_path_matches_the_model_fp32(our_model, mask):
    x, pad = padded_pair(seed=3)
    fast = our_model.optimize_for_inference()
    assert _batch_norms(fast.model.backbone) == 0 and _batch_norms(our_model.backbone) == 53  # folded, on a copy
    with torch.no_grad():
        ref_logits, ref_boxes = our_model(x, pad if mask else None)
    logits, boxes = fast(x, pad if mask else None)
    assert logits.dtype == boxes.dtype == torch.float32
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, ref_boxes, atol=1e-4, rtol=0)


def test_all_false_mask_is_the_same_as_no_mask(our_model):
    x = padded_pair(seed=4)[0][:1]
    fast = our_model.optimize_for_inference()
    no_pad = torch.zeros(1, *x.shape[2:], dtype=torch.bool)
    torch.testing.assert_close(fast(x, no_pad), fast(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", [n for n in detr.list_models() if not n.endswith("_panoptic")])
def test_every_registered_detection_model_folds_and_matches(name):
    torch.manual_seed(0)
    model = detr.create_model(name, num_classes=3, num_queries=5, aux_loss=False, backbone_norm="bn", **TINY)
    model.train()
    model(torch.randn(2, 3, 64, 64))  # give the batch norms running statistics other than the defaults
    model.eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        ref_logits, ref_boxes = model(x)
    fast = model.optimize_for_inference()
    assert _batch_norms(fast.model) == 0
    logits, boxes = fast(x)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(boxes, ref_boxes, atol=1e-4, rtol=0)


def test_bf16_mode_stays_close_to_fp32(our_model):
    x, pad = padded_pair(seed=5)
    fp32 = our_model.optimize_for_inference()
    bf16 = our_model.optimize_for_inference(torch.bfloat16)
    logits, boxes = fp32(x, pad)
    logits16, boxes16 = bf16(x, pad)
    assert logits16.dtype == torch.float32
    assert (logits16.softmax(-1) - logits.softmax(-1)).abs().max() < 1e-2  # scores
    assert (boxes16 - boxes).abs().mean() < 1e-2
    assert not torch.equal(logits16, logits)  # it did run in bf16


def test_bf16_mode_keeps_decoder_and_heads_in_float32():
    """bf16 where the FLOPs are (backbone, encoder), float32 next to the outputs; on weights whose
    fp32 outputs are not chaotic (residual branches scaled as trained ResNets have them) the
    logits stay within 1e-2 of fp32."""
    from tests.conftest import make_hf_detr, scale_residual_branches

    model = scale_residual_branches(detr.detr_r50(num_classes=91, weights=make_hf_detr().state_dict()).eval(), 0.5)
    bf16 = model.optimize_for_inference(torch.bfloat16)
    seen: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            seen[name] = output.dtype

        return hook

    for name in ("model.backbone", "model.transformer.encoder", "model.transformer.decoder", "model.class_head"):
        bf16.get_submodule(name).register_forward_hook(record(name))
    x, pad = padded_pair(seed=6)
    logits, boxes = model.optimize_for_inference()(x, pad)
    logits16, boxes16 = bf16(x, pad)
    assert seen == {
        "model.backbone": torch.bfloat16,
        "model.transformer.encoder": torch.bfloat16,
        "model.transformer.decoder": torch.float32,
        "model.class_head": torch.float32,
    }
    assert (logits16 - logits).abs().max() < 1e-2
    assert (boxes16 - boxes).abs().max() < 1e-2


@pytest.mark.slow
def test_compiled_inference_path_matches():
    torch.manual_seed(0)
    model = detr.detr_r18(num_classes=3, num_queries=5, **TINY).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ref_logits, ref_boxes = model(x)
    logits, boxes = model.optimize_for_inference(compile=True)(x)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(boxes, ref_boxes, atol=1e-4, rtol=0)


def test_inference_path_rejects_bad_input_and_dtype(our_model):
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.bfloat16"):
        our_model.optimize_for_inference(torch.float16)
    fast = our_model.optimize_for_inference()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        fast(torch.randn(3, 64, 64))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        fast(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64))


def test_folding_refuses_batch_norm_in_training_mode():
    model = detr.detr_r18(num_classes=2, backbone_norm="bn", **TINY).train()
    with pytest.raises(ValueError, match="call model.eval"):
        fold_batch_norms(model.backbone)


@pytest.mark.parametrize(
    "options",
    [
        {},
        dict(box_refinement=True, dense_aux_loss=True, two_stage=True),
        # neighbouring tokens' initial proposals overlap by IoU 1/3: at 0.3 the distinct choice demotes some
        dict(box_refinement=True, dense_aux_loss=True, two_stage=True, two_stage_distinct_iou=0.3),
        dict(box_refinement=True, dense_aux_loss=True, two_stage=True, deformable_decoder=True),
    ],
    ids=["reference", "two_stage", "two_stage_distinct", "deformable"],
)
def test_onnx_export_has_dynamic_batch_height_width_and_mask(tmp_path, options):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = detr.detr_r18(num_classes=4, num_queries=7, backbone_norm="bn", **TINY, **options).eval()
    if options.get("deformable_decoder"):  # sampling points that move with the query, not only the start
        with torch.no_grad():
            for layer in model.transformer.decoder.layers:
                layer.multihead_attn.sampling_offsets.weight.normal_(std=0.2)
                layer.multihead_attn.attention_weights.weight.normal_()
    model.save_pretrained(tmp_path / "model")
    assert cli_main(["export", "--weights", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx"),
                     "--height", "128", "--width", "160"]) == 0  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    for batch, height, width in ((1, 96, 224), (3, 192, 128)):  # neither the exported size nor batch
        x = torch.randn(batch, 3, height, width, generator=gen)
        mask = torch.zeros(batch, height, width, dtype=torch.bool)
        mask[-1, height // 2 :, :] = batch > 1  # the last image of a batch is padded
        logits_diff, boxes_diff = check_onnx(tmp_path / "m.onnx", model, x, mask)
        assert logits_diff < 1e-4 and boxes_diff < 1e-4, (batch, height, width, logits_diff, boxes_diff)


def test_onnx_export_refuses_impossible_sizes(tmp_path):
    model = detr.detr_r18(num_classes=2, **TINY)
    with pytest.raises(ValueError, match="height must be in"):
        export_onnx(model, tmp_path / "m.onnx", height=8)
