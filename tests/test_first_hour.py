"""The first hour: a model reads its images as it was trained to, the CLI explains itself, common
mistakes get one-line errors that name the fix."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detr.cli import build_parser, main
from detr.data.synthetic import SynthConfig, make_dataset

TINY = {"d_model": 32, "nhead": 4, "num_encoder_layers": 1, "num_decoder_layers": 1, "dim_feedforward": 32}


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--output-dir", str(out), "--model", "detr_r18", "--no-pretrained-backbone",
        "--num-queries", "5", "--model-kwargs", json.dumps(TINY), "--train-scales", "32", "--max-size", "48",
        "--no-crop", "--eval-size", "32", "--batch-size", "4", "--workers", "0", "--max-steps", "2", "--no-progress",
        "--log-every", "1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("d"), train=8, val=4, seed=5, config=SynthConfig(image_size=32, max_objects=2)
    )


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("r") / "run"
    assert main(train_args(data, out)) == 0
    return out


def test_a_trained_model_predicts_at_its_own_size_by_default(run, data, tmp_path):
    images = sorted((data / "val").glob("*.jpg"))[:2]
    base = ["predict", *map(str, images), "--weights", str(run / "final"), "--threshold", "0", "--k", "3"]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    assert main([*base, "--out", str(tmp_path / "own"), "--size", "32", "--max-size", "48"]) == 0
    assert main([*base, "--out", str(tmp_path / "big"), "--size", "800", "--max-size", "1333"]) == 0
    default, own, big = (json.loads((tmp_path / n / "detections.json").read_text()) for n in ("default", "own", "big"))
    assert default == own and default != big


def test_the_start_up_summary_and_a_line_per_step(data, tmp_path, capsys):
    assert main(train_args(data, tmp_path / "run", "--max-steps", "2")) == 0
    out = capsys.readouterr().out
    assert "training detr_r18 (" in out and "options: none (the paper's model)) on cpu" in out
    assert "train: 8 images," in out and "val: 4 images," in out and "classes: 5 (circle, square" in out
    assert "schedule: 2 optimizer steps" in out and f"output: {tmp_path / 'run'}" in out
    assert "step 1/2  epoch 0  loss " in out and "step 2/2" in out


def test_an_annotation_file_as_data(data, tmp_path, capsys, caplog):
    annotations = data / "annotations" / "instances_train.json"
    copy = tmp_path / "mine" / "labels.json"  # CVAT and others: one file, images elsewhere
    copy.parent.mkdir()
    shutil.copy(annotations, copy)
    assert main(train_args(copy, tmp_path / "run", "--images", str(data / "train"))) == 0
    assert "--data is one annotation file: no validation" in caplog.text
    # images found next to the file without --images
    assert (
        main(
            train_args(
                annotations.parent.parent / "train" / ".." / "annotations" / "instances_train.json", tmp_path / "r2"
            )
        )
        == 0
    )
    eval_args = ["--weights", str(tmp_path / "run" / "final"), "--workers", "0"]
    assert main(["eval", "--data", str(data / "annotations" / "instances_val.json"), *eval_args]) == 0
    # a YOLO yaml that names no train images: the message names the format it saw and the layouts it knows
    yolo = tmp_path / "yolo"
    (yolo / "labels").mkdir(parents=True)
    (yolo / "data.yaml").write_text("names: [a]\n")
    assert main(train_args(yolo, tmp_path / "r3")) == 2
    err = capsys.readouterr().err
    assert "looks like yolo but no images were found" in err and "Known layouts: a YOLO dataset (data.yaml" in err


def test_a_missing_image_is_found_when_the_dataset_loads(data, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    names = sorted((broken / "train").glob("*.jpg"))
    names[1].unlink()
    names[3].write_bytes(b"not an image")
    assert main(train_args(broken, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert f"2 of the 8 images of {broken / 'annotations' / 'instances_train.json'} cannot be read" in err
    assert f"{names[1]} (missing)" in err and str(names[3]) in err
    assert not (tmp_path / "run" / "log.jsonl").exists()  # stopped before any training


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without a GPU")
@pytest.mark.parametrize("device, message", [("cuda", "PyTorch sees no GPU here"), ("gpu", "is not a device name")])
def test_one_device_rule_in_every_command(run, data, tmp_path, capsys, device, message):
    image = str(sorted((data / "val").glob("*.jpg"))[0])
    for args in (
        train_args(data, tmp_path / "t"),
        ["eval", "--data", str(data), "--weights", str(run / "final")],
        ["predict", image, "--weights", str(run / "final"), "--out", str(tmp_path / "p")],
    ):
        assert main([*args, "--device", device]) == 2, args[0]
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args[0], err)


def test_the_offline_imagenet_backbone_is_one_line(data, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (disabled in tests)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    args = [a for a in train_args(data, tmp_path / "run") if a != "--no-pretrained-backbone"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnet18-f37072fd.pth" in err and str(tmp_path / "hub" / "checkpoints") in err
    assert "--no-pretrained-backbone" in err


def test_every_flag_explains_itself_and_a_mistyped_flag_gets_its_commands_usage(capsys):
    _, commands = build_parser()
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 10, (name, action.dest)
    help_text = " ".join(commands["predict"].format_help().split())
    assert "(default: 0.5)" in help_text and "(default: 100)" in help_text
    assert "(default: the model's, else 800)" in help_text
    assert "--val-split VAL_SPLIT" in commands["train"].format_help()
    assert "for no evaluation (default: val)" in " ".join(commands["train"].format_help().split())
    with pytest.raises(SystemExit):
        main(["train", "--lrr", "1"])
    err = capsys.readouterr().err
    assert err.startswith("usage: detr train") and "unrecognized arguments: --lrr 1" in err


def test_near_misses_get_messages_that_name_the_fix(run, data, tmp_path, capsys, caplog):
    image = str(sorted((data / "val").glob("*.jpg"))[0])
    assert main(["predict", image, "--weights", str(run), "--out", str(tmp_path / "p")]) == 0  # the run folder
    assert f"{run} is a training run: using {run / 'final'}" in caplog.text
    noise = tmp_path / "model.pt"
    noise.write_bytes(bytes(range(256)) * 4)
    assert main(["predict", image, "--weights", str(noise), "--model", "detr_r18", "--out", str(tmp_path / "q")]) == 2
    assert "is not a PyTorch checkpoint at all" in capsys.readouterr().err


def test_exports_output_is_short(run, tmp_path, capfd):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    assert main(["export", "--weights", str(run / "final"), "--out", str(tmp_path / "m.onnx")]) == 0
    captured = capfd.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) < 20, lines
    assert "wrote" in lines[0] and "compared on 8 generated images" in captured.out and "gate: passed" in captured.out


def test_the_command_line_starts_without_importing_torch():
    code = (
        "import sys; from detr.cli import build_parser, main; build_parser(); main(['models']); "
        "from detr.hub.download import cache_dir; print(cache_dir()); assert 'torch' not in sys.modules, 'torch'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(Path(torch.hub.get_dir()) / "checkpoints")
