"""One loader and one evaluation: every way to name the same weights gives the same model (preprocessing and
labels included), and every way to evaluate it the same AP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import detr
from detr.cli import main
from detr.data.synthetic import SynthConfig, make_dataset
from detr.engine import TrainConfig
from detr.engine.evaluate import METRIC_NAMES
from detr.engine.train import train
from detr.hub.checkpoints import CheckpointError
from detr.loader import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "saved_runs" / "boxes"
# a two-stage ResNet-18 of one block a stage and a two-layer transformer: a run of two steps takes ~2 s
SMALL = {
    "d_model": 32, "nhead": 4, "num_encoder_layers": 1, "num_decoder_layers": 2, "dim_feedforward": 64,
    "backbone_layers": 2, "backbone_blocks": 1, "backbone_norm": "bn", "freeze_stem": False,
}  # fmt: skip


def _outputs(model: torch.nn.Module, x: torch.Tensor, masks: bool = False) -> tuple[torch.Tensor, ...]:
    """The last layer's (logits (1, B, Q, K+1), boxes (1, B, Q, 4)) on ``x``, or with ``masks`` those of
    ``decode_with_masks`` ((B, Q, K+1), (B, Q, 4), mask logits (B, Q, H/4, W/4)), computed on one thread as the
    fixture's were (more threads sum in another order: equal to about 1e-7, not bitwise)."""
    mask = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.bool)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            model = model.eval()
            return tuple(model.decode_with_masks(x, mask) if masks else model.decode(x, mask, all_layers=False))
    finally:
        torch.set_num_threads(threads)


def _doors(run: Path) -> dict[str, torch.nn.Module]:
    """The model of a saved run folder loaded through each door that names it."""
    return {
        "final/": load_model(run / "final"),
        "run folder": load_model(run),
        "checkpoint.pth": load_model(run / "checkpoint.pth"),
        "detr.load": detr.load(str(run / "checkpoint.pth")),
        "DETR.from_pretrained(run)": detr.DETR.from_pretrained(run),
    }


def test_a_run_saved_by_the_earlier_version_loads_with_bitwise_equal_outputs_through_every_door():
    """The fixture was written before the loader moved (tests/fixtures/make_saved_runs.py)."""
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    for door, model in _doors(FIXTURE).items():
        logits, boxes = _outputs(model, expected["input"])
        assert torch.equal(logits, expected["logits"]) and torch.equal(boxes, expected["boxes"]), door
        # the run recorded 64 px: every door reads images so (the checkpoint once ran them at 800 px)
        assert (model.preprocessing.short_side, model.preprocessing.max_size) == (64, 96), door
        assert model.class_names == ["circle", "square", "triangle", "cross", "ring"], door
        assert model.category_ids == [1, 2, 3, 4, 5] and model.task == "boxes", door


