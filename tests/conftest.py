"""Shared fixtures: a Hugging Face DETR with random but well-conditioned weights, and ours with the same weights."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import detr
from detr.processing.preprocess import pad_batch

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"
# a user's clone has no ../shared beside it: tests that read the real sample data skip there, saying why
needs_coco128 = pytest.mark.skipif(not COCO128.is_dir(), reason="needs ../shared/datasets/coco128 (real sample data)")

torch.set_num_threads(2)


@torch.no_grad()
def calibrate_frozen_bn(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """Give every frozen batch norm the statistics of its own input on ``x`` and random affine values.

    Freshly built DETRs have identity batch norms (mean 0, var 1), through which a
    random ResNet's activations explode; calibrated statistics make the random
    network behave like a trained one numerically.
    """
    gen = torch.Generator().manual_seed(seed)

    def hook(module, inputs):
        (inp,) = inputs
        module.running_mean.copy_(inp.mean((0, 2, 3)))
        module.running_var.copy_(inp.var((0, 2, 3)))
        module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
        module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if type(m).__name__.endswith("FrozenBatchNorm2d")
    ]
    assert handles, "no frozen batch norm found"
    model(x)
    for h in handles:
        h.remove()


def make_hf_detr(num_labels: int = 91, auxiliary_loss: bool = False, seed: int = 0, segmentation: bool = False):
    """transformers' DetrForObjectDetection (``segmentation``: DetrForSegmentation, the detector as its
    ``.detr``) with a ResNet-50 backbone config and random weights (no download)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    # earlier transformers 5 releases still default to a timm "resnet50" backbone, which a backbone_config
    # must then switch off; later ones have no such switch
    legacy = "use_timm_backbone" in inspect.signature(transformers.DetrConfig.__init__).parameters
    config = transformers.DetrConfig(
        # the mask head reads every stage; detection the last
        backbone_config=transformers.ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"] if segmentation else ["stage4"]),
        use_pretrained_backbone=False,
        num_labels=num_labels,
        auxiliary_loss=auxiliary_loss,
        **({"use_timm_backbone": False, "backbone": None} if legacy else {}),
    )
    model = (transformers.DetrForSegmentation if segmentation else transformers.DetrForObjectDetection)(config).eval()
    detector = model.detr if segmentation else model
    calibrate_frozen_bn(
        detector.model.backbone.model, torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    )
    # random heads and query positions of a realistic scale, so that scores and boxes vary
    with torch.no_grad():
        detector.class_labels_classifier.bias.normal_(0, 1.0)
        detector.model.query_position_embeddings.weight.normal_(0, 1.0)
        for layer in detector.bbox_predictor.layers:
            torch.nn.init.xavier_uniform_(layer.weight)
            layer.bias.normal_(0, 0.5)
    return model


def scale_residual_branches(model: detr.DETR, factor: float) -> detr.DETR:
    """Scale the last batch norm of every bottleneck's residual branch (``bn3``) by ``factor``, in place."""
    with torch.no_grad():
        for name, module in model.backbone.named_modules():
            if name.endswith("bn3"):
                module.weight.mul_(factor)
                module.bias.mul_(factor)
    return model


@pytest.fixture(scope="session")
def hf_model():
    return make_hf_detr()


@pytest.fixture(scope="session")
def our_model(hf_model):
    """detr_r50 with the weights of ``hf_model`` converted from the Hugging Face layout."""
    model = detr.detr_r50(num_classes=hf_model.config.num_labels, aux_loss=False, weights=hf_model.state_dict())
    return model.eval()


def padded_pair(seed: int = 0, sizes=((320, 416), (256, 288))) -> tuple[torch.Tensor, torch.Tensor]:
    """Two normalised random images of different sizes in one padded batch, with the padding mask."""
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, h, w, generator=gen) for h, w in sizes]
    return pad_batch(images, size_divisor=32)


def random_targets(batch: int, num_classes: int, counts=(3, 1), seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Valid normalized cxcywh targets with the given number of boxes per image."""
    gen = torch.Generator().manual_seed(seed)
    targets = []
    for i in range(batch):
        n = counts[i % len(counts)]
        wh = torch.rand(n, 2, generator=gen) * 0.4 + 0.05
        c = wh / 2 + torch.rand(n, 2, generator=gen) * (1 - wh)
        targets.append(
            {"class_id": torch.randint(0, num_classes, (n,), generator=gen), "box": torch.cat([c, wh], dim=1)}
        )
    return targets


def reference_layout(our_state_dict):
    """This library's keys renamed to those of facebookresearch/detr checkpoints (the weights tests use it
    to write such files from models of ours; tests/test_hf_parity.py builds its reference file independently)."""
    renames = {"backbone.body.": "backbone.0.body.", "class_head.": "class_embed.", "box_head.": "bbox_embed."}
    out = {}
    for key, value in our_state_dict.items():
        for new, old in renames.items():
            if key.startswith(new):
                key = old + key[len(new) :]
        out[key] = value
    return out


TINY_MODEL = {"d_model": 32, "nhead": 4, "num_encoder_layers": 1, "num_decoder_layers": 1, "dim_feedforward": 32}


def tiny_train_config(data, out, size: int = 32, **overrides):
    """A TrainConfig for a tiny from-scratch run on ``data`` (images of ``size`` px) into ``out``."""
    from detr.engine import TrainConfig

    values = dict(
        data=str(data), output_dir=str(out), model="detr_r18", pretrained_backbone=False, num_queries=5,
        model_kwargs=TINY_MODEL, train_scales=[size], max_size=size * 3 // 2, crop=False, eval_size=size,
        batch_size=4, workers=0, progress=False,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)
