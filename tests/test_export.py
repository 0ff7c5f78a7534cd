"""Exported models are models: ONNX (fp32, fp16, int8) and OpenVINO files through the same predict and
eval as the PyTorch weights, their metadata, and the accuracy gate that refuses a broken export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr.cli import main
from detr.data.synthetic import make_dataset
from detr.demo import DEMO_DATA, demo_config
from detr.deploy.export import calibration_inputs
from detr.deploy.gate import compare_on_data
from detr.deploy.metadata import ExportMetadata, ForeignModelError, write_onnx_metadata
from detr.deploy.precision import to_fp16, to_int8

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data, model folder): the demo's architecture trained briefly on the demo's kind of data (about a
    minute; AP about 0.05, AP50 about 0.13, some detections scored over 0.5: real detections, wrong and
    right, not random weights)."""
    from detr.engine.train import train

    root = tmp_path_factory.mktemp("trained")
    make_dataset(root / "data", train=320, val=24, seed=0, config=DEMO_DATA)
    config = demo_config(root / "data", root / "run", minutes=0, steps=200, train_images=320)
    train(dataclasses.replace(config, warmup_steps=15, eval_every=1000, progress=False, log_every=1000))
    return root / "data", root / "run" / "final"


@pytest.fixture(scope="module")
def onnx_file(trained, tmp_path_factory) -> Path:
    data, weights = trained
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out), "--check-data", str(data)]) == 0
    return out


def _detections(folder: Path) -> dict[str, list[dict]]:
    return {Path(k).name: v for k, v in json.loads((folder / "detections.json").read_text()).items()}


def test_detr_predict_with_the_onnx_file_gives_the_pytorch_detections(trained, onnx_file, tmp_path):
    data, weights = trained
    images = str(data / "val")
    for name, source in (("torch", weights), ("onnx", onnx_file)):
        assert main(["predict", images, "--weights", str(source), "--out", str(tmp_path / name),
                     "--threshold", "0.05", "--no-progress"]) == 0  # fmt: skip
    ours, theirs = _detections(tmp_path / "torch"), _detections(tmp_path / "onnx")
    assert ours.keys() == theirs.keys() and len(ours) == 24
    assert sum(map(len, ours.values())) >= 24  # a trained model: detections to compare
    for name in ours:
        a, b = ours[name], theirs[name]
        assert [d["class_name"] for d in a] == [d["class_name"] for d in b], name
        np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-4, rtol=0)
        np.testing.assert_allclose([d["box"] for d in a], [d["box"] for d in b], atol=0.01, rtol=0)  # pixels
    coco = [json.loads((tmp_path / n / "results.coco.json").read_text()) for n in ("torch", "onnx")]
    assert [r["category_id"] for r in coco[0]] == [r["category_id"] for r in coco[1]]


