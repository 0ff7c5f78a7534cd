"""Label spaces: a model's classes meet a dataset's categories by id, else by name, else a clear refusal;
fine-tuning keeps the rows of the classes a checkpoint knows."""

from __future__ import annotations

import json

import pytest
import torch

import detr
from detr.cli import main
from detr.data.labels import match_categories
from detr.data.synthetic import SynthConfig, make_dataset
from detr.engine import TrainConfig, Trainer

from .conftest import COCO128, TINY_MODEL, tiny_train_config


def coco_space_model(**kwargs) -> detr.DETR:
    """A small model with the published models' label space: 91 classes, class index = COCO category id."""
    torch.manual_seed(0)
    return detr.detr_r18(num_queries=10, **TINY_MODEL, **kwargs)


def test_matching_by_id_by_name_or_a_refusal():
    names, ids = ["N/A", "person", "bicycle", "car"], [0, 1, 2, 3]
    by_id = match_categories(4, names, ids, [(1, "person"), (3, "car")])
    assert (by_id.by, by_id.class_of, by_id.category_of) == ("id", [1, 3], [None, 1, None, 3])
    # the same names under other ids (a re-export): matched by name, predictions get the dataset's ids
    by_name = match_categories(4, names, ids, [(7, "Car"), (9, "person")])
    assert (by_name.by, by_name.class_of, by_name.category_of) == ("name", [3, 1], [None, 9, None, 7])
    # an id the model has, under another name, is no match by id
    assert match_categories(4, names, ids, [(1, "car")]).by == "name"
    with pytest.raises(ValueError, match=r"categories the model does not know, by id or by name: 'horse'"):
        match_categories(4, names, ids, [(1, "person"), (19, "horse")])
    assert match_categories(2, None, None, [(5, "a"), (6, "b")]).by == "order"
    with pytest.raises(ValueError, match="declares 3 categories, the model has 2 classes and no class names"):
        match_categories(2, None, None, [(5, "a"), (6, "b"), (8, "c")])


@pytest.mark.skipif(not COCO128.exists(), reason="needs ../shared/datasets/coco128")
def test_a_coco_label_space_model_evaluates_on_coco128_by_category_id(tmp_path, capsys):
    model = coco_space_model()
    with torch.no_grad():
        model.class_head.bias.zero_()
        model.class_head.bias[18] = (
            10.0  # every query's best class: 18, "dog" (a dataset-order index would say 20, "sheep")
        )
    model.save_pretrained(tmp_path / "coco")
    out = tmp_path / "eval.json"
    args = ["eval", "--data", str(COCO128), "--weights", str(tmp_path / "coco"), "--size", "64", "--max-size", "96"]
    assert main([*args, "--batch-size", "16", "--workers", "0", "--out", str(out)]) == 0
    assert "80 of the model's 91 classes matched to the dataset's categories by id" in capsys.readouterr().out
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == 128 * 10 and {p["category_id"] for p in predictions} == {18}
    # every query-class pair: the N/A classes give no detection, however high they score
    with torch.no_grad():
        model.class_head.bias[12] = 9.0  # "N/A": second best of every query
    model.save_pretrained(tmp_path / "coco")
    assert main([*args, "--batch-size", "16", "--workers", "0", "--all-classes", "--out", str(out)]) == 0
    declared = {c["id"] for c in json.loads((COCO128 / "annotations/instances_val2017.json").read_text())["categories"]}
    categories = {p["category_id"] for p in json.loads(out.read_text())["predictions"]}
    assert 18 in categories and 12 not in categories and len(categories) > 5 and categories <= declared


def coco_named_shapes(tmp_path, categories: list[dict]) -> object:
    """The synthetic shapes dataset with its three categories renamed and renumbered."""
    data = make_dataset(
        tmp_path / "data",
        train=8,
        val=4,
        seed=0,
        config=SynthConfig(image_size=32, max_objects=2, classes=("circle", "square", "triangle")),
    )
    for split in ("train", "val"):
        path = data / "annotations" / f"instances_{split}.json"
        content = json.loads(path.read_text())
        new_id = {
            c["id"]: categories[i]["id"] for i, c in enumerate(sorted(content["categories"], key=lambda c: c["id"]))
        }
        content["categories"] = categories
        for ann in content["annotations"]:
            ann["category_id"] = new_id[ann["category_id"]]
        path.write_text(json.dumps(content))
    return data


def fine_tune_config(data, run, weights, **kwargs) -> TrainConfig:
    return tiny_train_config(data, run, weights=str(weights), num_queries=10, max_steps=1, **kwargs)


def test_fine_tuning_a_coco_model_on_a_subset_keeps_those_classes_rows(tmp_path, recwarn):
    coco = coco_space_model()
    coco.save_pretrained(tmp_path / "coco")
    subset = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 62, "name": "chair"}]
    trainer = Trainer(fine_tune_config(coco_named_shapes(tmp_path, subset), tmp_path / "run", tmp_path / "coco"))
    model = trainer.model
    assert model.class_names == ["person", "dog", "chair"] and model.category_ids == [1, 18, 62]
    source = coco.class_head.weight.detach()
    assert torch.equal(model.class_head.weight.detach(), source[[1, 18, 62, 91]])  # and the "no object" row
    assert not [w for w in recwarn if "fine-tuning" in str(w.message)]  # nothing was re-initialised
    assert trainer.category_match.by == "id"
    # the targets carry the model's class ids
    _, target = trainer.train_set[0]
    assert set(target["class_id"].tolist()) <= {0, 1, 2}


def test_fine_tuning_onto_renamed_and_new_classes(tmp_path):
    coco = coco_space_model()
    coco.save_pretrained(tmp_path / "coco")
    mixed = [{"id": 1, "name": "Dog"}, {"id": 2, "name": "drone"}, {"id": 3, "name": "person"}]
    data = coco_named_shapes(tmp_path, mixed)
    with pytest.warns(
        UserWarning, match=r"kept the rows of the 2 classes the checkpoint knows by name, new rows for drone"
    ):
        model = Trainer(fine_tune_config(data, tmp_path / "run", tmp_path / "coco")).model
    rows = coco.class_head.weight.detach()
    assert torch.equal(model.class_head.weight[[0, 2, 3]].detach(), rows[[18, 1, 91]])
    assert not torch.equal(model.class_head.weight[1].detach(), rows[2])
    # extending: every COCO class kept in place, the new one appended
    with pytest.warns(UserWarning, match="new rows for drone"):
        trainer = Trainer(fine_tune_config(data, tmp_path / "run2", tmp_path / "coco", extend_classes=True))
    extended = trainer.model
    assert extended.num_classes == 92 and extended.class_names[:91] == coco.class_names
    assert extended.class_names[91] == "drone"
    assert torch.equal(extended.class_head.weight[:91].detach(), rows[:91])
    assert torch.equal(extended.class_head.weight[92].detach(), rows[91])  # "no object"
    assert trainer.category_match.category_of[18] == 1 and trainer.category_match.category_of[91] == 2
