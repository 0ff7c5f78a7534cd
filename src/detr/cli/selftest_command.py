"""``detr selftest``: build a model, run inference, one loss and one training step on generated data."""

from __future__ import annotations

import argparse
import time

HELP = "build a model and run inference and a training step on generated data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="detr_r50", help="registered model name (see detr models)")
    p.add_argument("--size", type=int, default=320, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models.registry import create_model

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
