"""The benchmark harnesses' own logic (bench/time_to_accuracy.py, bench/tiles.py), whose verdicts are published
(issue #33): the summary's mean, spread, ratio to the best peer setting and lead / behind / overlap verdict; task
data tied to its definition (seed, task) and the YOLO copy tied to its data's task.json; the peers' settings; the
thread probe. No training, no benchmark: a few 64 px images at most."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import detr.data.convert
import detr.data.synthetic
import detr.demo

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str, monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # bench/tiles.py imports time_to_accuracy by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    """Both scripts, imported as CI has them: without ultralytics or sahi (the ``bench`` extra), which they may
    only import inside the functions that run the peers."""
    with pytest.MonkeyPatch.context() as patch:
        for peer in ("ultralytics", "sahi"):
            patch.setitem(sys.modules, peer, None)  # ``import ultralytics`` raises ImportError, installed or not
        patch.setattr(sys, "path", list(sys.path))  # bench/tiles.py puts bench/ on the path: undone after
        tta = _load("time_to_accuracy", patch)
        tiles = _load("tiles", patch)
    return tta, tiles


def _row(system: str, ap: float, run: int = 0, task: str = "elongated", **fields) -> dict:
    """A result row as ``run_one`` writes it (the fields ``summarize`` reads, and a few it does not)."""
    row = {
        "task": task,
        "data_seed": 1001,
        "system": system,
        "run": run,
        "minutes": 9.0,
        "threads": 2,
        "steps": 1000,
        "batches": 1000,
        "train_seconds": 540.0,
        "images_per_second": 40.0,
        "threads_in_loop": [2],
        "AP": ap,
        "AP50": 0.9,
        "AP_alt": ap,
        "AP50_alt": 0.9,
        "date": "2026-12-06 07:18",
    }
    return row | fields


def _verdict(lines: list[str]) -> list[str]:
    return [line for line in lines if "ours / best peer" in line]


# ---------------------------------------------------------------------------------------------- summarize


def test_summarize_published_lead(bench):
    """bench/README.md's elongated race (seed 1001, 3 runs each, APs as recorded): ours 0.730-0.764 lies wholly
    above YOLOv8n tuned's 0.683-0.694; the ratio is to tuned (1.08), the better peer setting, not default (1.30)."""
    tta, _ = bench
    detr_rows = [
        _row("detr", 0.742, 0, AP50=0.90, AP_alt=0.74, images_per_second=39.0, steps=2650),
        _row("detr", 0.764, 1, AP50=0.88, AP_alt=0.76, images_per_second=40.0, steps=2660),
        _row("detr", 0.730, 2, AP50=0.89, AP_alt=0.73, images_per_second=41.0, steps=2670),
    ]
    default = [_row("yolov8n:default", ap, run) for run, ap in enumerate((0.594, 0.565, 0.555))]
    tuned = [_row("yolov8n:tuned", ap, run) for run, ap in enumerate((0.683, 0.694, 0.690))]
    lines = tta.summarize(detr_rows + default + tuned)
    assert lines[0] == "elongated (data seed 1001, 9 minutes, threads 2):"
    assert lines[1] == (
        "  detr             AP mean 0.745  spread 0.730-0.764  (3 runs; AP50 mean 0.890; other scoring 0.743; "
        "40.0 img/s; updates 2660)"
    )
    assert lines[2].startswith("  yolov8n:default  AP mean 0.571  spread 0.555-0.594  (3 runs;")
    assert lines[3].startswith("  yolov8n:tuned    AP mean 0.689  spread 0.683-0.694  (3 runs;")
    assert lines[4:] == [
        "  ours / best peer (yolov8n:tuned) mean AP: 1.08  -> lead",
        "  goal 1.10x: not met (ratio 1.0818; needs AP mean 0.7579, has 0.7453)",
    ]


