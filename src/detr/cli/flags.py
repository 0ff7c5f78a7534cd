"""Help texts and groups of flags that several commands share (standard library only: start-up stays light)."""

from __future__ import annotations

import argparse

from .inputs import IMAGE_SUFFIXES

WEIGHTS_HELP = (
    "a saved model folder (e.g. runs/x/final), a run folder, a checkpoint file (.pth, .pt, .safetensors; ours, "
    "facebookresearch/detr's or transformers'), or a published name"
)
EXPORTED_HELP = WEIGHTS_HELP + ", or a file detr export wrote (.onnx, OpenVINO .xml)"
PYTORCH_HELP = WEIGHTS_HELP + " (PyTorch weights: not an exported .onnx / .xml)"
MODEL_HELP = "factory to load a plain state-dict checkpoint into (default: read from the weights, else detr_r50)"
DEVICE_HELP = "auto (a GPU if there is one), cpu, cuda or cuda:N"
SIZE_HELP = "short side of the resize (default: the model's, else 800)"
MAX_SIZE_HELP = "longest side after the resize (default: the model's, else 1333)"
BF16_HELP = "bf16 autocast for backbone and encoder (CPUs with AMX, GPUs)"


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (an argparse type)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def add_val_fraction_flag(parser: argparse.ArgumentParser, of_run: bool = False) -> None:
    """--val-fraction: where a dataset has no validation split, the share of its images that validates (by a hash of
    their file names, as ``detr train`` splits it); ``of_run`` (``detr eval``): by default the run's own share."""
    from ..engine.config import TrainConfig  # the standard library only: start-up stays light

    default = TrainConfig.val_fraction
    parser.add_argument(
        "--val-fraction",
        type=fraction,
        default=None if of_run else default,
        metavar="F",
        help="data without a validation split: this share of its images validates, by a hash of their file names "
        + (f"(default: the run's, from its split.json, else {default:g})" if of_run else f"(default: {default:g})"),
    )


def held_out_fraction(args: argparse.Namespace) -> float:
    """With :func:`add_val_fraction_flag` ``of_run``: the share of data without a validation split that validates
    ``args.weights``: ``--val-fraction``, else the share its training run held out (its ``split.json``: the same
    images), else the default."""
    from ..engine.config import TrainConfig
    from ..engine.splits import run_val_fraction

    return args.val_fraction or run_val_fraction(args.weights) or TrainConfig.val_fraction


def add_tile_flags(parser: argparse.ArgumentParser) -> None:
    """--tile and the flags that go with it (predict and eval): large images through overlapping tiles."""
    parser.add_argument(
        "--tile", type=int, metavar="SIZE", help="large images: cut into overlapping SIZE x SIZE tiles, unresized"
    )
    parser.add_argument("--tile-overlap", type=float, default=0.2, help="fraction of a tile its neighbours share")
    parser.add_argument(
        "--tile-full-image", action="store_true", help="with --tile: the whole image too, for large objects"
    )


def add_image_flags(parser: argparse.ArgumentParser, out: str, what: str, weights: str) -> None:
    """The flags of a command reading images with a model into an output folder (predict, explain): ``out`` the
    default folder, ``what`` the files it holds, ``weights`` the help of --weights."""
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    parser.add_argument("images", nargs="+", help=f"image files ({suffixes}) or folders of them")
    parser.add_argument("--weights", required=True, help=weights)
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--out", default=out, help=f"output folder (one holding earlier {what}: out-2)")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score of a detection")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--exist-ok", action="store_true", help=f"write into --out even if it holds earlier {what}")