def test_a_mask_run_saved_by_the_earlier_version_loads_with_bitwise_equal_masks_through_every_door():
    """The fixture's outputs are what the earlier version gave loading ``final/``: its ``checkpoint.pth`` then
    loaded as a plain detector at 800 px (mask head dropped); now every door gives the mask model of final/."""
    run = FIXTURE.parent / "masks"
    expected = load_file(str(run / "expected.safetensors"))
    doors = _doors(run)
    doors["DETRSegmentation.from_pretrained(ckpt)"] = detr.DETRSegmentation.from_pretrained(run / "checkpoint.pth")
    for door, model in doors.items():
        assert isinstance(model, detr.DETRSegmentation) and model.task == "masks", door
        logits, boxes, masks = _outputs(model, expected["input"], masks=True)
        assert torch.equal(logits, expected["logits"][0]) and torch.equal(boxes, expected["boxes"][0]), door
        assert torch.equal(masks, expected["masks"]), door
        assert torch.equal(_outputs(model, expected["input"])[0], expected["logits"]), door  # the boxes-only pass
        assert (model.preprocessing.short_side, model.preprocessing.max_size) == (64, 96), door
        assert model.class_names == ["circle", "square", "triangle", "cross", "ring"], door
        assert model.category_ids == [1, 2, 3, 4, 5], door


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A detector run with EMA and a mask run, two steps each, on 64 px shapes."""
    root = tmp_path_factory.mktemp("runs")
    found = {}
    for name, masks in (("boxes", False), ("masks", True)):
        data = make_dataset(
            root / f"{name}_data", train=4, val=2, seed=5, config=SynthConfig(image_size=64, max_objects=2, masks=masks)
        )
        config = TrainConfig(
            data=str(data), output_dir=str(root / name), model="detr_r18", pretrained_backbone=False, num_queries=5,
            model_kwargs=SMALL, train_scales=[64], max_size=96, crop=False, eval_size=64, batch_size=2, workers=0,
            progress=False, epochs=1, masks=masks, ema=not masks, ema_warmup=1, ema_decay=0.5,
        )  # fmt: skip
        train(config)
        found[name], found[f"{name}_data"] = root / name, data
    return found


def _detections(model, images: list[Image.Image]) -> list[list[dict]]:
    found = model.predict(images, k=5)
    return [[{k: (v.tolist() if torch.is_tensor(v) else v) for k, v in d.items()} for d in dets] for dets in found]


@pytest.mark.parametrize("task", ["boxes", "masks"])
def test_final_run_folder_checkpoint_and_detr_load_give_identical_detections(runs, task):
    run = runs[task]
    images = [Image.open(p).convert("RGB") for p in sorted((runs[f"{task}_data"] / "val").glob("*.jpg"))]
    doors = {
        "final/": detr.load(run / "final"),
        "run folder": detr.load(run),
        "checkpoint.pth": detr.load(run / "checkpoint.pth"),
        "from_pretrained": detr.DETR.from_pretrained(run).eval(),
    }
    reference = doors.pop("final/")
    assert reference.task == task and reference.preprocessing.short_side == 64
    want = _detections(reference, images)
    assert any(want)
    for door, model in doors.items():
        assert type(model) is type(reference) and model.task == task, door  # a mask run keeps its mask head
        assert model.preprocessing == reference.preprocessing, door
        assert (model.class_names, model.category_ids) == (reference.class_names, reference.category_ids), door
        assert _detections(model, images) == want, door


def test_the_checkpoint_of_an_ema_run_gives_the_averaged_weights_as_final_does(runs):
    ckpt = torch.load(runs["boxes"] / "checkpoint.pth", weights_only=True)
    raw, averaged = ckpt["model"], ckpt["ema"]["model"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)  # the test can tell them apart
    loaded = load_model(runs["boxes"] / "checkpoint.pth").state_dict()
    assert all(torch.equal(loaded[k], averaged[k]) for k in averaged if not k.endswith("num_batches_tracked"))


def test_a_mask_run_loads_as_a_mask_model_through_segmentation_from_pretrained(runs):
    model = detr.DETRSegmentation.from_pretrained(runs["masks"] / "checkpoint.pth")
    assert model.task == "masks" and "mask" in model.predict(torch.rand(3, 64, 64), k=1)[0][0]


def test_a_factory_given_a_saved_cut_backbone_folder_says_how_to_load_it():
    with pytest.raises(CheckpointError) as err:
        detr.detr_r18(weights=FIXTURE / "final")
    message = str(err.value)
    assert "detr.load(" in message and "backbone_layers=2" in message and "d_model=32" in message
    # and the hint is right: built so, the factory loads the weights
    kwargs = json.loads((FIXTURE / "final" / "config.json").read_text())["kwargs"]
    kwargs = {k: v for k, v in kwargs.items() if k != "preprocessing"}
    detr.detr_r18(weights=FIXTURE / "final", **kwargs)


# ------------------------------------------------------------------ one evaluation
def _detr_eval(capsys, weights: Path, data: Path, out: Path, *flags: str) -> tuple[dict, str]:
    capsys.readouterr()
    assert (
        main(["eval", "--data", str(data), "--weights", str(weights), "--workers", "0", "--out", str(out), *flags]) == 0
    )
    return json.loads(out.read_text())["metrics"], capsys.readouterr().out


@pytest.mark.parametrize("task", ["boxes", "masks"])
def test_detr_eval_gives_exactly_the_ap_training_printed_at_its_last_evaluation(runs, task, tmp_path, capsys):
    from detr.engine.evaluate import format_metrics

    trained = json.loads((runs[task] / "summary.json").read_text())["metrics"]  # what `detr train` printed
    # the run's batch size (2, detr eval's default too): the same batches, so the same sums
    results = tmp_path / "results.json"
    metrics, printed = _detr_eval(
        capsys, runs[task] / "final", runs[f"{task}_data"], tmp_path / "e.json", "--results", str(results)
    )
    assert {k: metrics[k] for k in METRIC_NAMES} == {k: trained[k] for k in METRIC_NAMES}
    assert format_metrics(trained) in printed
    # two steps of training score AP 0 on both sides: the detections themselves must be the same too
    detections = json.loads(results.read_text())
    assert detections and detections == json.loads((runs[task] / "predictions_val.json").read_text())
    assert ("masks" in metrics) == (task == "masks")  # a mask model on data with masks: mask AP too


def _labelled_by(model, data: Path, out: Path) -> Path:
    """A copy of ``data`` whose validation ground truth is ``model``'s own two best detections an image, moved
    right by 10% and 20% of their width (IoU 0.82, 0.67): an AP away from 0 and 1, for comparing evaluations
    of an untrained model."""
    shutil.copytree(data, out)
    path = out / "annotations" / "instances_val.json"
    truth = json.loads(path.read_text())
    truth["annotations"] = []
    for info in truth["images"]:
        for shift, det in enumerate(model.predict(Image.open(out / "val" / info["file_name"]).convert("RGB"), k=2)[0]):
            x0, y0, x1, y1 = det["box"]
            dx = 0.1 * (shift + 1) * (x1 - x0)
            truth["annotations"].append(
                {"id": len(truth["annotations"]) + 1, "image_id": info["id"], "iscrowd": 0, "area": (x1 - x0) * (y1 - y0),
                 "category_id": model.category_ids[det["class_id"]], "bbox": [x0 + dx, y0, x1 - x0, y1 - y0]}
            )  # fmt: skip
    path.write_text(json.dumps(truth))
    return out


@pytest.mark.slow  # the ONNX export: about 15 s on 2 cores
def test_the_export_gate_measures_the_ap_detr_eval_gives_the_exported_file(runs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from detr.deploy.export import export

    model = load_model(runs["boxes"] / "final").eval()
    data = _labelled_by(model, runs["boxes_data"], tmp_path / "data")
    # two images, no detection scored >= 0.5: the gate cannot verify the file, its AP is what is compared here
    path, gate = export(model, tmp_path / "m.onnx", check_data=data, allow_unverified=True)
    assert 0.1 < gate.ap_model < 1 and gate.ap_exported > 0.1
    batch = ["--batch-size", "8"]  # the gate's batches
    exported, _ = _detr_eval(capsys, path, data, tmp_path / "e.json", *batch)
    pytorch, _ = _detr_eval(capsys, runs["boxes"] / "final", data, tmp_path / "p.json", *batch)
    assert (gate.ap_exported, gate.ap_model) == (exported["AP"], pytorch["AP"])
