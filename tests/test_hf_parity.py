"""Outputs, losses and matching agree with Hugging Face transformers' DETR on the same weights."""

from __future__ import annotations

import pytest
import torch

import detr

from .conftest import make_hf_detr, padded_pair, random_targets

transformers = pytest.importorskip("transformers")
from transformers.loss.loss_for_object_detection import (
    ForObjectDetectionLoss,
)
from transformers.loss.loss_for_object_detection import (
    HungarianMatcher as HFHungarianMatcher,
)


def hf_labels(targets):
    return [{"class_labels": t["class_id"], "boxes": t["box"]} for t in targets]


def test_outputs_match_on_padded_batch_of_two_sizes(hf_model, our_model):
    x, mask = padded_pair()
    with torch.no_grad():
        ours_logits, ours_boxes = our_model(x, mask)
        theirs = hf_model(pixel_values=x, pixel_mask=(~mask).long())
    assert ours_logits.shape == theirs.logits.shape == (2, 100, 92)
    # the random model must give varied outputs, or agreement would prove little
    assert theirs.logits.std() > 0.1 and theirs.pred_boxes.std() > 0.01
    torch.testing.assert_close(ours_logits, theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_boxes, theirs.pred_boxes, atol=1e-4, rtol=0)


def test_outputs_match_without_mask_at_odd_size(hf_model, our_model):
    x = torch.randn(1, 3, 203, 317, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours_logits, ours_boxes = our_model(x)
        theirs = hf_model(pixel_values=x)
    torch.testing.assert_close(ours_logits, theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_boxes, theirs.pred_boxes, atol=1e-4, rtol=0)


def test_every_loss_term_matches(hf_model, our_model):
    x, mask = padded_pair(seed=1)
    targets = random_targets(2, 91, counts=(4, 2), seed=1)
    with torch.no_grad():
        ours = our_model.get_loss_dict(x, targets, mask)
        theirs = hf_model(pixel_values=x, pixel_mask=(~mask).long(), labels=hf_labels(targets))
    assert set(theirs.loss_dict) == {"loss_ce", "loss_bbox", "loss_giou", "cardinality_error"}
    for name, value in theirs.loss_dict.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(ours["loss"], theirs.loss, rtol=1e-5, atol=1e-7)


def test_aux_loss_terms_match_transformers_criterion(our_model):
    """Per-layer terms with aux_loss, against transformers' loss function on the same per-layer outputs.

    (transformers' own forward with auxiliary_loss=True feeds the normed state to the next
    decoder layer, unlike the reference code, so its aux outputs are not compared.)
    """
    x, mask = padded_pair(seed=2)
    targets = random_targets(2, 91, counts=(3, 5), seed=2)
    with torch.no_grad():
        our_model.aux_loss = True
        try:
            ours = our_model.get_loss_dict(x, targets, mask)
            logits, boxes = our_model.decode(x, mask)  # (6, B, Q, 92), (6, B, Q, 4)
        finally:
            our_model.aux_loss = False
        hf_config = transformers.DetrConfig(
            backbone_config=transformers.ResNetConfig(out_features=["stage4"]), num_labels=91, auxiliary_loss=True
        )
        loss, loss_dict, _ = ForObjectDetectionLoss(
            logits[-1], hf_labels(targets), "cpu", boxes[-1], hf_config, logits, boxes
        )
    assert len(loss_dict) == 6 * 4
    for name, value in loss_dict.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(ours["loss"], loss, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_matcher_assignments_identical(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 50, 8, generator=gen) * 3
    boxes = torch.rand(3, 50, 4, generator=gen) * 0.5 + 0.1
    targets = random_targets(3, 7, counts=(5, 0, 12), seed=seed)
    ours = detr.HungarianMatcher()((logits, boxes), targets)
    theirs = HFHungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)(
        {"logits": logits, "pred_boxes": boxes}, hf_labels(targets)
    )
    for (oi, oj), (ti, tj) in zip(ours, theirs):
        assert torch.equal(oi, ti) and torch.equal(oj, tj)


# transformers' DETR names -> the names facebookresearch/detr's modules give (models/detr.py: backbone
# = Joiner(Backbone(body = torchvision ResNet's IntermediateLayerGetter), position encoding), input_proj,
# query_embed, class_embed, bbox_embed = MLP(layers); models/transformer.py: self_attn / multihead_attn
# (nn.MultiheadAttention, packed in_proj), linear1, linear2, norm1..norm3, decoder.norm)
HF_TO_REFERENCE = [
    (r"^model\.backbone\.model\.embedder\.embedder\.convolution\.", "backbone.0.body.conv1."),
    (r"^model\.backbone\.model\.embedder\.embedder\.normalization\.", "backbone.0.body.bn1."),
    (
        r"^model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.",
        "STAGE{1}.{2}.downsample.0.",
    ),
    (
        r"^model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.",
        "STAGE{1}.{2}.downsample.1.",
    ),
    (
        r"^model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
        "STAGE{1}.{2}.convK{3}.",
    ),
    (
        r"^model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
        "STAGE{1}.{2}.bnK{3}.",
    ),
    (r"^model\.input_projection\.", "input_proj."),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (
        r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.o_proj\.",
        "transformer.{1}.layers.{2}.self_attn.out_proj.",
    ),
    (
        r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.o_proj\.",
        "transformer.decoder.layers.{1}.multihead_attn.out_proj.",
    ),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn_layer_norm\.", "transformer.{1}.layers.{2}.norm1."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", "transformer.decoder.layers.{1}.norm2."),
    (r"^model\.encoder\.layers\.(\d+)\.final_layer_norm\.", "transformer.encoder.layers.{1}.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.", "transformer.decoder.layers.{1}.norm3."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.mlp\.fc(\d)\.", "transformer.{1}.layers.{2}.linear{3}."),
    (r"^model\.decoder\.layernorm\.", "transformer.decoder.norm."),
    (r"^class_labels_classifier\.", "class_embed."),
    (r"^bbox_predictor\.", "bbox_embed."),
]


def hf_to_reference_checkpoint(hf_state):
    """A state dict as facebookresearch/detr writes it, from a transformers DetrForObjectDetection's."""
    import re

    out, packed = {}, {}
    for key, value in hf_state.items():
        attn = re.match(
            r"^model\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.([qkv])_proj\.(\w+)$", key
        )
        if attn:  # nn.MultiheadAttention packs q, k, v in one in_proj
            part, layer, kind, which, param = attn.groups()
            name = "self_attn" if kind == "self_attn" else "multihead_attn"
            packed.setdefault(f"transformer.{part}.layers.{layer}.{name}.in_proj_{param}", {})[which] = value
            continue
        for pattern, replacement in HF_TO_REFERENCE:
            match = re.match(pattern, key)
            if match:
                new = replacement.format(*[None, *match.groups()])
                new = re.sub(r"^STAGE(\d)", lambda m: f"backbone.0.body.layer{int(m.group(1)) + 1}", new)
                new = re.sub(r"(conv|bn)K(\d)", lambda m: f"{m.group(1)}{int(m.group(2)) + 1}", new)
                out[new + key[match.end() :]] = value
                break
        else:
            raise AssertionError(f"no reference name for {key}")
    for name, parts in packed.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def test_reference_checkpoint_file_loads_and_matches(hf_model, tmp_path):
    state = hf_to_reference_checkpoint(hf_model.state_dict())
    assert len(state) == len(detr.detr_r50().state_dict())  # every parameter and buffer of the reference layout
    # names as published in detr-r50-e632da11.pth
    for key in (
        "backbone.0.body.conv1.weight",
        "backbone.0.body.layer1.0.downsample.1.running_var",
        "transformer.encoder.layers.5.self_attn.in_proj_weight",
        "transformer.decoder.layers.0.multihead_attn.out_proj.bias",
        "transformer.decoder.norm.weight",
        "class_embed.weight",
        "bbox_embed.layers.2.bias",
        "query_embed.weight",
        "input_proj.weight",
    ):
        assert key in state
    path = tmp_path / "detr-r50-reference.pth"
    torch.save({"model": state, "args": {"lr": 1e-4}}, path)
    model = detr.detr_r50(aux_loss=False, weights=path).eval()
    x, mask = padded_pair(seed=4)
    with torch.no_grad():
        logits, boxes = model(x, mask)
        theirs = hf_model(pixel_values=x, pixel_mask=(~mask).long())
    torch.testing.assert_close(logits, theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, theirs.pred_boxes, atol=1e-4, rtol=0)


def test_learned_position_embedding_matches():
    hf = make_hf_detr(num_labels=5, seed=1)
    hf.config.position_embedding_type = "learned"
    hf_learned = transformers.DetrForObjectDetection(hf.config).eval()
    hf_learned.load_state_dict(hf.state_dict(), strict=False)
    torch.nn.init.normal_(hf_learned.model.position_embedding.row_embeddings.weight)
    torch.nn.init.normal_(hf_learned.model.position_embedding.column_embeddings.weight)
    ours = detr.detr_r50(
        num_classes=5, aux_loss=False, position_embedding="learned", weights=hf_learned.state_dict()
    ).eval()
    x = torch.randn(2, 3, 224, 160, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits, boxes = ours(x)
        theirs = hf_learned(pixel_values=x)
    torch.testing.assert_close(logits, theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, theirs.pred_boxes, atol=1e-4, rtol=0)


def test_attention_maps_match_transformers(tmp_path):
    """Decoder cross-attention and encoder self-attention equal transformers' (eager attention,
    output_attentions=True) on the same weights and a padded batch; each map sums to 1 over the image."""
    from detr.explain import attention_maps

    hf = make_hf_detr(seed=3)
    hf.config._attn_implementation = "eager"
    # random weights at full scale saturate the first encoder layer's softmax (scores in the hundreds, where
    # float32 rounding of the scores shows at 1e-3 in a weight); trained attention is not saturated
    with torch.no_grad():
        for layer in hf.model.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(0.1)
    ours = detr.detr_r50(aux_loss=False, weights=hf.state_dict()).eval()
    x, mask = padded_pair(seed=6, sizes=((256, 320), (192, 224)))
    maps = attention_maps(ours, x, mask)
    with torch.no_grad():
        theirs = hf(pixel_values=x, pixel_mask=(~mask).long(), output_attentions=True)
    L, B, heads, Q, h, w = maps["decoder"].shape
    assert (L, B, heads, Q) == (6, 2, 8, 100) and maps["encoder"].shape == (6, 2, 8, h * w, h * w)
    for layer in range(6):
        torch.testing.assert_close(
            maps["decoder"][layer].flatten(-2), theirs.cross_attentions[layer], atol=1e-4, rtol=0
        )
        torch.testing.assert_close(maps["encoder"][layer], theirs.encoder_attentions[layer], atol=1e-4, rtol=0)
    valid = ~maps["feature_mask"].flatten(1)  # (B, h*w)
    assert valid[1].sum() < h * w  # the second image is padded
    torch.testing.assert_close(maps["decoder"].flatten(-2).sum(-1), torch.ones(L, B, heads, Q))
    assert (maps["decoder"].flatten(-2)[:, 1, :, :, ~valid[1]] == 0).all()  # padded cells get no weight
    torch.testing.assert_close(maps["logits"], theirs.logits, atol=1e-4, rtol=0)  # the same pass
