"""Pretrained weights: registry, every layout, fine-tuning, save/load, Hugging Face export, offline behaviour.

Every checkpoint here is made by the test itself; no test touches the network (the
``offline`` fixture makes any connection attempt fail at once).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time

import pytest
import torch

import detr
from detr.hub.checkpoints import convert_hf_state_dict, convert_to_hf_state_dict
from detr.hub.download import hash_prefix_of
from detr.hub.pretrained import RESNET_IMAGENET_WEIGHTS

from .conftest import make_hf_detr, padded_pair, reference_layout


@pytest.fixture
def offline(monkeypatch):
    """No network: every socket connection fails immediately, as on a machine without internet."""

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (disabled in tests)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache."""
    previous = torch.hub.get_dir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.hub.set_dir(str(tmp_path / "torch_home" / "hub"))
    yield tmp_path / "torch_home" / "hub" / "checkpoints"
    torch.hub.set_dir(previous)


def outputs(model, x, mask):
    with torch.no_grad():
        return model.eval()(x, mask)


def test_registry_is_data():
    entries = {w.name: w for w in detr.list_pretrained()}
    assert set(entries) == set(detr.list_models()) - {"detr_r18", "detr_r34"}  # the reference release's seven
    r50 = entries["detr_r50"]
    assert r50.url.endswith("detr-r50-e632da11.pth") and r50.sha256_prefix == "e632da11"
    assert r50.num_classes == 91 and r50.box_ap == 42.0 and r50.categories[1] == "person"
    assert r50.class_names()[90] == "toothbrush" and len(r50.class_names()) == 91
    assert all(hash_prefix_of(w.url) == w.sha256_prefix for w in entries.values())
    import torchvision

    for name, entry in RESNET_IMAGENET_WEIGHTS.items():  # the data agree with torchvision's own entries
        enum, member = entry.weights.split(".")
        published = getattr(getattr(torchvision.models, enum), member)
        assert (entry.url, entry.imagenet_acc1) == (published.url, published.meta["_metrics"]["ImageNet-1K"]["acc@1"])
    assert RESNET_IMAGENET_WEIGHTS["resnet50"].url.endswith("resnet50-0676ba61.pth")


def test_models_command_lists_weights(capsys):
    from detr.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "detr-r101-dc5-a2e86def.pth" in out and "44.9" in out and "ResNet50_Weights.IMAGENET1K_V1" in out
    assert "91 outputs, class index = COCO category id (80 named classes" in out


def test_hf_save_pretrained_directory_loads_with_same_outputs(tmp_path):
    hf = make_hf_detr(num_labels=7, seed=2)
    hf.config.id2label = {i: f"thing{i}" for i in range(7)}
    hf.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    ours = detr.detr_r50(num_classes=7, aux_loss=False, weights=tmp_path / "hf")
    assert ours.class_names == [f"thing{i}" for i in range(7)]
    rebuilt = detr.DETR.from_pretrained(tmp_path / "hf")  # config.json read, architecture inferred
    x, mask = padded_pair(seed=7)
    with torch.no_grad():
        theirs = hf(pixel_values=x, pixel_mask=(~mask).long())
    for model in (ours, rebuilt):
        logits, boxes = outputs(model, x, mask)
        torch.testing.assert_close(logits, theirs.logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(boxes, theirs.pred_boxes, atol=1e-4, rtol=0)


def test_hf_pytorch_model_bin_directory_loads(tmp_path):
    hf = make_hf_detr(num_labels=3, seed=3)
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ours = detr.detr_r50(num_classes=3, aux_loss=False, weights=tmp_path / "bin")
    x, mask = padded_pair(seed=8)
    with torch.no_grad():
        theirs = hf(pixel_values=x, pixel_mask=(~mask).long())
    torch.testing.assert_close(outputs(ours, x, mask)[0], theirs.logits, atol=1e-4, rtol=0)


def test_export_to_hf_loads_back_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = detr.detr_r50(num_classes=4, num_queries=12, aux_loss=False, class_names=["a", "b", "c", "d"])
    with torch.no_grad():  # realistic batch-norm statistics, so the comparison means something
        for m in ours.modules():
            if type(m).__name__ == "FrozenBatchNorm2d":
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.1)
    ours.export_hf(tmp_path / "export")
    transformers = pytest.importorskip("transformers")
    hf = transformers.DetrForObjectDetection.from_pretrained(tmp_path / "export").eval()
    assert hf.config.id2label[2] == "c" and hf.config.num_queries == 12
    x, mask = padded_pair(seed=9)
    with torch.no_grad():
        theirs = hf(pixel_values=x, pixel_mask=(~mask).long())
    logits, boxes = outputs(ours, x, mask)
    torch.testing.assert_close(logits, theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, theirs.pred_boxes, atol=1e-4, rtol=0)