def test_summarize_published_behind(bench):
    """bench/README.md's scales race: ours 0.520-0.529 wholly below YOLOv8n tuned's 0.593-0.602, 0.88 of its mean."""
    tta, _ = bench
    rows = [_row("detr", ap, run, task="scales") for run, ap in enumerate((0.529, 0.524, 0.520))]
    rows += [_row("yolov8n:tuned", ap, run, task="scales") for run, ap in enumerate((0.601, 0.593, 0.602))]
    assert _verdict(tta.summarize(rows)) == ["  ours / best peer (yolov8n:tuned) mean AP: 0.88  -> behind"]


@pytest.mark.parametrize(
    "ours, peer, goal",
    [
        # bench/results/elongated-1004.jsonl's APs to four places: 1.098 prints as 1.10 and is not the goal
        ((0.7697, 0.7774, 0.7674), (0.7069, 0.6990, 0.7020), "not met (ratio 1.0980; needs AP mean 0.7729, has 0.7715)"),
        ((0.77, 0.78, 0.79), (0.70, 0.70, 0.70), "met (ratio 1.1143; needs AP mean 0.7700, has 0.7800)"),
        # over 1.10 on the means, but a peer run above our worst: no lead, so not the goal
        ((0.75, 0.80, 0.85), (0.70, 0.72, 0.76), "not met (ratio 1.1009; needs AP mean 0.7993, has 0.8000)"),
    ],
)
def test_summarize_judges_the_goal_on_exact_means_and_spreads(bench, ours, peer, goal):
    """The goal line compares the exact means, not the two-place ratio, and needs the spreads apart."""
    tta, _ = bench
    rows = [_row("detr", ap, run) for run, ap in enumerate(ours)]
    rows += [_row("yolov8n:tuned", ap, run) for run, ap in enumerate(peer)]
    assert [line for line in tta.summarize(rows) if line.startswith("  goal")] == [f"  goal 1.10x: {goal}"]


@pytest.mark.parametrize(
    "ours, peer, line",
    [
        # a higher mean (1.14x) is not a lead while the spreads overlap
        ((0.70, 0.80), (0.60, 0.72), "  ours / best peer (yolov8n:tuned) mean AP: 1.14  -> spreads overlap: no lead"),
        # spreads that touch (ours' worst run = the peer's best) overlap: a lead needs ours' worst above its best
        ((0.625, 0.75), (0.5, 0.625), "  ours / best peer (yolov8n:tuned) mean AP: 1.22  -> spreads overlap: no lead"),
        # and the other way round: touching from below is not "behind"
        ((0.5, 0.625), (0.625, 0.75), "  ours / best peer (yolov8n:tuned) mean AP: 0.82  -> spreads overlap: no lead"),
    ],
)
def test_summarize_overlapping_spreads_are_no_verdict(bench, ours, peer, line):
    tta, _ = bench
    rows = [_row("detr", ap, run) for run, ap in enumerate(ours)]
    rows += [_row("yolov8n:tuned", ap, run) for run, ap in enumerate(peer)]
    assert _verdict(tta.summarize(rows)) == [line]


def test_summarize_best_peer_is_the_best_mean(bench):
    """The best peer setting is the one of higher mean AP (0.60), even where another (mean 0.58) had the best
    single run (0.66): against it ours (0.62-0.64, mean 0.63) is a lead, 1.05x."""
    tta, _ = bench
    rows = [_row("detr", ap, run) for run, ap in enumerate((0.62, 0.64, 0.63))]
    rows += [_row("yolov8n:default", ap, run) for run, ap in enumerate((0.50, 0.66, 0.58))]
    rows += [_row("yolov8n:tuned", ap, run) for run, ap in enumerate((0.59, 0.61, 0.60))]
    assert _verdict(tta.summarize(rows)) == ["  ours / best peer (yolov8n:tuned) mean AP: 1.05  -> lead"]


