"""The README's Python example runs as written, on a model that `detr train` made."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image

from detr.data.synthetic import SynthConfig, make_dataset
from detr.engine import Trainer

from .conftest import TINY_MODEL, tiny_train_config

README = Path(__file__).resolve().parents[1] / "README.md"


def use_example() -> str:
    """The first Python block of the README's "Use" section."""
    section = README.read_text().split("## Use", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_use_example_runs_on_a_trained_model(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", train=4, val=2, seed=0, config=SynthConfig(image_size=32, max_objects=2))
    two_layers = dict(TINY_MODEL, num_decoder_layers=2)  # aux_loss: model(x) returns a list
    run = tmp_path / "runs" / "mine"
    Trainer(tiny_train_config(data, run, model_kwargs=two_layers, batch_size=2, max_steps=1, val_split="")).fit()
    monkeypatch.chdir(tmp_path)  # the example's relative paths: runs/mine/final, cat.jpg
    Image.new("RGB", (120, 90), "orange").save(tmp_path / "cat.jpg")
    code = use_example()
    assert 'from_pretrained("runs/mine/final")' in code and "model(x)[-1]" in code
    code = code.replace("800, 800", "160, 160")  # the same example at a size a CPU test affords
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["terms"]["loss"].isfinite()
    # the trained model's part: its last layer's tensors, and detections on the image at its own size
    assert namespace["detections"][0] and all(len(d["box"]) == 4 for d in namespace["detections"][0])
    with torch.no_grad():
        trained = namespace["model"]
    assert trained.preprocessing.short_side == 32 and trained.aux_loss
