"""Run the full `detr demo` and print AP50, AP and wall time (the figures recorded in the README).

.venv/bin/python bench/demo.py [--out runs/bench-demo]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from detr.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench-demo")
    args = parser.parse_args()
    start = time.perf_counter()
    result = run_demo(args.out)
    wall = time.perf_counter() - start
    m = result["metrics"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"demo: AP50 {m['AP50']:.3f}  AP {m['AP']:.3f}  AP75 {m['AP75']:.3f}  steps {result['steps']}  train {result['train_seconds']:.0f}s  wall {wall:.0f}s"
    )


if __name__ == "__main__":
    main()
