"""Published weights, declared as data: the DETR checkpoints of the reference release and the
torchvision ImageNet ResNets behind ``pretrained_backbone=True`` (downloaded by :mod:`.download`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..data.coco_categories import COCO_CATEGORIES, COCO_PANOPTIC_CATEGORIES


@dataclass(frozen=True)
class BackboneWeights:
    """torchvision's ImageNet weights of one ResNet (the V1 recipe, which the DETR release used):
    the enum that names them, where torch hub fetches them, their top-1 accuracy."""

    weights: str
    url: str
    imagenet_acc1: float


# as torchvision publishes them (tests/test_weights.py checks them against torchvision's own entries)
RESNET_IMAGENET_WEIGHTS: dict[str, BackboneWeights] = {
    "resnet18": BackboneWeights(
        "ResNet18_Weights.IMAGENET1K_V1", "https://download.pytorch.org/models/resnet18-f37072fd.pth", 69.758
    ),
    "resnet34": BackboneWeights(
        "ResNet34_Weights.IMAGENET1K_V1", "https://download.pytorch.org/models/resnet34-b627a593.pth", 73.314
    ),
    "resnet50": BackboneWeights(
        "ResNet50_Weights.IMAGENET1K_V1", "https://download.pytorch.org/models/resnet50-0676ba61.pth", 76.13
    ),
    "resnet101": BackboneWeights(
        "ResNet101_Weights.IMAGENET1K_V1", "https://download.pytorch.org/models/resnet101-63fe2227.pth", 77.374
    ),
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
    mask_ap: float | None = None  # panoptic models: COCO mask AP and panoptic quality of the release
    pq: float | None = None

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name

    def class_names(self) -> list[str]:
        return [self.categories.get(i, "N/A") for i in range(self.num_classes)]

    def category_ids(self) -> list[int]:
        """The category id of each class: the class index itself (COCO's ids, with gaps named "N/A")."""
        return list(range(self.num_classes))


_FB = "https://dl.fbaipublicfiles.com/detr/"
_PANOPTIC = dict(COCO_PANOPTIC_CATEGORIES)
PRETRAINED: dict[str, PretrainedWeights] = {
    w.name: w
    for w in (
        PretrainedWeights("detr_r50", "detr_r50", _FB + "detr-r50-e632da11.pth", "e632da11", 91, 42.0),
        PretrainedWeights("detr_r50_dc5", "detr_r50_dc5", _FB + "detr-r50-dc5-f0fb7ef5.pth", "f0fb7ef5", 91, 43.3),
        PretrainedWeights("detr_r101", "detr_r101", _FB + "detr-r101-2c7b67e5.pth", "2c7b67e5", 91, 43.5),
        PretrainedWeights("detr_r101_dc5", "detr_r101_dc5", _FB + "detr-r101-dc5-a2e86def.pth", "a2e86def", 91, 44.9),
        # panoptic: detector + mask head (keys detr.*, bbox_attention.*, mask_head.*), 250 classes
        *(
            PretrainedWeights(name, name, _FB + file, file.rsplit("-", 1)[1][:8], 250, box_ap, _PANOPTIC, mask_ap=mask, pq=pq)
            for name, file, box_ap, mask, pq in (
                ("detr_r50_panoptic", "detr-r50-panoptic-00ce5173.pth", 38.8, 31.1, 43.4),
                ("detr_r50_dc5_panoptic", "detr-r50-dc5-panoptic-da08f1b1.pth", 40.2, 31.9, 44.6),
                ("detr_r101_panoptic", "detr-r101-panoptic-40021d53.pth", 40.1, 33.0, 45.1),
            )
        ),
    )
}


def list_pretrained() -> list[PretrainedWeights]:
    """The published DETR checkpoints that ``weights=`` accepts by name."""
    return list(PRETRAINED.values())
