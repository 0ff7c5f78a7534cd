"""Training presets (detr.engine.recipes): what they resolve to, that the user's values win, and that the
scratch recipe gives a valid, trainable config for data of any character."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from detr.cli import main
from detr.data.synthetic import SynthConfig, make_dataset
from detr.engine.config import TrainConfig
from detr.engine.recipes import SCRATCH_MODEL, DataStats, recipe_values, scratch_values

from .conftest import COCO128, needs_coco128


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory) -> Path:
    """64 px images with 1-3 objects: the demo's character."""
    root = tmp_path_factory.mktemp("shapes")
    make_dataset(root, train=12, val=4, seed=0, config=SynthConfig(image_size=64, max_objects=3))
    return root


@pytest.fixture(scope="module")
def crowded(tmp_path_factory) -> Path:
    """256 px images with up to 14 objects."""
    root = tmp_path_factory.mktemp("crowded")
    make_dataset(
        root, train=12, val=4, seed=1, config=SynthConfig(image_size=256, min_objects=10, max_objects=14, max_size=0.2)
    )
    return root


def test_reference_is_the_defaults(small_shapes):
    assert TrainConfig.from_recipe("reference", data=str(small_shapes)) == TrainConfig(data=str(small_shapes))


def test_scratch_adapts_to_small_images(small_shapes):
    config = TrainConfig.from_recipe("scratch", data=str(small_shapes), max_minutes=5)
    assert config.model == "detr_r18" and not config.pretrained_backbone
    assert config.train_scales == [64] and config.eval_size == 64 and config.max_size == 96
    assert config.model_kwargs["backbone_layers"] == 2  # stride 8: 8 x 8 tokens
    assert config.num_queries == 10
    assert config.anneal_by_time and config.lr_schedule == "cosine"


def test_scratch_adapts_to_large_crowded_images(crowded):
    counts = [len(a) for a in _objects_per_image(crowded)]
    config = TrainConfig.from_recipe("scratch", data=str(crowded))
    assert config.num_queries == 2 * max(counts) > 10
    assert config.train_scales == [256]
    assert config.model_kwargs["backbone_layers"] == 3  # stride 8 would make 1024 tokens, 16 makes 256
    assert not config.anneal_by_time  # no clock to anneal by


def _objects_per_image(root: Path) -> list[list[dict]]:
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    by_image: dict[int, list[dict]] = {i["id"]: [] for i in data["images"]}
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)
    return list(by_image.values())


def test_given_values_win(small_shapes):
    config = TrainConfig.from_recipe(
        "scratch", data=str(small_shapes), lr=3e-4, train_scales=[48], model_kwargs={"d_model": 64}
    )
    assert config.lr == 3e-4 and config.lr_backbone == 1e-3
    assert config.train_scales == [48]
    # the user's model arguments merge into the recipe's: theirs win, the rest stay
    assert config.model_kwargs["d_model"] == 64 and config.model_kwargs["two_stage"] is True
    # an eval size given moves the backbone cut with it
    assert (
        TrainConfig.from_recipe("scratch", data=str(small_shapes), eval_size=320).model_kwargs["backbone_layers"] == 3
    )


def test_stride_choice_follows_the_token_budget():
    def layers(side: int) -> int:
        return scratch_values(DataStats(side, side, 3, 3, 10), {})["model_kwargs"]["backbone_layers"]

    assert [layers(s) for s in (64, 160, 161, 320, 321, 640)] == [2, 2, 3, 3, 4, 4]


def test_batch_size_follows_the_tokens_a_batch_holds():
    def schedule(side: int, **given) -> tuple[int, int]:
        values = recipe_values("scratch", DataStats(side, side, 3, 3, 10), given)
        return values["batch_size"], values["warmup_steps"]

    # 64 px at stride 8: 64 tokens an image, 512 in a batch of 8, too few: 16; from 91 px (8 x 1024 tokens): 8
    assert [schedule(s) for s in (64, 90, 91, 96, 128, 160)] == [(16, 200)] * 2 + [(8, 400)] * 4
    assert schedule(161) == (16, 200)  # stride 16: 101 tokens an image
    assert schedule(320) == (8, 400)  # stride 16: 400 tokens
    assert schedule(128, batch_size=4) == (4, 800)  # a batch given: the warm-up still spans the same images
    assert schedule(64, batch_size=4, warmup_steps=10) == (4, 10)
    # a backbone cut given moves the tokens with it: 128 px at stride 16 makes 64 tokens an image
    assert schedule(128, model_kwargs={"backbone_layers": 3}) == (16, 200)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(True, False, "bf16"), (False, True, "bf16"), (False, False, "none")]
)
def test_scratch_trains_in_bf16_where_the_cpu_computes_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    stats = DataStats(160, 160, 3, 3, 10)
    assert recipe_values("scratch", stats, {"device": "cpu"})["amp"] == expected
    assert recipe_values("scratch", stats, {"device": "cpu", "amp": "none"})["amp"] == "none"  # the user's wins
    # 64 px images (the demo's): too little convolution for bf16 to pay, float32 whatever the CPU
    assert recipe_values("scratch", DataStats(64, 64, 3, 3, 10), {"device": "cpu"})["amp"] == "none"


