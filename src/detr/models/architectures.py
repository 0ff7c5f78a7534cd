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
