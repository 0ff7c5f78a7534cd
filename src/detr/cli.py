"""Command-line entry point: ``detr <command>``."""

from __future__ import annotations

import argparse
import sys
import time

import torch


def cmd_models(args: argparse.Namespace) -> int:
    """Models, their published weights, and the ImageNet backbones behind pretrained_backbone=True."""
    from .factory import list_models
    from .hub import PRETRAINED, backbone_weights, cache_dir

    print(f"{'model':<15} {'weights':<15} {'classes':>7} {'box AP':>6}  url")
    for name in list_models():
        w = PRETRAINED.get(name)
        if w is None:
            print(f"{name:<15} {'-':<15}")
        else:
            print(f"{name:<15} {w.name:<15} {w.num_classes:>7} {w.box_ap:>6.1f}  {w.url}")
    print(f"\n{'backbone':<15} {'ImageNet weights':<31} {'acc@1':>6}  url")
    for name, info in backbone_weights().items():
        print(f"{name:<15} {info['weights']:<31} {info['imagenet_acc1']:>6.2f}  {info['url']}")
    print(f"\ndownloads are cached in {cache_dir()} (set TORCH_HOME to move it)")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    """Build a model, run inference, one loss and one training step on generated data."""
    from . import create_model

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = create_model(args.model, num_classes=3, num_queries=10, aux_loss=True)
    print(f"built {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    x = torch.rand(2, 3, args.size, args.size)
    mask = torch.zeros(2, args.size, args.size, dtype=torch.bool)
    mask[1, :, args.size // 2 :] = True  # second image: right half is padding
    targets = [
        {"class_id": torch.tensor([0, 2]), "box": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"class_id": torch.tensor([1]), "box": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
    model.train()
    terms = model.get_loss_dict(x, targets, mask)
    terms["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.step()
    print(
        "loss terms (final layer): "
        + ", ".join(f"{k}={terms[k].item():.4f}" for k in ("loss_ce", "loss_bbox", "loss_giou"))
    )
    print(f"total loss over {len(model.transformer.decoder.layers)} decoder layers: {terms['loss'].item():.4f}")
    detections = model.eval().predict(x, mask=mask, k=3)
    for i, dets in enumerate(detections):
        print(f"image {i}: top detection {dets[0]}")
    print(f"selftest passed in {time.perf_counter() - start:.1f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detr", description="DETR object detection")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the available models and their published weights")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("selftest", help="build a model and run inference and a training step on generated data")
    p.add_argument("--model", default="detr_r50", help="registered model name (see `detr models`)")
    p.add_argument("--size", type=int, default=320, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_selftest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
