"""Published weights, declared as data: the DETR checkpoints of the reference release and the
torchvision ImageNet ResNets behind ``pretrained_backbone=True`` (downloaded by :mod:`.download`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torchvision

from ..data.coco_categories import COCO_CATEGORIES

# torchvision ImageNet weights used by the DETR reference release (the V1 recipe).
RESNET_IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V1",
}


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint.

    name: what ``weights=`` accepts; factory: the model it fits; url: where it is published;
    sha256_prefix: the hash prefix torch hub checks; num_classes and categories: the head's
    classes (class index = COCO category id, names by id); box_ap: COCO val2017 box AP reported
    by the release.
    """

    name: str
    factory: str
    url: str
    sha256_prefix: str
    num_classes: int
    box_ap: float
    categories: dict[int, str] = field(default_factory=lambda: dict(COCO_CATEGORIES), repr=False)
    source: str = "facebookresearch/detr"

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name

    def class_names(self) -> list[str]:
        return [self.categories.get(i, "N/A") for i in range(self.num_classes)]

    def category_ids(self) -> list[int]:
        """The category id of each class: the class index itself (COCO's ids, with gaps named "N/A")."""
        return list(range(self.num_classes))


_FB = "https://dl.fbaipublicfiles.com/detr/"
PRETRAINED: dict[str, PretrainedWeights] = {
    w.name: w
    for w in (
        PretrainedWeights("detr_r50", "detr_r50", _FB + "detr-r50-e632da11.pth", "e632da11", 91, 42.0),
        PretrainedWeights("detr_r50_dc5", "detr_r50_dc5", _FB + "detr-r50-dc5-f0fb7ef5.pth", "f0fb7ef5", 91, 43.3),
        PretrainedWeights("detr_r101", "detr_r101", _FB + "detr-r101-2c7b67e5.pth", "2c7b67e5", 91, 43.5),
        PretrainedWeights("detr_r101_dc5", "detr_r101_dc5", _FB + "detr-r101-dc5-a2e86def.pth", "a2e86def", 91, 44.9),
    )
}


def list_pretrained() -> list[PretrainedWeights]:
    """The published DETR checkpoints that ``weights=`` accepts by name."""
    return list(PRETRAINED.values())


def imagenet_weights(resnet: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights entry of ``resnet`` (its url, hash and metrics)."""
    enum_name, member = RESNET_IMAGENET_WEIGHTS[resnet].split(".")
    return getattr(getattr(torchvision.models, enum_name), member)


def backbone_weights() -> dict[str, dict[str, object]]:
    """torchvision ImageNet weights behind ``pretrained_backbone=True``: url and top-1 accuracy per ResNet."""
    out = {}
    for name, spec in RESNET_IMAGENET_WEIGHTS.items():
        w = imagenet_weights(name)
        out[name] = {"weights": spec, "url": w.url, "imagenet_acc1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"]}
    return out
