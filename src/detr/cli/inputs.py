"""What the commands read from their arguments: weights to run (:func:`load_for_inference`) and image files
(:func:`image_paths`). Light at import: the heavy modules are imported inside the functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def load_for_inference(weights: str, factory: str | None, device: Any, asked: str) -> Any:
    """``detr.load`` for eval, predict and serve: PyTorch weights on ``device``; an exported file on it too,
    except that with ``--device auto`` an onnxruntime without a CUDA provider runs it on the CPU."""
    from ..deploy.runtime import RuntimeUnsupported, is_exported, load_exported
    from ..loader import load

    if is_exported(weights) and asked == "auto" and device.type != "cpu":
        try:
            return load_exported(weights, device)
        except RuntimeUnsupported as err:
            print(f"{err}\nrunning {weights} on the CPU", file=sys.stderr)
            return load_exported(weights, "cpu")
    return load(weights, factory, device)


def image_paths(inputs: list[str]) -> list[Path]:
    """The image files named or found (one folder level) in ``inputs``, each once, in order."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise SystemExit(f"error: no such image or folder: {p}")
    if not paths:
        raise SystemExit(f"error: no images found in {inputs}")
    return list(dict.fromkeys(paths))