def test_a_bf16_step_computes_the_float32_loss(small_shapes, tmp_path):
    """The scratch recipe's model under bf16 autocast (the recipe's choice on CPUs with bf16 arithmetic): the
    same loss as in float32 up to bf16 rounding, and gradients for every parameter float32 updates."""
    from detr.engine.train import Trainer

    config = TrainConfig.from_recipe(
        "scratch", data=str(small_shapes), output_dir=str(tmp_path), amp="none", batch_size=4, progress=False
    )
    trainer = Trainer(config)
    images, mask, targets = next(iter(trainer._loader()))
    torch.manual_seed(0)
    loss32 = trainer.loss_module(images, mask, targets)["loss"]
    loss32.backward()
    grads32 = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad()
    torch.manual_seed(0)  # the same denoising noise
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = trainer.loss_module(images, mask, targets)["loss"]
    loss16.backward()
    assert loss16.dtype == torch.float32
    assert torch.isclose(loss16, loss32, rtol=0.03), (float(loss16), float(loss32))
    grads16 = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert grads16.keys() == grads32.keys()
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads16.values())


@needs_coco128
@pytest.mark.parametrize("layout", ["coco", "yolo"])
def test_scratch_on_real_data_is_valid(layout, tmp_path):
    from .test_formats import coco128_as_ultralytics

    data = COCO128 if layout == "coco" else coco128_as_ultralytics(tmp_path) / "data.yaml"
    config = TrainConfig.from_recipe(
        "scratch", data=str(data), train_split="train2017" if layout == "coco" else "train"
    )
    assert config.num_queries == 2 * 42  # coco128: at most 42 boxes in one training image
    side = config.train_scales[0]
    assert 320 <= side <= 640 and config.max_size >= side
    assert config.model_kwargs["backbone_layers"] == 4


def test_errors_name_the_problem(small_shapes, tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'fast'.*reference, scratch"):
        TrainConfig.from_recipe("fast", data=str(small_shapes))
    with pytest.raises(ValueError, match="adapts to the data: give data"):
        TrainConfig.from_recipe("scratch")
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        TrainConfig.from_recipe("scratch", data=str(tmp_path / "missing"))
    with pytest.raises(TypeError):  # a config records values, not presets: the recipe is resolved before
        TrainConfig(recipe="scratch")  # type: ignore[call-arg]


def test_cli_and_config_file_apply_it(small_shapes, tmp_path):
    """``detr train --recipe scratch`` trains with the recipe's values, the flags given on top; a config
    file's ``recipe:`` key does the same. The run's config.json holds the resolved values."""
    out = tmp_path / "run"
    args = ["train", "--recipe", "scratch", "--data", str(small_shapes), "--output-dir", str(out)]
    args += ["--max-steps", "2", "--no-progress", "--batch-size", "4", "--val-split", ""]
    assert main(args) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "detr_r18" and saved["batch_size"] == 4 and saved["max_steps"] == 2
    assert saved["model_kwargs"] == {**SCRATCH_MODEL, "backbone_layers": 2}
    config_file = tmp_path / "scratch.yaml"
    config_file.write_text(yaml.safe_dump({"recipe": "scratch", "data": str(small_shapes), "lr": 2e-4}))
    from detr.cli import build_parser
    from detr.cli.train_command import train_config

    parsed = build_parser()[0].parse_args(["train", "--config", str(config_file), "--max-steps", "3"])
    config = train_config(parsed)
    assert config.model == "detr_r18" and config.lr == 2e-4 and config.max_steps == 3


def test_scratch_on_panoptic_data_counts_stuff(tmp_path):
    """Panoptic training takes every segment as an object: the stuff regions count towards the crowding (and
    distinct two-stage anchors keep them from taking the objects' anchors)."""
    config = SynthConfig(image_size=64, min_objects=4, max_objects=4, masks=True, stuff=("sky", "ground"))
    make_dataset(tmp_path, train=6, val=2, seed=0, config=config)
    panoptic = TrainConfig.from_recipe("scratch", data=str(tmp_path), panoptic=True)
    assert panoptic.num_queries == 2 * (4 + 2)
    assert panoptic.model_kwargs["two_stage_distinct_iou"] == 0.7
    boxes_only = TrainConfig.from_recipe("scratch", data=str(tmp_path))
    assert boxes_only.num_queries == 10 and boxes_only.model_kwargs["two_stage_distinct_iou"] == 0.7
