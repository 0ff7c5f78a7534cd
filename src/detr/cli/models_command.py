"""``detr models``: the models, their published weights, and the ImageNet backbones behind
``pretrained_backbone=True``."""

from __future__ import annotations

import argparse

HELP = "list the available models and their published weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No flags."""


def run(args: argparse.Namespace) -> int:
    from ..hub.download import cache_dir
    from ..hub.pretrained import PRETRAINED, RESNET_IMAGENET_WEIGHTS
    from ..models.architectures import ARCHITECTURES  # data: listing them builds nothing

    print(f"{'model':<15} {'weights':<15} {'classes':>7} {'box AP':>6}  url")
    for name in sorted(ARCHITECTURES):
        w = PRETRAINED.get(name)
        if w is None:
            print(f"{name:<15} {'-':<15}")
        else:
            print(f"{name:<15} {w.name:<15} {w.num_classes:>7} {w.box_ap:>6.1f}  {w.url}")
    for outputs, named in sorted(
        {(w.num_classes, sum(n != "N/A" for n in w.class_names())) for w in PRETRAINED.values()}
    ):
        print(
            f"label space of the published weights: {outputs} outputs, class index = COCO category id "
            f"({named} named classes, 'N/A' in the gaps)"
        )
    print(f"\n{'backbone':<15} {'ImageNet weights':<31} {'acc@1':>6}  url")
    for name, w in RESNET_IMAGENET_WEIGHTS.items():
        print(f"{name:<15} {w.weights:<31} {w.imagenet_acc1:>6.2f}  {w.url}")
    print(f"\ndownloads are cached in {cache_dir()} (set TORCH_HOME to move it)")
    return 0
