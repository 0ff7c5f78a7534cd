"""The second hour: what a user does after the first run (stop, resume, export with the gate, explain, hand
results to other tools) does what they expect, and says so."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr.cli import main
from detr.data.synthetic import SynthConfig, make_dataset

from .conftest import TINY_MODEL
from .test_first_hour import train_args  # a tiny run of 2 steps, a line each, no bars


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("d"), train=8, val=4, seed=3, config=SynthConfig(image_size=32, max_objects=2)
    )


@pytest.fixture(scope="module")
def model() -> detr.DETR:
    torch.manual_seed(0)
    return detr.detr_r18(num_classes=3, num_queries=6, class_names=["a", "b", "c"], **TINY_MODEL).eval()


# ------------------------------------------------------------------ the Python API takes what users pass
def test_predict_takes_file_paths_and_lists_mixing_paths_and_images(model, tmp_path):
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(2)]
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for p, a in zip(paths, pixels):
        Image.fromarray(a).save(p)
    by_image = model.predict([Image.fromarray(a) for a in pixels], k=4)
    assert model.predict(str(paths[0]), k=4) == by_image[:1]  # was: TypeError unsupported image type str
    assert model.predict(paths[0], k=4) == by_image[:1]
    assert model.predict([str(paths[0]), Image.fromarray(pixels[1])], k=4) == by_image
    with pytest.raises(FileNotFoundError, match="image file not found: .*missing.jpg"):
        model.predict(str(tmp_path / "missing.jpg"))


def test_predict_on_a_read_only_numpy_image_gives_no_torch_warning(model):
    image = np.asarray(Image.fromarray(np.full((32, 48, 3), 90, np.uint8)))  # read-only, as from a PIL image
    assert not image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "The given NumPy array is not writable" was a UserWarning
        found = model.predict(image, k=2)
    assert found == model.predict(image.copy(), k=2)


def test_to_supervision_takes_predicts_output_for_one_or_many_images(model):
    pytest.importorskip("supervision")
    images = [np.full((32, 48, 3), 90, np.uint8), np.full((40, 40, 3), 200, np.uint8)]
    one = model.predict([images[0]], k=3)
    converted = detr.to_supervision(one)  # was: TypeError list indices must be integers or slices, not str
    assert isinstance(converted, list) and len(converted) == 1
    np.testing.assert_allclose(converted[0].xyxy, [d["box"] for d in one[0]], rtol=1e-6)
    assert converted[0].data["class_name"].tolist() == [d["class_name"] for d in one[0]]
    many = detr.to_supervision(model.predict(images, k=3))
    assert [len(d) for d in many] == [3, 3]
    assert len(detr.to_supervision(one[0])) == 3  # one image's list: one Detections, as before
    with pytest.raises(TypeError, match="one image's detections"):
        detr.to_supervision([[{"box": [0, 0, 1, 1], "score": 1.0, "class_id": 0}], "x"])


# ------------------------------------------------------------------ stopping and resuming
def start_training(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``detr train`` in its own process (as a user starts it), its output in pipes."""
    return subprocess.Popen(
        [sys.executable, "-m", "detr", *train_args(data, out, *extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def wait_for_steps(out: Path, steps: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    log = out / "log.jsonl"
    while time.monotonic() < deadline:
        if log.is_file() and sum('"type": "train"' in line for line in log.read_text().splitlines()) >= steps:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {steps} steps in {timeout}s")


def train_records(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["type"] == "train"]


def test_ctrl_c_stops_at_the_end_of_a_step_with_a_checkpoint_and_the_resume_command(data, tmp_path):
    out = tmp_path / "run"
    process = start_training(data, out, "--max-steps", "10000")
    wait_for_steps(out, 2, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr  # was: a 30-line traceback
    assert process.returncode == 128 + signal.SIGINT
    last = stdout.strip().splitlines()[-1]
    stopped = int(last.split("stopped at step ")[1].split()[0])
    assert last.endswith(f"resume with: detr train --output-dir {out} --resume")
    from detr.engine.train import read_checkpoint

    assert read_checkpoint(out / "checkpoint.pth")["step"] == stopped >= 2
    assert [r["step"] for r in train_records(out)] == list(range(1, stopped + 1))  # was: log.jsonl empty
    assert not (out / "final").exists()


def test_sigterm_stops_the_same_way_and_a_second_ctrl_c_stops_at_once(data, tmp_path):
    out = tmp_path / "run"
    process = start_training(data, out, "--max-steps", "10000")
    wait_for_steps(out, 1, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM and "resume with: detr train --output-dir" in stdout

    from detr.engine.stopping import StopRequest

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a job started in the background
    with StopRequest(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested == signal.SIGINT  # the first: a request, nothing raised
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before  # put back as it was


def test_resume_reads_the_recorded_settings_and_flags_change_only_what_they_name(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data, out, "--max-steps", "3", "--lr", "3e-4", "--val-split", "")) == 0
    capsys.readouterr()
    # was: "error: no dataset given: --data DIR ..."
    assert main(["train", "--output-dir", str(out), "--resume", "--max-steps", "5"]) == 0
    printed = capsys.readouterr().out
    assert "changed on the command line: max_steps 3 -> 5" in printed and "done: 2 epochs, 5 steps" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 3e-4 and config["data"] == str(data) and config["model_kwargs"] == TINY_MODEL
    assert config["resume"] is True and config["max_steps"] == 5
    assert [r["step"] for r in train_records(out)] == [1, 2, 3, 4, 5]
    assert main(["train", "--output-dir", str(out), "--resume", "--recipe", "scratch"]) == 2
    assert "--recipe with --resume" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume in" in capsys.readouterr().err


def test_a_stopped_run_resumes_where_it_stopped(data, tmp_path, capsys):
    out = tmp_path / "run"
    process = start_training(data, out, "--max-steps", "10000")
    wait_for_steps(out, 2, process)
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=120)
    stopped = int(stdout.split("stopped at step ")[1].split()[0])
    capsys.readouterr()
    assert main(["train", "--output-dir", str(out), "--resume", "--max-steps", str(stopped + 2)]) == 0
    printed = capsys.readouterr().out
    assert "nothing to do" not in printed and f"{stopped + 2} steps" in printed
    assert [r["step"] for r in train_records(out)] == list(range(1, stopped + 3))


def test_a_run_folder_in_use_is_refused_with_the_process_id(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data, out, "--val-split", "")) == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from detr.fileio import run_lock\nwith run_lock({str(out)!r}):\n print('held', "
         "flush=True)\n input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    capsys.readouterr()
    # was: "nothing to do: the run in runs/x finished at step 32" while the first run was still going
    assert main(["train", "--output-dir", str(out), "--resume", "--max-steps", "4"]) == 2
    assert f"{out} is in use by process {holder.pid}" in capsys.readouterr().err
    holder.kill()
    holder.wait()
    assert main(["train", "--output-dir", str(out), "--resume", "--max-steps", "4"]) == 0  # a dead holder: no lock


def test_the_epoch_count_when_max_steps_ends_an_epoch(data, tmp_path, capsys):
    # 8 images, batch 4: 2 steps an epoch; 4 steps are 2 whole epochs (was: "done: 1 epochs, 4 steps")
    assert main(train_args(data, tmp_path / "run", "--max-steps", "4", "--val-split", "")) == 0
    assert "done: 2 epochs, 4 steps" in capsys.readouterr().out


def test_ctrl_c_stops_the_demo_the_same_way(tmp_path):
    out = tmp_path / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "detr", "demo", "--out", str(out), "--train-images", "16", "--steps", "10000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "run" / "config.json").is_file():  # written once training has started
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT and "Traceback" not in stderr
    assert stdout.strip().splitlines()[-1].endswith(f"resume with: detr train --output-dir {out / 'run'} --resume")
    assert (out / "run" / "checkpoint.pth").is_file() and not (out / "metrics.json").exists()


# ------------------------------------------------------------------ a schedule that fits the run
def test_a_warm_up_longer_than_a_fifth_of_the_run_is_shortened_and_the_summary_says_so(data, tmp_path):
    from detr.engine import Trainer

    from .conftest import tiny_train_config

    # scratch's 400 warm-up steps in a 40-step run: the lr never got above a tenth of its value
    trainer = Trainer(tiny_train_config(data, tmp_path / "a", warmup_steps=400, max_steps=40, lr_schedule="cosine"))
    assert trainer.lr_factor(3) == pytest.approx(0.5) and trainer.lr_factor(7) == pytest.approx(1.0)
    assert "warm-up 8 steps (shortened from 400 to 20% of the run's 40 steps)" in trainer.summary()
    kept = Trainer(tiny_train_config(data, tmp_path / "b", warmup_steps=4, max_steps=40))
    assert kept.lr_factor(1) == pytest.approx(0.5) and "warm-up 4 steps" in kept.summary()
    assert "shortened" not in kept.summary()
    # bounded by time: over by a fifth of --max-minutes whatever the steps
    timed = Trainer(tiny_train_config(data, tmp_path / "c", warmup_steps=400, epochs=1000, max_minutes=1.0))
    assert "over by 0.2 minutes at the latest" in timed.summary()
    timed.started = time.perf_counter()
    assert timed.lr_factor(10) == pytest.approx(11 / 400, rel=0.2)  # at the start, the steps set it
    timed.started -= 13.0  # a fifth of the minute has gone
    assert timed.lr_factor(10) == 1.0


# ------------------------------------------------------------------ explain
def test_explain_without_a_detection_over_the_threshold_gives_a_hint_with_the_best_score(model, tmp_path, capsys):
    model.save_pretrained(tmp_path / "model")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
    best = model.predict(Image.open(photo).convert("RGB"), k=1)[0][0]["score"]
    assert best < 0.9  # an untrained model: nothing over the threshold
    args = ["explain", str(photo), "--weights", str(tmp_path / "model"), "--out", str(tmp_path / "x"), "--threshold", "0.9"]
    assert main(args) == 0
    printed = capsys.readouterr().out  # was: only the bare photo, no word
    assert f"no detection scored >= 0.9 (the best: {best:.2f}); try --threshold" in printed
    saved = json.loads((tmp_path / "x" / "explained.json").read_text())[str(photo)]
    assert saved["best_score"] == pytest.approx(best, abs=1e-5) and saved["detections"] == []


def test_explain_panels_carry_titles(model):
    from detr.explain import explain_image, explain_panels, image_attention

    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    found = image_attention(model, image, threshold=0.0, max_detections=2)
    panels = explain_panels(found, image, threshold=0.0, points=1, side=128)
    titles = [t for t, _ in panels]
    (a, b) = found.detections
    assert titles[0] == "2 detections >= 0"
    assert titles[1] == f"{a['class_name']} {a['score']:.2f}: decoder layer 0, mean of heads"
    assert titles[2] == f"{b['class_name']} {b['score']:.2f}: decoder layer 0, mean of heads"
    # the point: the feature cell holding the first detection's centre, in the image's pixels
    x, y = map(float, titles[3].split(" at (")[1].split(") px")[0].split(", "))
    cx, cy = (a["box"][0] + a["box"][2]) / 2, (a["box"][1] + a["box"][3]) / 2
    cell_w, cell_h = 64 / found.cells[1], 48 / found.cells[0]
    assert abs(x - cx) <= cell_w / 2 + 1 and abs(y - cy) <= cell_h / 2 + 1
    assert titles[3].startswith("encoder layer 0 at (") and titles[3].endswith(f"px ({a['class_name']}), mean of heads")
    assert [t for t, _ in explain_panels(found, image, 0.0, head=1, points=0)][1].endswith("decoder layer 0, head 1")
    picture, _ = explain_image(model, image, threshold=0.0, points=1, side=128, found=found)
    tile = panels[0][1]
    assert picture.height > tile.height  # a title strip over each tile
    strip = np.asarray(picture)[: picture.height - tile.height, : tile.width]
    assert (strip < 128).any()  # with text in it


# ------------------------------------------------------------------ output that fits where it goes
def test_no_progress_bars_when_the_output_is_not_a_terminal(data, tmp_path):
    out = tmp_path / "run"
    args = [a for a in train_args(data, out, "--val-split", "") if a != "--no-progress"]  # bars asked for
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    trained = subprocess.run([sys.executable, "-m", "detr", *args], capture_output=True, text=True, env=env)
    assert trained.returncode == 0, trained.stderr
    assert "\r" not in trained.stdout + trained.stderr  # was: the bars' carriage returns in the log
    assert "step 1/2" in trained.stdout and "step 2/2" in trained.stdout  # a line per step instead
    # `detr eval ... > log.txt 2>&1`
    evaluated = subprocess.run(
        [sys.executable, "-m", "detr", "eval", "--data", str(data), "--weights", str(out / "final"), "--workers", "0"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "\r" not in evaluated.stdout + evaluated.stderr and "AP" in evaluated.stdout


def test_check_data_draws_into_the_current_folder_or_out_never_into_the_dataset(data, tmp_path, monkeypatch, capsys):
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    work = tmp_path / "here"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["check-data", str(data)]) == 0
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # was: dataset_check.png in the dataset
    assert (work / f"{data.name}_check.png").is_file()
    assert f"wrote {data.name}_check.png" in capsys.readouterr().out
    assert main(["check-data", str(data)]) == 0 and (work / f"{data.name}_check-2.png").is_file()  # none replaced
    assert main(["check-data", str(data), "--out", str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").is_file()


def test_a_confusion_matrix_of_many_classes_shows_the_most_confused_readably(tmp_path):
    from detr.engine.report import confusion_view, evaluation_report, most_confused

    names = [f"class{i:02d}" for i in range(80)]
    gt = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    results = []
    for i in range(80):  # one object of each class, found
        gt["images"].append({"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100})
        gt["annotations"].append({"id": i, "image_id": i, "category_id": i + 1, "bbox": [10, 10, 50, 50]})
        results.append({"image_id": i, "category_id": i + 1, "bbox": [10, 10, 50, 50], "score": 0.9})
    # and some mistaken for another: class03 for class40 (twice), class70 for class71
    for image, (said, was) in enumerate([(3, 40), (3, 40), (70, 71)], start=100):
        gt["images"].append({"id": image, "file_name": f"{image}.jpg", "width": 100, "height": 100})
        gt["annotations"].append({"id": image, "image_id": image, "category_id": was + 1, "bbox": [0, 0, 40, 40]})
        results.append({"image_id": image, "category_id": said + 1, "bbox": [0, 0, 40, 40], "score": 0.8})
    report = evaluation_report(gt, results, tmp_path / "r")
    matrix = np.array(json.loads((tmp_path / "r" / "report.json").read_text())["confusion"]["matrix"])
    assert matrix.shape == (81, 81) and matrix[3, 40] == 2 and matrix[70, 71] == 1  # the whole matrix in the JSON
    assert {3, 40, 70, 71} <= set(most_confused(matrix))
    labels, view = confusion_view(report["confusion"]["labels"], matrix)
    assert len(labels) == 22 and labels[-2:] == ["other (60 classes)", "background"]
    assert view.sum() == matrix.sum() and view[labels.index("class03"), labels.index("class40")] == 2
    with Image.open(tmp_path / "r" / "confusion_matrix.png") as picture:
        assert max(picture.size) <= 1100  # was 3035 x 2985 with 81 unreadable labels


def test_every_help_names_every_dataset_format_and_weights_file_kind():
    from detr.cli import build_parser
    from detr.data.formats import READERS

    _, commands = build_parser()

    def flat(text: str) -> str:
        return "".join(text.lower().split()).replace("-", "")

    formats = ["coco", *(reader.FORMAT.replace("-", "") for reader in READERS)]
    assert {"yolo", "voc", "cvat", "labelstudio"} <= set(formats)
    for name in ("train", "eval", "convert", "check-data", "export", "predict"):  # export --check-data, predict --show-gt
        text = flat(commands[name].format_help())
        assert [f for f in formats if f not in text] == [], name  # was: "a COCO-format folder"
        assert "cocoformatfolder" not in text
    for name in ("eval", "predict", "serve"):  # these run exported files too
        text = flat(commands[name].format_help())
        assert ".onnx" in text and ".xml" in text, name
    for name in ("explain", "export"):  # PyTorch weights only, and they say so
        assert "notanexported.onnx/.xml" in flat(commands[name].format_help()), name
    for name in ("predict", "explain"):
        assert ".jpg" in flat(commands[name].format_help()) and ".png" in flat(commands[name].format_help())


# ------------------------------------------------------------------ a gate that cannot pass what it did not check
CLASSES = ["circle", "square", "triangle", "cross", "ring"]  # the synthetic data's


@pytest.fixture(scope="module")
def unsure_model(tmp_path_factory) -> Path:
    """A model of the data's classes that scores every detection far under 0.5 (its no-object bias high)."""
    torch.manual_seed(0)
    model = detr.detr_r18(num_classes=5, num_queries=5, class_names=CLASSES, **TINY_MODEL).eval()
    model.preprocessing = model.preprocessing.with_sizes(32, 48)
    with torch.no_grad():
        model.class_head.bias[-1] = 8.0
    folder = tmp_path_factory.mktemp("unsure") / "model"
    model.save_pretrained(folder)
    return folder


def test_the_gate_says_not_verified_without_a_confident_detection_and_refuses_unless_allowed(
    unsure_model, data, tmp_path, capsys
):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from detr.deploy.gate import compare_on_data

    twelve = make_dataset(tmp_path / "d12", train=2, val=12, seed=4, config=SynthConfig(image_size=32, max_objects=2))
    out = tmp_path / "m.onnx"
    args = ["export", "--weights", str(unsure_model), "--out", str(out), "--check-data", str(twelve)]
    assert main(args) == 1 and not out.exists()  # was: "gate: passed" over 0 detections, exit 0
    err = capsys.readouterr().err
    assert "could not be verified, nothing written" in err and "over the model's 0 detections" in err
    assert "gate: not verified: the PyTorch model scores no detection >= 0.5" in err and "only" not in err
    assert main([*args, "--allow-unverified"]) == 0 and out.is_file()
    assert "gate: not verified: the PyTorch model scores no detection" in capsys.readouterr().out
    # too few images to vouch for anything
    result = compare_on_data(detr.load(out), detr.load(unsure_model), data)
    assert result.passed and "only 4 images, under 10" in result.unverified


@pytest.mark.slow  # int8 calibration: 92 s on 2 loaded cores
def test_an_int8_export_left_mostly_in_float_says_so_with_both_file_sizes(unsure_model, data, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    from detr.deploy.export import export, export_onnx
    from detr.deploy.precision import module_groups

    model = detr.load(unsure_model)
    groups = sorted(module_groups(onnx.load(str(export_onnx(model, tmp_path / "f.onnx", 48, 48)))))
    assert len(groups) >= 4
    kept = groups[1:]  # all but one group stay float
    lines = []
    path, _ = export(model, tmp_path / "q.onnx", precision="int8", calibration_data=data / "val",
                     keep_float=kept, log=lines.append)  # fmt: skip
    said = "\n".join(lines)  # was: nothing said, a file as large as fp32
    assert f"int8: 1 of {len(groups)} module groups quantised, {len(kept)} left in float ({', '.join(kept)})" in said
    assert "most of the model is still float" in said
    int8_mib, fp32_mib = map(float, re.search(r"; ([\d.]+) MiB, fp32 ([\d.]+) MiB", said).groups())
    assert int8_mib == pytest.approx(path.stat().st_size / 2**20, abs=0.06)
    assert fp32_mib == pytest.approx((tmp_path / "f.onnx").stat().st_size / 2**20, abs=0.06)
