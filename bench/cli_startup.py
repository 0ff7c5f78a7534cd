"""How long the ``detr`` command takes to answer before any work: ``--help``, ``models``, an argument error.

Prints seconds (median of --reps runs, each a fresh process) next to ``python -c "import torch"`` measured
in the same run, the cost every command used to pay first.

    .venv/bin/python bench/cli_startup.py --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

DETR = str(Path(sys.executable).with_name("detr"))


def seconds(cmd: list[str], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch_import = seconds([sys.executable, "-c", "import torch, torchvision"], args.reps)
    print(f"python -c 'import torch, torchvision': {torch_import:.2f} s (the floor of any command that needs them)")
    for label, cmd in (
        ("detr --help", [DETR, "--help"]),
        ("detr train --help", [DETR, "train", "--help"]),
        ("detr models", [DETR, "models"]),
        ("detr train --lrr 1 (argument error)", [DETR, "train", "--lrr", "1"]),
    ):
        t = seconds(cmd, args.reps)
        print(f"{label:<40} {t:.2f} s  ({t / torch_import:.2f}x the torch import)")


if __name__ == "__main__":
    main()