def test_hf_conversion_round_trips():
    state = detr.detr_r101(num_classes=3, position_embedding="learned").state_dict()
    back = convert_hf_state_dict(convert_to_hf_state_dict(state))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_reference_layout_round_trips(tmp_path):
    model = detr.detr_r50_dc5(num_classes=91).eval()
    path = tmp_path / "detr-r50-dc5.pth"
    torch.save({"model": reference_layout(model.state_dict())}, path)
    loaded = detr.detr_r50_dc5(weights=path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(1)
    model = detr.detr_r50(num_classes=3, num_queries=9, aux_loss=False, class_names=["cat", "dog", "fox"], dropout=0.0)
    model.save_pretrained(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "detr_r50" and config["kwargs"]["num_queries"] == 9
    assert not list((tmp_path / "run").glob("*.tmp"))  # atomic writes leave no temporaries
    rebuilt = detr.DETR.from_pretrained(tmp_path / "run")
    assert rebuilt.class_names == ["cat", "dog", "fox"] and rebuilt.transformer.encoder.layers[0].dropout.p == 0.0
    x, mask = padded_pair(seed=5, sizes=((96, 128), (64, 64)))
    a, b = outputs(model, x, mask), outputs(rebuilt, x, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert rebuilt.predict(x, mask=mask, k=2)[0][0]["class_name"] in {"cat", "dog", "fox"}


def test_a_model_built_from_parts_saves_too(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        detr.DETR.from_pretrained(tmp_path)
    model = detr.DETR(detr.DETRConfig(detr.ResNetBackbone("resnet18"), detr.Transformer(d_model=32, nhead=4), 3))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["parts"]["backbone"] == {"type": "ResNetBackbone", "args": model.backbone.spec()}
    assert detr.DETR.from_pretrained(tmp_path).transformer.spec() == model.transformer.spec()


def test_fine_tuning_reinitialises_only_the_heads_with_a_warning(tmp_path):
    coco = detr.detr_r50(num_classes=91)
    path = tmp_path / "coco.pth"
    torch.save({"model": reference_layout(coco.state_dict())}, path)
    with pytest.warns(
        UserWarning,
        match=r"re-initialised class_head.bias \(92,\) -> \(4,\), class_head.weight \(92, 256\) -> \(4, 256\), "
        r"query_embed.weight \(100, 256\) -> \(20, 256\)",
    ):
        tuned = detr.detr_r50(num_classes=3, num_queries=20, weights=path, class_names=["a", "b", "c"])
    fresh = tuned.state_dict()
    for key, value in coco.state_dict().items():
        if key.startswith(("class_head.", "query_embed.")):
            assert fresh[key].shape != value.shape
        else:
            assert torch.equal(fresh[key], value), key
    assert tuned.class_names == ["a", "b", "c"]


def test_registry_name_loads_from_the_cache_and_sets_class_names(torch_home, offline):
    model = detr.detr_r50(num_classes=91)
    torch_home.mkdir(parents=True)
    torch.save({"model": reference_layout(model.state_dict())}, torch_home / "detr-r50-e632da11.pth")
    loaded = detr.detr_r50(weights="detr_r50")
    assert loaded.class_names[1] == "person" and loaded.class_names[12] == "N/A"  # the weights' label space
    assert loaded.category_ids == list(range(91))  # class index = COCO category id
    assert torch.equal(loaded.state_dict()["class_head.weight"], model.state_dict()["class_head.weight"])
    renamed = detr.detr_r50(weights="detr_r50", class_names=["x"] * 91)
    assert renamed.class_names[1] == "x"  # names the user gives win over the checkpoint's


def test_offline_registry_name_fails_fast_with_the_url_and_path(torch_home, offline):
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        detr.detr_r101(weights="detr_r101")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "https://dl.fbaipublicfiles.com/detr/detr-r101-2c7b67e5.pth" in message
    assert str(torch_home / "detr-r101-2c7b67e5.pth") in message and "offline" in message


def test_offline_pretrained_backbone_fails_fast(torch_home, offline):
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="resnet50-0676ba61.pth.*put it at"):
        detr.detr_r50(pretrained_backbone=True)
    assert time.monotonic() - start < 10


def test_url_download_checks_the_hash(torch_home, tmp_path):
    """A file:// URL goes through the same download path as https:// (no network involved)."""
    model = detr.detr_r50(num_classes=2)
    src = tmp_path / "src.pth"
    torch.save({"model": model.state_dict()}, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    good = tmp_path / f"mine-{digest[:8]}.pth"
    shutil.copy(src, good)
    loaded = detr.detr_r50(num_classes=2, weights=good.as_uri())
    assert (torch_home / good.name).is_file()
    assert torch.equal(loaded.state_dict()["class_head.bias"], model.state_dict()["class_head.bias"])
    bad = tmp_path / "mine-0badc0de.pth"
    shutil.copy(src, bad)
    with pytest.raises(RuntimeError, match="does not match its published SHA-256 prefix 0badc0de"):
        detr.detr_r50(num_classes=2, weights=bad.as_uri())
    assert not (torch_home / bad.name).exists()


def test_unknown_name_is_not_taken_for_a_file():
    with pytest.raises(FileNotFoundError, match="neither a file nor a published checkpoint name.*detr_r50"):
        detr.detr_r50(weights="detr_r18")
