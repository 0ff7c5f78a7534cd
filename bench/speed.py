"""Inference and training speed: ours vs Hugging Face transformers' DetrForObjectDetection.

Both get the same DETR-R50 weights (random, with realistic batch-norm statistics, converted
from transformers' layout into ours) and run in this process, interleaved, after warm-up, on
2 threads. Prints median latencies, ratios ours / theirs, peak memory (measured in child
processes), the share of the machine's measured matmul peak, the bf16 mode's distance from fp32
(with the floor the weights set), the training step, and the matcher + loss share of a training
step. Results of this machine: bench/README.md.

    .venv/bin/python bench/speed.py [--reps 5] [--compile] [--quick] [--exported runs/demo]

``--exported DEMO`` adds the exported files (ONNX fp32/fp16/int8 with onnxruntime, OpenVINO fp32)
of the demo's model (``detr demo``'s folder: ``run/final`` and ``data``): latency at batch 1,
throughput at batch 8 and COCO AP on the demo's validation split, each next to PyTorch measured in
the same run; ``--exported-only`` skips the other tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import (  # noqa: E402  (random HF DETR with calibrated BN)
    make_hf_detr,
    random_targets,
    scale_residual_branches,
)

import detr  # noqa: E402

THREADS = 2


# ----------------------------------------------------------------------------- models
def hf_detr(train: bool = False):
    """transformers' DETR-R50, configured as the reference recipe for training.

    transformers' own ResNet path freezes the whole backbone (its name filter looks for
    "stage.1" where the modules are called "stages.1"), and its defaults have no dropout in
    attention nor after the FFN activation; the reference trains layer2-4 and uses dropout 0.1 in
    both places, as ours does, so for a like-for-like training step they are set the reference way.
    """
    model = make_hf_detr(auxiliary_loss=train)
    if train:
        for name, param in model.model.backbone.named_parameters():
            if any(f"stages.{i}." in name for i in (1, 2, 3)):
                param.requires_grad_(True)
        model.config.attention_dropout = model.config.activation_dropout = 0.1
        for module in model.modules():
            for name in ("attention_dropout", "activation_dropout"):
                if isinstance(getattr(module, name, None), float):
                    setattr(module, name, 0.1)
    return model.train(train)


def our_detr(hf, train: bool = False) -> detr.DETR:
    return detr.detr_r50(num_classes=91, aux_loss=train, weights=hf.state_dict()).train(train)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------- measures
def median_times(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each function, called in turn (interleaved), after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def blocked_median_times(fns: dict[str, Callable[[], object]], reps: int, rounds: int = 2) -> dict[str, float]:
    """Median seconds of each function, timed in blocks of ``reps`` calls (after one warm-up call), the
    blocks in turn, ``rounds`` times: onnxruntime's threads spin on after a call and would slow down
    whatever ran next in an interleaved timing."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            for _ in range(reps):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(dtype: torch.dtype, n: int = 3072, reps: int = 3) -> float:
    """GFLOP/s of a large square matmul on this machine (the practical peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_gflop(model: torch.nn.Module, x: torch.Tensor) -> float:
    """GFLOP of one forward pass (matmuls, convolutions, attention), counted by PyTorch."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_child(kind: str) -> None:
    """In a child process: peak resident memory (MiB) added by one inference / training step."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    train = kind.startswith("train")
    hf = hf_detr(train=train)
    if kind == "infer-hf":
        x = torch.randn(1, 3, 800, 800)
        step = lambda: hf(pixel_values=x)  # noqa: E731
    elif kind.startswith("infer-ours"):
        dtype = torch.bfloat16 if kind.endswith("bf16") else torch.float32
        fast = our_detr(hf).eval().optimize_for_inference(dtype)
        del hf
        x = torch.randn(1, 3, 800, 800)
        step = lambda: fast(x)  # noqa: E731
    else:
        x = torch.randn(2, 3, 640, 640)
        targets = random_targets(2, 91, counts=(5, 3))
        if kind == "train-hf":
            labels = [{"class_labels": t["class_id"], "boxes": t["box"]} for t in targets]
            step = lambda: hf(pixel_values=x, labels=labels).loss.backward()  # noqa: E731
        else:
            ours = our_detr(hf, train=True)
            del hf
            step = lambda: ours.get_loss(x, targets).backward()  # noqa: E731
    with torch.inference_mode(not train):
        step()
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
        base = _rss_kb("VmRSS")
        step()
        print(json.dumps({"peak_mib": (_rss_kb("VmHWM") - base) / 1024}))


def peak_memory(kind: str) -> float:
    # a fixed mmap threshold makes freed activations go back to the OS, so each step starts from the same base
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(THREADS))
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", kind], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


# ------------------------------------------------------------------------------ runs
def inference(reps: int, quick: bool, compile: bool, peaks: dict[torch.dtype, float]) -> list[str]:
    torch.manual_seed(0)
    hf = hf_detr()
    ours = our_detr(hf).eval()
    variants = {
        "ours fp32": ours.optimize_for_inference(torch.float32),
        "ours bf16": ours.optimize_for_inference(torch.bfloat16),
    }
    if compile:
        variants["ours fp32 compiled"] = ours.optimize_for_inference(torch.float32, compile=True)
        variants["ours bf16 compiled"] = ours.optimize_for_inference(torch.bfloat16, compile=True)
    sizes = [(800, 800)] if quick else [(800, 800), (800, 1216)]
    batches = [1] if quick else [1, 4]
    rows = [
        "| size | batch | model | median ms | ours / HF fp32 | max abs diff vs HF (logits, boxes) | GFLOP | % of matmul peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for height, width in sizes:
        for batch in batches:
            x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
            gflop = model_gflop(variants["ours fp32"], x)
            with torch.inference_mode():
                ref = hf(pixel_values=x)
                fns = {"HF fp32": lambda: hf(pixel_values=x)}
                fns.update({name: (lambda m=m: m(x)) for name, m in variants.items()})
                times = median_times(fns, reps)
                diffs = {}
                for name, m in variants.items():
                    logits, boxes = m(x)
                    diffs[name] = (
                        (logits - ref.logits).abs().max().item(),
                        (boxes - ref.pred_boxes).abs().max().item(),
                    )
            for name, seconds in times.items():
                peak = peaks[torch.bfloat16 if "bf16" in name else torch.float32]
                ratio = seconds / times["HF fp32"]
                diff = "-" if name not in diffs else f"{diffs[name][0]:.1e}, {diffs[name][1]:.1e}"
                rows.append(
                    f"| {height}x{width} | {batch} | {name} | {seconds * 1e3:.0f} | {ratio:.2f} | {diff} "
                    f"| {gflop:.0f} | {100 * gflop / seconds / peak:.0f}% |"
                )
                print(rows[-1], flush=True)
    return rows


def bf16_accuracy(quick: bool) -> list[str]:
    """How far the bf16 mode's outputs are from fp32's, next to the floor the weights set.

    The floor is the fp32 model's own change when only its input is rounded to bf16: no bf16
    computation can do better. With every residual branch at full gain (calibrated random batch
    norms, gamma ~ U(0.5, 1.5)) a random ResNet-50 is chaotic and that floor is already above 1e-2;
    with the branches' last batch norm scaled by 0.5 (trained ResNets keep those small, the reason
    for torchvision's ``zero_init_residual``) it is not.
    """
    rows = [
        "| weights | batch | bf16 vs fp32: logits | probabilities | boxes "
        "| floor (fp32, input rounded to bf16): logits | boxes |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, factor in (("calibrated random", 1.0), ("same, residual branches x0.5", 0.5)):
        torch.manual_seed(0)
        model = scale_residual_branches(our_detr(hf_detr()).eval(), factor)
        fp32, bf16 = model.optimize_for_inference(torch.float32), model.optimize_for_inference(torch.bfloat16)
        for batch in [1] if quick else [1, 4]:
            x = torch.randn(batch, 3, 800, 800, generator=torch.Generator().manual_seed(batch))
            logits, boxes = fp32(x)
            logits16, boxes16 = bf16(x)
            logits_r, boxes_r = fp32(x.bfloat16().float())
            rows.append(
                f"| {label} | {batch} | {(logits16 - logits).abs().max():.1e} "
                f"| {(logits16.softmax(-1) - logits.softmax(-1)).abs().max():.1e} | {(boxes16 - boxes).abs().max():.1e} "
                f"| {(logits_r - logits).abs().max():.1e} | {(boxes_r - boxes).abs().max():.1e} |"
            )
            print(rows[-1], flush=True)
    return rows


def training(reps: int, quick: bool) -> list[str]:
    torch.manual_seed(0)
    hf = hf_detr(train=True)
    ours = our_detr(hf, train=True)
    assert trainable(hf) == trainable(ours), (trainable(hf), trainable(ours))
    x = torch.randn(2, 3, 640, 640, generator=torch.Generator().manual_seed(0))
    targets = random_targets(2, 91, counts=(5, 3))
    labels = [{"class_labels": t["class_id"], "boxes": t["box"]} for t in targets]
    times = median_times(
        {
            "HF": lambda: hf(pixel_values=x, labels=labels).loss.backward(),
            "ours": lambda: ours.get_loss(x, targets).backward(),
        },
        reps,
    )
    rows = [
        f"| training step, batch 2, 640x640 ({trainable(ours) / 1e6:.1f} M trainable parameters in both) "
        f"| HF {times['HF'] * 1e3:.0f} ms | ours {times['ours'] * 1e3:.0f} ms | ours / HF {times['ours'] / times['HF']:.2f} |"
    ]
    print(rows[-1], flush=True)

    # where a step of ours goes at batch 8: forward, matcher + loss, backward
    batch = 2 if quick else 8
    x8 = torch.randn(batch, 3, 640, 640, generator=torch.Generator().manual_seed(1))
    targets8 = random_targets(batch, 91, counts=(5, 3, 8, 1))
    mask8 = torch.zeros(batch, 640, 640, dtype=torch.bool)
    parts: dict[str, list[float]] = {"forward": [], "matcher + loss": [], "backward": [], "matcher": []}
    for rep in range(1 + max(1, reps // 2)):
        start = time.perf_counter()
        logits, boxes, _ = ours._decode(x8, mask8, all_layers=None)  # (L, B, Q, K+1), (L, B, Q, 4)
        t_forward = time.perf_counter()
        outputs = list(zip(logits.unbind(0), boxes.unbind(0)))
        loss = ours.criterion(outputs, targets8)["loss"]
        t_loss = time.perf_counter()
        loss.backward()
        t_backward = time.perf_counter()
        for logit, box in outputs:  # the matcher alone, on the same outputs
            ours.criterion.matcher((logit.detach(), box.detach()), targets8)
        t_matcher = time.perf_counter() - t_backward
        if rep:  # the first is warm-up
            parts["forward"].append(t_forward - start)
            parts["matcher + loss"].append(t_loss - t_forward)
            parts["backward"].append(t_backward - t_loss)
            parts["matcher"].append(t_matcher)
    med = {k: statistics.median(v) for k, v in parts.items()}
    step = med["forward"] + med["matcher + loss"] + med["backward"]
    rows.append(
        f"| our step at batch {batch}, 640x640: {step * 1e3:.0f} ms | forward {med['forward'] * 1e3:.0f} ms "
        f"| matcher + loss {med['matcher + loss'] * 1e3:.0f} ms ({100 * med['matcher + loss'] / step:.1f}% of the step; "
        f"matcher alone {100 * med['matcher'] / step:.1f}%) | backward {med['backward'] * 1e3:.0f} ms |"
    )
    print(rows[-1], flush=True)
    return rows


def exported(demo: Path, reps: int) -> list[str]:
    """The demo model as PyTorch (inference path) and as each exported file: speed and AP side by side."""
    import tempfile

    from detr.deploy.export import export
    from detr.deploy.runtime import OnnxDETR, OpenVINODETR

    model = detr.load(demo / "run" / "final")
    data = demo / "data"
    images = sorted((data / "val").iterdir())
    from PIL import Image

    one = model.preprocessing(Image.open(images[0]).convert("RGB"))
    eight = model.preprocessing([Image.open(p).convert("RGB") for p in images[:8]])
    runners: dict[str, Callable] = {"PyTorch fp32 (optimize_for_inference)": model.optimize_for_inference()}
    ap: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision, fmt in (
            ("onnxruntime fp32", "fp32", "onnx"),
            ("onnxruntime fp16", "fp16", "onnx"),
            ("onnxruntime int8", "int8", "onnx"),
            ("OpenVINO fp32", "fp32", "openvino"),
        ):
            path = Path(tmp) / f"{precision}.{'xml' if fmt == 'openvino' else 'onnx'}"
            calibration = data / "train" if precision == "int8" else None
            _, result = export(model, path, precision, fmt, calibration_data=calibration, check_data=data,
                               max_ap_drop=100, log=lambda _: None)  # fmt: skip
            ap["PyTorch fp32 (optimize_for_inference)"] = f"{100 * result.ap_model:.2f}"
            ap[name] = f"{100 * result.ap_exported:.2f}"
            size = sum(f.stat().st_size for f in (path, path.with_suffix(".bin")) if f.is_file())
            ap[name] += f" | {size / 2**20:.1f}"
            runners[name] = (
                OpenVINODETR(path, threads=THREADS) if fmt == "openvino" else OnnxDETR(path, threads=THREADS)
            )
        with torch.inference_mode():
            latency = blocked_median_times(
                {n: (lambda r=r: r(one.pixel_values, one.mask)) for n, r in runners.items()}, reps
            )
            batch = blocked_median_times(
                {n: (lambda r=r: r(eight.pixel_values, eight.mask)) for n, r in runners.items()}, reps
            )
    base_latency = latency["PyTorch fp32 (optimize_for_inference)"]
    rows = [
        f"| demo model ({one.pixel_values.shape[-1]} px images) | latency, batch 1 | vs PyTorch "
        "| throughput, batch 8 | AP (demo val) | file MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name in runners:
        size = ap[name].split(" | ")[1] if " | " in ap[name] else "-"
        rows.append(
            f"| {name} | {latency[name] * 1e3:.1f} ms | {latency[name] / base_latency:.2f} "
            f"| {8 / batch[name]:.0f} img/s | {ap[name].split(' | ')[0]} | {size} |"
        )
        print(rows[-1], flush=True)
    return rows


def exported_r50(reps: int) -> list[str]:
    """DETR-R50 (random weights, as the inference table) at 800x800, batch 1: transformers, PyTorch and
    the exported files (int8 calibrated on 32 coco128 images, else generated ones). No AP: random weights."""
    import tempfile

    from detr.deploy.export import export
    from detr.deploy.runtime import OnnxDETR, OpenVINODETR

    torch.manual_seed(0)
    hf = hf_detr()
    model = our_detr(hf).eval()
    x = torch.randn(1, 3, 800, 800, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 800, 800, dtype=torch.bool)
    coco = ROOT.parent / "shared" / "datasets" / "coco128" / "val2017"
    runners: dict[str, Callable] = {
        "transformers fp32": lambda x, mask: hf(pixel_values=x),
        "PyTorch fp32 (optimize_for_inference)": model.optimize_for_inference(),
    }
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        calibration = Path(tmp) / "calibration"
        calibration.mkdir()
        if coco.is_dir():
            for image in sorted(coco.glob("*.jpg"))[:32]:
                (calibration / image.name).symlink_to(image)
        else:
            from detr.data.synthetic import SynthConfig, make_image
            import random

            rng = random.Random(0)
            for i in range(32):
                make_image(rng, SynthConfig(image_size=800))[0].save(calibration / f"{i}.png")
        for name, precision, fmt in (
            ("onnxruntime fp32", "fp32", "onnx"),
            ("onnxruntime int8", "int8", "onnx"),
            ("OpenVINO fp32", "fp32", "openvino"),
        ):
            path = Path(tmp) / f"{precision}.{'xml' if fmt == 'openvino' else 'onnx'}"
            export(model, path, precision, fmt, calibration_data=calibration if precision == "int8" else None,
                   calibration_images=32, log=lambda _: None)  # fmt: skip
            sizes[name] = sum(f.stat().st_size for f in (path, path.with_suffix(".bin")) if f.is_file()) / 2**20
            runners[name] = OpenVINODETR(path, threads=THREADS) if fmt == "openvino" else OnnxDETR(path, threads=THREADS)
        with torch.inference_mode():
            latency = blocked_median_times({n: (lambda r=r: r(x, mask)) for n, r in runners.items()}, reps)
    rows = [
        "| DETR-R50, 800x800, batch 1 | latency | vs transformers | file MiB |",
        "|---|---|---|---|",
    ]
    for name in runners:
        rows.append(
            f"| {name} | {latency[name] * 1e3:.0f} ms | {latency[name] / latency['transformers fp32']:.2f} "
            f"| {sizes[name]:.0f} |" if name in sizes else
            f"| {name} | {latency[name] * 1e3:.0f} ms | {latency[name] / latency['transformers fp32']:.2f} | - |"
        )  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="timed calls per model and setting (median)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd inference path")
    parser.add_argument("--quick", action="store_true", help="800x800 batch 1 only, small batch for the split")
    parser.add_argument("--exported", type=Path, help="a detr demo folder: add its model's exported files")
    parser.add_argument("--exported-r50", action="store_true", help="add DETR-R50's exported files (slow)")
    parser.add_argument("--exported-only", action="store_true", help="only the exported files' tables")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child)
        return
    torch.set_num_threads(THREADS)
    import transformers

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    print(
        f"machine: {cpu}, {os.cpu_count()} cores, {THREADS} threads; torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    if args.exported_only:
        rows = exported(args.exported, args.reps) if args.exported else []
        rows += ([""] + exported_r50(args.reps)) if args.exported_r50 else []
        print("\n" + "\n".join(rows))
        return
    peaks = {dtype: matmul_peak(dtype) for dtype in (torch.float32, torch.bfloat16)}
    print(f"matmul peak (3072^3): fp32 {peaks[torch.float32]:.0f} GFLOP/s, bf16 {peaks[torch.bfloat16]:.0f} GFLOP/s")
    rows = inference(args.reps, args.quick, args.compile, peaks)
    rows += [""] + bf16_accuracy(args.quick)
    rows += [""] + training(args.reps, args.quick)
    memory = {
        kind: peak_memory(kind) for kind in ("infer-hf", "infer-ours", "infer-ours-bf16", "train-hf", "train-ours")
    }
    rows += [
        "",
        "| peak memory added by one step | HF | ours fp32 | ours bf16 |",
        "|---|---|---|---|",
        f"| inference, 800x800, batch 1 | {memory['infer-hf']:.0f} MiB | {memory['infer-ours']:.0f} MiB "
        f"| {memory['infer-ours-bf16']:.0f} MiB |",
        f"| training step, 640x640, batch 2 | {memory['train-hf']:.0f} MiB | {memory['train-ours']:.0f} MiB | - |",
    ]
    if args.exported:
        rows += [""] + exported(args.exported, args.reps)
    if args.exported_r50:
        rows += [""] + exported_r50(args.reps)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