def test_summarize_reads_several_results_files(bench, tmp_path, capsys):
    """Rounds recorded in different files (one file a session, as bench/results/ keeps them) are one race:
    two rounds in one file and the third in another give the three-run verdict; one file alone gives two runs."""
    tta, _ = bench
    first = [
        _row("detr", 0.70, 0),
        _row("yolov8n:tuned", 0.60, 0),
        _row("detr", 0.72, 1),
        _row("yolov8n:tuned", 0.62, 1),
    ]
    third = [_row("detr", 0.71, 2), _row("yolov8n:tuned", 0.64, 2)]
    for name, rows in (("a.jsonl", first), ("b.jsonl", third)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a blank line is skipped
    assert tta.main(["--summarize", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 0
    both = capsys.readouterr().out.splitlines()
    assert both[1].startswith("  detr             AP mean 0.710  spread 0.700-0.720  (3 runs;")
    assert both[2].startswith("  yolov8n:tuned    AP mean 0.620  spread 0.600-0.640  (3 runs;")
    assert _verdict(both) == ["  ours / best peer (yolov8n:tuned) mean AP: 1.15  -> lead"]
    tta.main(["--summarize", str(tmp_path / "a.jsonl")])
    assert "(2 runs;" in capsys.readouterr().out.splitlines()[1]


def test_summarize_keeps_other_minutes_threads_and_tasks_apart(bench):
    """A smoke run appended to the same results.jsonl (0.5 minutes, one lucky AP) is not averaged into the race,
    and each group's header gives its own minutes and threads, not the first row's."""
    tta, _ = bench
    race = [_row("detr", ap, run) for run, ap in enumerate((0.75, 0.77, 0.76))]
    race += [_row("yolov8n:tuned", ap, run) for run, ap in enumerate((0.70, 0.74, 0.72))]
    smoke = [_row("detr", 0.99, 0, minutes=0.5), _row("yolov8n:tuned", 0.10, 0, minutes=0.5)]
    other_task = [_row("detr", 0.5, 0, task="scales", minutes=1.0, threads=1)]
    lines = tta.summarize(race + smoke + other_task)
    assert [line for line in lines if not line.startswith(" ")] == [
        "elongated (data seed 1001, 9 minutes, threads 2):",
        "elongated (data seed 1001, 0.5 minutes, threads 2):",
        "scales (data seed 1001, 1 minutes, threads 1):",
    ]
    assert "  detr             AP mean 0.760  spread 0.750-0.770  (3 runs;" in "\n".join(lines)
    # the race: ours 0.75-0.77 against 0.70-0.74 (1.06x); the smoke run its own group (9.90x, one run: no claim);
    # scales has no peer
    assert _verdict(lines) == [
        "  ours / best peer (yolov8n:tuned) mean AP: 1.06  -> lead",
        "  ours / best peer (yolov8n:tuned) mean AP: 9.90  -> lead (only 1 run of one side: no claim before 3)",
    ]


def test_summarize_other_data_seeds_apart(bench):
    """The same task on another data seed is another race (fresh seeds carry the claims, tuning seeds do not)."""
    tta, _ = bench
    rows = [_row("detr", 0.8, 0, data_seed=5), _row("yolov8n:tuned", 0.4, 0, data_seed=5)]
    rows += [_row("detr", 0.5, 0), _row("yolov8n:tuned", 0.6, 0)]
    assert _verdict(tta.summarize(rows)) == [
        "  ours / best peer (yolov8n:tuned) mean AP: 2.00  -> lead (only 1 run of one side: no claim before 3)",
        "  ours / best peer (yolov8n:tuned) mean AP: 0.83  -> behind (only 1 run of one side: no claim before 3)",
    ]


def test_summarize_names_candidate_runs_apart_from_the_recipe(bench):
    """Runs with --detr-overrides (a candidate change) are not averaged into the recipe's; each gets its own verdict,
    and a lead needs 3 runs of each side."""
    tta, _ = bench
    light = {"model_kwargs": {"backbone_blocks": 1}}
    rows = [_row("detr", ap, run) for run, ap in enumerate((0.52, 0.53, 0.54))]
    rows += [_row("detr", ap, run, detr_overrides=light) for run, ap in enumerate((0.70, 0.72))]
    rows += [_row("yolov8n:tuned", ap, run, detr_overrides={}) for run, ap in enumerate((0.59, 0.60, 0.61))]
    lines = tta.summarize(rows)
    assert '  detr {"model_kwargs": {"backbone_blocks": 1}} AP mean 0.710  spread 0.700-0.720  (2 runs;' in lines[2]
    assert "  detr             AP mean 0.530  spread 0.520-0.540  (3 runs;" in lines[1]
    assert [line for line in lines if "best peer" in line] == [
        "  ours / best peer (yolov8n:tuned) mean AP: 0.88  -> behind",
        (
            '  detr {"model_kwargs": {"backbone_blocks": 1}} / best peer (yolov8n:tuned) mean AP: 1.18  -> lead '
            "(only 2 runs of one side: no claim before 3)"
        ),
    ]


def test_tiles_summarize_mean_and_spread(bench):
    """bench/tiles.py: per system, mean and min-max of AP and of seconds per image (bench/README.md's seed 137
    runs); a shorter trial in the same OUT is a line of its own, not averaged in."""
    _, tiles = bench
    rows = [
        {"system": "ours, tiles of 320", "AP": ap, "seconds_per_image": sec, "minutes": 9.0}
        for ap, sec in ((0.865, 0.70), (0.868, 0.65), (0.869, 0.66))
    ]
    rows += [
        {"system": "YOLOv8n + SAHI, 320, tuned", "AP": ap, "seconds_per_image": sec, "minutes": 9.0}
        for ap, sec in ((0.783, 0.69), (0.774, 0.83), (0.771, 0.78))
    ]
    rows.append({"system": "ours, tiles of 320", "AP": 0.2, "seconds_per_image": 0.5, "minutes": 0.5})
    assert tiles.summarize(rows) == [
        "ours, tiles of 320           AP mean 0.867  spread 0.865-0.869  s/image mean 0.67  spread 0.65-0.70  "
        + "(3 runs of 9 minutes)",
        "YOLOv8n + SAHI, 320, tuned   AP mean 0.776  spread 0.771-0.783  s/image mean 0.77  spread 0.69-0.83  "
        + "(3 runs of 9 minutes)",
        "ours, tiles of 320           AP mean 0.200  spread 0.200-0.200  s/image mean 0.50  spread 0.50-0.50  "
        + "(1 runs of 0.5 minutes)",
    ]


# ---------------------------------------------------------------------------------------------- task data


@pytest.fixture
def tiny(bench, monkeypatch):
    """``make_dataset`` of the race writing 2 + 1 images of the task instead of thousands; records its seeds."""
    tta, _ = bench
    seeds = []

    def make_dataset(out, train, val, seed, config):
        seeds.append(seed)
        return detr.data.synthetic.make_dataset(out, train=2, val=1, seed=seed, config=config)

    monkeypatch.setattr(tta, "make_dataset", make_dataset)
    return tta, seeds


def test_task_data_generated_once_per_seed(tiny, tmp_path):
    tta, seeds = tiny
    data = tta.task_data(tmp_path, "demo", 1001)
    recorded = json.loads((data / "task.json").read_text())
    assert (recorded["task"], recorded["seed"], recorded["train"], recorded["val"]) == ("demo", 1001, 3000, 300)
    assert recorded["config"]["image_size"] == 64
    assert (data / "annotations" / "instances_val.json").is_file()
    assert tta.task_data(tmp_path, "demo", 1001) == data and seeds == [1001]  # reused, not generated again
    other = tta.task_data(tmp_path, "demo", 1002)
    assert other != data and seeds == [1001, 1002]
    assert json.loads((other / "task.json").read_text())["seed"] == 1002


def test_task_data_fills_an_empty_folder(tiny, tmp_path):
    """An empty data folder (made by hand, or left by mkdir) holds nothing to protect: it is filled, not refused."""
    tta, seeds = tiny
    (tmp_path / "demo" / "seed1001" / "data").mkdir(parents=True)
    data = tta.task_data(tmp_path, "demo", 1001)
    assert seeds == [1001] and json.loads((data / "task.json").read_text())["seed"] == 1001


def test_task_data_of_another_seed_is_refused(tiny, tmp_path):
    """Data of seed 1001 where seed 1002's belongs (a folder moved or copied by hand) is not raced as 1002's."""
    tta, seeds = tiny
    data = tta.task_data(tmp_path, "demo", 1001)
    moved = tmp_path / "demo" / "seed1002" / "data"
    shutil.copytree(data, moved)
    with pytest.raises(SystemExit, match="another definition of the task 'demo'.*delete that folder"):
        tta.task_data(tmp_path, "demo", 1002)
    assert seeds == [1001]  # nothing generated over it either


@pytest.mark.parametrize(
    "change",
    [
        lambda task: dataclasses.replace(task, train=task.train + 1),
        lambda task: dataclasses.replace(task, data=dataclasses.replace(task.data, max_objects=5)),
    ],
    ids=["image count", "generator config"],
)
def test_task_data_of_a_changed_definition_is_refused(tiny, tmp_path, monkeypatch, change):
    tta, seeds = tiny
    data = tta.task_data(tmp_path, "demo", 1001)
    monkeypatch.setitem(tta.TASKS, "demo", change(tta.TASKS["demo"]))
    with pytest.raises(SystemExit, match=re.escape(str(data))):
        tta.task_data(tmp_path, "demo", 1001)
    assert seeds == [1001]


def test_task_data_interrupted_generation_is_refused(tiny, tmp_path, monkeypatch):
    """A generation stopped half-way leaves a folder without task.json: refused, never taken for whole data."""
    tta, seeds = tiny
    generate = tta.make_dataset

    def interrupted(out, train, val, seed, config):
        Path(out, "train").mkdir(parents=True)
        raise RuntimeError("interrupted")

    monkeypatch.setattr(tta, "make_dataset", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        tta.task_data(tmp_path, "demo", 1001)
    monkeypatch.setattr(tta, "make_dataset", generate)
    with pytest.raises(SystemExit, match="no task.json"):
        tta.task_data(tmp_path, "demo", 1001)
    assert seeds == []


def test_yolo_copy_is_tied_to_task_json(tiny, tmp_path, monkeypatch):
    """The YOLO copy records its data's definition; data regenerated under another definition is not raced
    against the old conversion (issue #33, item 6)."""
    tta, _ = tiny
    conversions = []
    convert = detr.data.convert.convert

    def counted(*args, **kwargs):
        conversions.append(args)
        return convert(*args, **kwargs)

    monkeypatch.setattr(detr.data.convert, "convert", counted)
    data = tta.task_data(tmp_path, "demo", 1001)
    copy = tta.yolo_data(data)
    assert (copy / "data.yaml").is_file() and len(list((copy / "labels" / "train").glob("*.txt"))) == 2
    assert json.loads((copy / "task.json").read_text()) == json.loads((data / "task.json").read_text())
    assert tta.yolo_data(data) == copy and len(conversions) == 1  # reused while the data's definition holds

    shutil.rmtree(data)  # the data generated again, of a changed task; the old YOLO copy left beside it
    monkeypatch.setitem(tta.TASKS, "demo", dataclasses.replace(tta.TASKS["demo"], val=301))
    assert tta.task_data(tmp_path, "demo", 1001) == data
    with pytest.raises(SystemExit, match="a YOLO copy of data"):
        tta.yolo_data(data)
    assert len(conversions) == 1


def test_yolo_copy_without_a_record_is_refused(tiny, tmp_path):
    """A YOLO copy with no task.json (converted before the tie, or interrupted) is of unknown data: refused."""
    tta, _ = tiny
    data = tta.task_data(tmp_path, "demo", 1001)
    (data.parent / "yolo_data" / "labels").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no task.json"):
        tta.yolo_data(data)


def test_tiles_yolo_slices_are_tied_to_data_tile_and_overlap(bench, tmp_path, monkeypatch):
    """bench/tiles.py cuts SAHI's slices once; a rerun with another --tile, --overlap or regenerated data must not
    train YOLO on the old slices."""
    _, tiles = bench
    data = tmp_path / "data"
    data.mkdir()
    (data / "task.json").write_text(json.dumps({"seed": 137}))
    cuts = []

    def slice_split(data, split, out, args):  # SAHI's slicing, replaced: what was cut, and a file to convert
        cuts.append((split, args.tile, args.overlap))
        (out / split).mkdir(parents=True, exist_ok=True)

    def convert(source, target, to):
        (target / "data.yaml").parent.mkdir(parents=True)
        (target / "data.yaml").write_text("")

    monkeypatch.setattr(tiles, "slice_split", slice_split)
    monkeypatch.setattr(detr.data.convert, "convert", convert)
    args = argparse.Namespace(tile=320, overlap=0.2)
    folder = tmp_path / "yolov8n"
    yolo = tiles.sliced_yolo_data(data, folder, args)
    assert (yolo / "data.yaml").is_file() and cuts == [("train", 320, 0.2), ("val", 320, 0.2)]
    assert tiles.sliced_yolo_data(data, folder, args) == yolo and len(cuts) == 2  # reused: same data, tile, overlap
    for changed in (argparse.Namespace(tile=256, overlap=0.2), argparse.Namespace(tile=320, overlap=0.1)):
        with pytest.raises(SystemExit, match="another --tile or another --overlap"):
            tiles.sliced_yolo_data(data, folder, changed)
    (data / "task.json").write_text(json.dumps({"seed": 138}))  # the data generated again, of another seed
    with pytest.raises(SystemExit, match="slices of other data"):
        tiles.sliced_yolo_data(data, folder, args)
    assert len(cuts) == 2


# ---------------------------------------------------------------------------------------------- settings, threads


def test_yolo_train_args_settings(bench):
    tta, _ = bench
    # as a user types it: nothing over Ultralytics' defaults (optimizer "auto", its nbs 64, 3 warm-up epochs)
    assert tta.yolo_train_args("default") == {}
    tuned = tta.yolo_train_args("tuned")
    assert tuned["optimizer"] == "AdamW" and tuned["lr0"] == pytest.approx(1e-3) and tuned["warmup_epochs"] == 1
    assert tuned["nbs"] == tta.YOLO_BATCH == 16  # the batch both benches train with: every batch an update
    for system in tta.SYSTEMS:  # every system the race accepts has a setting
        if system != "detr":
            tta.yolo_train_args(system.split(":")[1])


def test_yolo_train_args_unknown_setting_is_an_error(bench):
    tta, _ = bench
    with pytest.raises(ValueError, match="unknown YOLO setting 'tunned': choose from default, tuned"):
        tta.yolo_train_args("tunned")


def test_thread_probe_reads_threads_inside_the_training_loop(bench):
    """Called as the trainer calls its loggers: ``log`` with every record, ``image`` and ``close``; only the
    training steps' thread counts are kept (an evaluation's are not the race's training threads)."""
    tta, _ = bench
    probe = tta.ThreadProbe()
    before = torch.get_num_threads()
    try:
        for step, threads in enumerate((1, 2, 2, 1)):
            torch.set_num_threads(threads)
            probe.log({"type": "train", "epoch": 0, "step": step, "loss": 1.0, "lr": 1e-3})
        torch.set_num_threads(3)
        probe.log({"type": "eval", "epoch": 0, "step": 4, "AP": 0.5})
        probe.image("val_predictions", Image.new("RGB", (8, 8)), 4)
        probe.close()
    finally:
        torch.set_num_threads(before)
    assert probe.seen == {1, 2}


# ---------------------------------------------------------------------------------------------- step profile


def test_step_profile_counts_the_backbone_as_its_convolutions(tmp_path, monkeypatch):
    """bench/step_profile.py's FLOPs of our parts: the backbone's count (PyTorch's flop counter, grouped by the
    profile) equals the convolutions' arithmetic worked out from their shapes (2 x out x in / groups x kernel per
    output cell), read by forward hooks; the parts (the transformer entered through its methods, not its forward)
    count no op twice: together no more than the whole pass."""
    from detr.engine import TrainConfig
    from detr.engine.train import Trainer

    _load("time_to_accuracy", monkeypatch)
    profile = _load("step_profile", monkeypatch)
    data = tmp_path / "data"
    detr.data.synthetic.make_dataset(data, train=2, val=1, seed=0, config=detr.demo.DEMO_DATA)
    config = TrainConfig.from_recipe("scratch", data=str(data), output_dir=str(tmp_path / "run"), progress=False)
    trainer = Trainer(config)
    counted = []

    def conv_flops(module, inputs, output):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        counted.append(2 * output.numel() * module.in_channels // module.groups * kernel)

    for module in trainer.model.backbone.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(conv_flops)
    parts = profile.our_flops(trainer)
    assert counted and parts["backbone"] == sum(counted)
    assert {"backbone", "transformer", "dense_head", "other", "total"} <= parts.keys()
    assert parts["transformer"] > 0 and parts["other"] >= 0  # no op counted in two parts


# ---------------------------------------------------------------------------------------------- published results


@pytest.mark.parametrize("results", sorted((BENCH / "results").glob("*.jsonl")), ids=lambda p: p.stem)
def test_published_tables_state_what_the_kept_rows_summarize_to(bench, results):
    """Each race kept in bench/results/ appears in the summary tables of README.md and bench/README.md with the
    means, spreads, ratio, images a second and updates its rows summarize to (three runs a side, as a claim
    needs), and calls a row at the goal exactly where its exact means meet it."""
    tta, _ = bench
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    lines = tta.summarize(rows)
    stats = {}
    for line in lines[1:]:
        found = re.match(
            r"  (\S+)\s+AP mean ([\d.]+)  spread ([\d.]+-[\d.]+)  \((\d+) runs;.* ([\d.]+) img/s; updates (\d+)\)", line
        )
        if found:
            stats[found[1]] = (f"{found[2]} ({found[3]})", int(found[4]), found[5], found[6])
    ratio = re.search(r"mean AP: ([\d.]+)", _verdict(lines)[0])[1]
    met = any(line.startswith("  goal 1.10x: met") for line in lines)
    ours, peer = stats["detr"], stats["yolov8n:tuned"]
    assert ours[1] >= 3 and peer[1] >= 3, stats
    expected = [ours[0], peer[0], ratio, f"{ours[2]} / {peer[2]}", f"{ours[3]} / {peer[3]}"]
    task, seed = rows[0]["task"], rows[0]["data_seed"]
    for readme in (BENCH.parent / "README.md", BENCH / "README.md"):
        table_rows = [line for line in readme.read_text().splitlines() if line.startswith(f"| `{task}` ({seed})")]
        assert len(table_rows) == 1, (readme.name, table_rows)
        cells = [cell.strip() for cell in table_rows[0].split("|")[2:]]
        assert cells[:5] == expected, (readme.name, cells)
        assert ("at the goal" in cells[5]) == met, (readme.name, cells[5])  # a 1.098 printed as 1.10 is not
