"""The library's DETR architectures, as data: factory name -> (torchvision ResNet, DC5 dilation, description).

:mod:`.factories` registers one factory for each; ``detr models`` lists them without building any.
"""

from __future__ import annotations

ARCHITECTURES: dict[str, tuple[str, bool, str]] = {
    "detr_r18": (
        "resnet18",
        False,
        "DETR with a ResNet-18 backbone (512 channels): no published weights; for small data and CPUs.",
    ),
    "detr_r34": ("resnet34", False, "DETR with a ResNet-34 backbone: no published weights."),
    "detr_r50": (
        "resnet50",
        False,
        "DETR with a ResNet-50 backbone (42.0 box AP on COCO val2017 in the reference release).",
    ),
    "detr_r101": ("resnet101", False, "DETR with a ResNet-101 backbone (43.5 box AP in the reference release)."),
    "detr_r50_dc5": ("resnet50", True, "DETR-DC5: ResNet-50 with a dilated last stage (stride 16; 43.3 box AP)."),
    "detr_r101_dc5": ("resnet101", True, "DETR-DC5 with ResNet-101 (44.9 box AP in the reference release)."),
}

# panoptic models, as data: factory name -> (detector factory, description). The reference's panoptic
# DETRs: the detector with the mask head, 250 classes indexed by COCO panoptic category id.
PANOPTIC_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "detr_r50_panoptic": ("detr_r50", "Panoptic DETR, ResNet-50 (43.4 PQ, 31.1 mask AP on COCO val2017 in the release)."),
    "detr_r50_dc5_panoptic": ("detr_r50_dc5", "Panoptic DETR-DC5, ResNet-50 (44.6 PQ, 31.9 mask AP)."),
    "detr_r101_panoptic": ("detr_r101", "Panoptic DETR, ResNet-101 (45.1 PQ, 33.0 mask AP)."),
}