def test_detr_eval_with_the_onnx_file_gives_the_pytorch_ap(trained, onnx_file, tmp_path, capsys):
    data, weights = trained
    found = {}
    for name, source in (("torch", weights), ("onnx", onnx_file)):
        assert (
            main(["eval", "--data", str(data), "--weights", str(source), "--out", str(tmp_path / f"{name}.json")]) == 0
        )
        found[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert found["torch"]["metrics"]["AP50"] > 0.05  # trained: the comparison means something
    for key in ("AP", "AP50", "AP75"):
        assert found["onnx"]["metrics"][key] == pytest.approx(found["torch"]["metrics"][key], abs=1e-6), key
    assert len(found["onnx"]["predictions"]) == len(found["torch"]["predictions"])


def test_one_loader_and_the_same_predict_for_every_kind_of_file(trained, onnx_file):
    data, weights = trained
    image = Image.open(next((data / "val").iterdir())).convert("RGB")
    model, exported = detr.load(weights), detr.load(onnx_file)
    assert isinstance(exported, detr.ExportedDETR) and exported.precision == "fp32"
    assert exported.class_names == model.class_names == ["circle", "square", "triangle"]
    assert exported.preprocessing == model.preprocessing
    ours, theirs = model.predict(image, k=5)[0], exported.predict(image, k=5)[0]
    assert [d["class_name"] for d in ours] == [d["class_name"] for d in theirs]
    np.testing.assert_allclose([d["box"] for d in ours], [d["box"] for d in theirs], atol=0.01, rtol=0)
    wanted = ours[-1]["class_name"]
    only = exported.predict(image, k=5, classes=[wanted])[0]
    assert only and {d["class_name"] for d in only} == {wanted}


def test_metadata_round_trips_and_describes_the_model(trained, onnx_file):
    model = detr.load(trained[1])
    expected = ExportMetadata.of(model)
    assert ExportMetadata.from_props(expected.to_props(), "x") == expected
    stored = ExportMetadata.from_props({p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}, "f")
    assert stored == expected
    assert stored.classes == [
        {"id": 0, "name": "circle", "category_id": 1},
        {"id": 1, "name": "square", "category_id": 2},
        {"id": 2, "name": "triangle", "category_id": 3},
    ]
    assert stored.preprocessing["short_side"] == 64 and stored.preprocessing["std"] == [0.229, 0.224, 0.225]
    assert stored.model == "detr_r18" and stored.library_version == detr.__version__


def _tiny_graph(element_type: int) -> onnx.ModelProto:
    """pixel_values -> MatMul with itself as logits and boxes: a graph of the right names, not ours."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MatMul", ["pixel_values", "pixel_values"], ["logits"]),
             helper.make_node("Identity", ["logits"], ["boxes"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("pixel_values", element_type, [2, 2]),
         helper.make_tensor_value_info("pixel_mask", TensorProto.BOOL, [2, 2])],
        [helper.make_tensor_value_info("logits", element_type, [2, 2]),
         helper.make_tensor_value_info("boxes", element_type, [2, 2])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_foreign_onnx_file_is_refused_by_name(tmp_path, capsys):
    foreign = tmp_path / "yolo.onnx"
    onnx.save(_tiny_graph(onnx.TensorProto.FLOAT), str(foreign))
    with pytest.raises(ForeignModelError, match="yolo.onnx was not exported by detr .*detr export"):
        detr.load(foreign)
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(image)
    assert main(["predict", str(image), "--weights", str(foreign), "--out", str(tmp_path / "p")]) == 2
    assert "was not exported by detr" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match="bad.onnx is not a readable ONNX file"):
        detr.load(tmp_path / "bad.onnx")


def test_a_precision_onnxruntime_cannot_run_is_refused_clearly(trained, tmp_path):
    proto = _tiny_graph(onnx.TensorProto.BFLOAT16)  # no bf16 MatMul on onnxruntime's CPU provider
    write_onnx_metadata(proto, ExportMetadata.of(detr.load(trained[1]), "fp16"))
    onnx.save(proto, str(tmp_path / "half.onnx"))
    with pytest.raises(RuntimeError, match=r"onnxruntime .* cannot run .*half.onnx, a fp16 export: .*NOT_IMPLEMENTED"):
        detr.load(tmp_path / "half.onnx")


def test_fp16_and_int8_exports_report_their_measured_ap_drop(trained, onnx_file, tmp_path, capsys):
    data, weights = trained
    model = detr.load(weights)
    # int8 through the command line: calibration on the training images, the gate on the validation split
    int8 = tmp_path / "int8.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(int8), "--precision", "int8",
                 "--calibration-data", str(data / "train"), "--calibration-images", "48",
                 "--check-data", str(data), "--max-ap-drop", "100"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "int8 backbone" in out and "int8 export" in out and "drop" in out
    # fp16 from the fp32 file, as export() makes it
    proto, kept = to_fp16(onnx.load(str(onnx_file)))
    metadata = ExportMetadata.of(model, "fp16")
    metadata.float_modules = kept
    write_onnx_metadata(proto, metadata)
    onnx.save(proto, str(tmp_path / "fp16.onnx"))
    assert "box_head" in kept and "backbone" not in kept
    types = {i.data_type for i in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types  # weights in half precision
    for path, precision in ((int8, "int8"), (tmp_path / "fp16.onnx", "fp16")):
        exported = detr.load(path)
        assert exported.precision == precision
        result = compare_on_data(exported, model, data, max_ap_drop=100)
        assert result.detections > 0 and result.unmatched <= result.detections
        # the gate's AP of the export is what `detr eval` measures on that file, independently
        assert main(["eval", "--data", str(data), "--weights", str(path), "--out", str(tmp_path / "e.json")]) == 0
        evaluated = json.loads((tmp_path / "e.json").read_text())["metrics"]["AP"]
        assert result.ap_exported == pytest.approx(evaluated, abs=1e-9)
        assert result.ap_drop == pytest.approx(100 * (result.ap_model - evaluated))
        print(f"{precision}: AP {result.ap_model:.4f} -> {result.ap_exported:.4f} ({result.ap_drop:+.2f} points)")


def test_int8_leaves_a_sensitive_group_in_float_and_needs_images(trained, onnx_file, tmp_path):
    model = detr.load(trained[1])
    inputs = calibration_inputs(trained[0] / "train", model.preprocessing, count=8)
    assert len(inputs) == 8 and inputs[0]["pixel_values"].shape == (1, 3, 64, 64)
    tight = {"score": 0.0, "box": 0.0}  # every group moves the outputs a little: all would stay float
    with pytest.raises(ValueError, match="every module group lost too much accuracy in int8"):
        to_int8(onnx_file, tmp_path / "q.onnx", inputs, tolerance=tight, log=lambda _: None)
    kept = to_int8(onnx_file, tmp_path / "q.onnx", inputs, keep_float=["transformer.decoder"], log=lambda _: None)
    assert kept == ["transformer.decoder"]
    quantised = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in quantised.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        calibration_inputs(empty, model.preprocessing)
    with pytest.raises(FileNotFoundError, match="no calibration images"):
        calibration_inputs(tmp_path / "missing", model.preprocessing)


def test_the_gate_refuses_a_broken_export_and_leaves_nothing(trained, tmp_path, monkeypatch, capsys):
    data, weights = trained
    honest = ExportMetadata.of

    def wrong_normalisation(model, precision="fp32"):
        metadata = honest(model, precision)
        metadata.preprocessing = dict(metadata.preprocessing, std=[1.0, 1.0, 1.0])  # broken on purpose
        return metadata

    monkeypatch.setattr(ExportMetadata, "of", staticmethod(wrong_normalisation))
    out = tmp_path / "exports" / "broken.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out), "--check-data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "lost too much accuracy, nothing written" in err and "gate: FAILED" in err
    assert list((tmp_path / "exports").iterdir()) == []  # no file, no temporary folder


def test_commands_that_need_pytorch_weights_say_so(onnx_file, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(image)
    assert main(["explain", str(image), "--weights", str(onnx_file), "--out", str(tmp_path / "x")]) == 2
    assert "is an exported file: detr.load() runs it" in capsys.readouterr().err


def test_export_does_not_overwrite_unasked(trained, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's file")
    with pytest.raises(SystemExit, match="model.onnx exists; pass --overwrite"):
        main(["export", "--weights", str(trained[1]), "--out", str(out)])
    assert out.read_bytes() == b"the user's file"


def test_openvino_runs_the_export_like_onnxruntime(trained, onnx_file, tmp_path):
    pytest.importorskip("openvino")
    from detr.deploy.export import to_openvino

    xml, bin_file = to_openvino(onnx_file, tmp_path / "model.xml")
    assert bin_file.is_file()
    exported, reference = detr.load(xml), detr.load(onnx_file)
    assert exported.metadata == reference.metadata
    batch = reference.preprocessing([Image.open(p).convert("RGB") for p in sorted((trained[0] / "val").iterdir())[:4]])
    for a, b in zip(exported(batch.pixel_values, batch.mask), reference(batch.pixel_values, batch.mask)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------- a mask model's file


@pytest.fixture(scope="module")
def mask_export(tmp_path_factory) -> tuple[torch.nn.Module, Path, Path]:
    """(a small random mask model with three named classes, reading images at 64 px; its ONNX file; a folder of
    four noise images of four sizes, so that a batch of them is padded)."""
    from detr.deploy.export import export_onnx
    from detr.processing.preprocess import ImagePreprocessor

    torch.manual_seed(0)
    model = detr.detr_r18(
        num_classes=3, num_queries=6, backbone_layers=2, d_model=32, nhead=4, num_encoder_layers=1,
        num_decoder_layers=2, dim_feedforward=32, masks=True, backbone_norm="bn",
        class_names=["circle", "square", "triangle"], category_ids=[1, 2, 3], preprocessing=ImagePreprocessor(64, 96),
    ).eval()  # fmt: skip
    with torch.no_grad():  # random heads find "no object" everywhere: make them name objects, for panoptic segments
        model.detr.class_head.bias[-1] -= 5
    root = tmp_path_factory.mktemp("mask_export")
    path = export_onnx(model, root / "masks.onnx", height=64, width=96)
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i, (height, width) in enumerate(((70, 100), (90, 60), (64, 64), (80, 120))):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
    return model, path, root / "images"


def _pictures(folder: Path) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(folder.iterdir())]


def test_a_mask_models_onnx_file_predicts_its_masks_as_the_model(mask_export, tmp_path):
    from pycocotools import mask as mask_utils

    model, path, images = mask_export
    exported = detr.load(path)
    assert exported.task == "masks" and exported.metadata.task == "masks"
    pictures = _pictures(images)
    ours, theirs = model.predict(pictures, k=6), exported.predict(pictures, k=6)  # one batch of four sizes, padded
    partial = 0
    for picture, a, b in zip(pictures, ours, theirs, strict=True):
        assert [d["class_name"] for d in a] == [d["class_name"] for d in b]
        np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-4, rtol=0)
        np.testing.assert_allclose([d["box"] for d in a], [d["box"] for d in b], atol=0.01, rtol=0)  # pixels
        for ours_det, theirs_det in zip(a, b, strict=True):
            assert ours_det["mask"].shape == theirs_det["mask"].shape == (picture.height, picture.width)
            assert (ours_det["mask"] == theirs_det["mask"]).float().mean() > 0.999  # a pixel at 0.5 may flip
            partial += bool(0.01 < ours_det["mask"].float().mean() < 0.99)
    assert partial >= 4  # masks neither empty nor full: the comparison means something
    is_thing = [True, True, False]
    for a, b in zip(model.panoptic(pictures, is_thing, 0.0), exported.panoptic(pictures, is_thing, 0.0), strict=True):
        assert len(a["segments_info"]) == len(b["segments_info"]) > 0
        assert (a["segmentation"] == b["segmentation"]).float().mean() > 0.999
    # detr predict on the file writes the masks (COCO RLE), as predict gives them
    out = tmp_path / "predicted"
    argv = ["predict", str(images), "--weights", str(path), "--out", str(out), "--threshold", "0", "--k", "6"]
    assert main([*argv, "--no-progress"]) == 0
    written = _detections(out)
    for file, picture in zip(sorted(images.iterdir()), pictures, strict=True):
        alone = exported.predict(picture, k=6)[0]
        assert len(written[file.name]) == len(alone) > 0
        for det, expected in zip(written[file.name], alone, strict=True):
            rle = dict(det["segmentation"], counts=det["segmentation"]["counts"].encode("ascii"))
            assert (mask_utils.decode(rle).astype(bool) == expected["mask"].numpy()).mean() > 0.999


def test_a_served_mask_models_file_says_it_gives_masks(mask_export):
    pytest.importorskip("fastapi")
    from detr.serve.app import ServedModel

    _, path, _ = mask_export
    exported = detr.load(path)
    served = ServedModel(exported, exported.preprocessing)
    assert served.masks and served.describe()["masks"] is True


def test_a_mask_models_openvino_file_gives_the_onnx_masks(mask_export, tmp_path):
    pytest.importorskip("openvino")
    from detr.deploy.export import to_openvino

    _, path, images = mask_export
    xml, _ = to_openvino(path, tmp_path / "masks.xml")
    exported, reference = detr.load(xml), detr.load(path)
    assert exported.task == "masks"
    batch = reference.preprocessing(_pictures(images))
    found = exported.decode_with_masks(batch.pixel_values, batch.mask)
    for a, b in zip(found, reference.decode_with_masks(batch.pixel_values, batch.mask), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def _truth_of_predictions(model: torch.nn.Module, images: Path, out: Path) -> Path:
    """A COCO file whose objects are ``model``'s own three best detections (box and mask) on each image: ground
    truth on which the model scores high, and an export whose masks were wrong would not."""
    from detr.processing.interop import mask_to_rle

    entries, annotations = [], []
    for image_id, file in enumerate(sorted(images.iterdir()), 1):
        picture = Image.open(file).convert("RGB")
        entries.append({"id": image_id, "file_name": file.name, "height": picture.height, "width": picture.width})
        for det in model.predict(picture, k=3)[0]:
            x0, y0, x1, y1 = det["box"]
            if det["mask"].any() and x1 - x0 > 1 and y1 - y0 > 1:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": det["class_id"] + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(det["mask"].sum()), "iscrowd": 0,
                    "segmentation": mask_to_rle(det["mask"].numpy()),
                })  # fmt: skip
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(model.class_names)]
    out.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return out


def test_evaluating_a_mask_models_onnx_file_gives_the_models_mask_ap(mask_export, tmp_path, capsys):
    from detr.engine.evaluate import evaluate_model, evaluation_dataset

    model, path, images = mask_export
    truth = _truth_of_predictions(model, images, tmp_path / "truth.json")
    found = {}
    for name, candidate in (("torch", model), ("onnx", detr.load(path))):
        dataset = evaluation_dataset(truth, candidate.preprocessing, images=images)
        found[name] = evaluate_model(candidate, dataset, batch_size=2).metrics
    assert found["torch"]["masks"]["AP"] > 0.5  # its own detections as the truth: a wrong mask would lower it
    for key in ("AP", "AP50", "AP75"):
        assert found["onnx"]["masks"][key] == pytest.approx(found["torch"]["masks"][key], abs=1e-3), key
        assert found["onnx"][key] == pytest.approx(found["torch"][key], abs=1e-3), key
    out = tmp_path / "eval.json"
    argv = ["eval", "--data", str(truth), "--images", str(images), "--weights", str(path), "--workers", "0"]
    assert main([*argv, "--batch-size", "2", "--out", str(out)]) == 0
    assert "masks: AP" in capsys.readouterr().out
    printed = json.loads(out.read_text())["metrics"]["masks"]["AP"]
    assert printed == pytest.approx(found["onnx"]["masks"]["AP"], abs=1e-6)  # detr eval runs evaluate_model
