"""ONNX export with dynamic batch size, height and width, the padding mask as an input.

The exported graph takes ``pixel_values`` (B, 3, H, W) float32 normalized images and
``pixel_mask`` (B, H, W) bool, True on padding (all False for unpadded images), and returns
``logits`` (B, Q, K+1) and ``boxes`` (B, Q, 4) normalized cxcywh of the last decoder layer (a mask
model also ``masks`` (B, Q, H/4, W/4), mask logits).
Batch norms are folded into the convolutions first (:func:`detr.deploy.inference.inference_copy`).
The file carries the model's class names and preprocessing (:mod:`.metadata`), so that
:func:`detr.deploy.runtime.load_exported` runs it like the model.

:func:`export` is ``detr export``: float32, float16 or int8 (:mod:`.precision`), ONNX or OpenVINO,
and written only when the accuracy gate (:mod:`.gate`) passes.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from ..fileio import atomic_write
from .inference import inference_copy
from .metadata import PRECISIONS, PREFIX, ExportMetadata, write_onnx_metadata
from .precision import module_groups, to_fp16, to_int8

if TYPE_CHECKING:
    from ..models.detr import DETR
    from ..processing.preprocess import ImagePreprocessor
    from .gate import GateResult

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}  # format -> suffix of the file named

INPUT_NAMES = ["pixel_values", "pixel_mask"]
# the oldest torch whose exporter was seen to keep every size dynamic here (2.8, 2.11 and 2.12 fix the batch)
EXPORT_TORCH = (2, 14)
OUTPUT_NAMES = ["logits", "boxes"]


class _ExportWrapper(nn.Module):
    """(pixel_values, pixel_mask) -> (logits, boxes) of the last layer; the mask is always applied."""

    def __init__(self, model: DETR) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        logits, boxes, _ = self.model._decode(
            pixel_values, pixel_mask, all_layers=False
        )  # (1, B, Q, K+1), (1, B, Q, 4)
        return logits[0], boxes[0]


class _MaskExportWrapper(nn.Module):
    """A mask model's (pixel_values, pixel_mask) -> (logits, boxes, masks (B, Q, H/4, W/4) logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, boxes, masks, _ = self.model._decode(pixel_values, pixel_mask)  # (L, B, Q', K+1), ..., (B, Q', h, w)
        queries = self.model.num_queries
        return logits[-1, :, :queries], boxes[-1, :, :queries], masks[:, :queries]


def export_onnx(
    model: DETR,
    path: str | Path,
    height: int = 800,
    width: int = 800,
    batch_size: int = 1,
    opset_version: int = 18,
    max_side: int = 4096,
) -> Path:
    """Export ``model`` to ONNX at ``path`` (written atomically); returns the path.

    ``height``, ``width`` and ``batch_size`` only shape the example traced; the graph accepts any
    batch and any H, W from 32 to ``max_side``. Needs the ``onnx`` and ``onnxscript`` packages
    (``pip install "detr[export]"``); check the result with :func:`check_onnx`.
    """
    for name, value in (("height", height), ("width", width)):
        if not 32 <= value <= max_side:
            raise ValueError(f"{name} must be in [32, {max_side}], got {value}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < EXPORT_TORCH:
        raise RuntimeError(
            f"ONNX export with dynamic batch and image sizes needs torch >= {'.'.join(map(str, EXPORT_TORCH))} "
            f"(this is {torch.__version__}): with torch 2.8 to 2.12 the exported graph keeps the batch size it was "
            "traced with. Upgrade torch in the environment that exports; the model itself runs on torch >= 2.5"
        )
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as err:
        raise ImportError('ONNX export needs onnx and onnxscript: pip install "detr[export]"') from err
    masks = hasattr(model, "mask_head")  # a mask model: its masks are a third output
    if masks:
        mask_model = copy.deepcopy(model).eval()
        mask_model.detr = inference_copy(model.detr)
        for param in mask_model.parameters():
            param.requires_grad_(False)
        detector = mask_model.detr
    else:
        detector = model = inference_copy(model)
    if getattr(detector.backbone, "channels_last", False):  # a memory layout means nothing to ONNX, and its
        detector.backbone.channels_last = False  # stride checks would pin the dynamic sizes
        detector.backbone.to(memory_format=torch.contiguous_format)
    wrapper = (_MaskExportWrapper(mask_model) if masks else _ExportWrapper(model)).eval()
    if masks:  # traced at batch 1, the mask head's per-query reshapes would pin the batch size
        batch_size = max(batch_size, 2)
    pixel_values = torch.randn(batch_size, 3, height, width)
    pixel_mask = torch.zeros(batch_size, height, width, dtype=torch.bool)
    batch = torch.export.Dim("batch", min=1, max=1024)
    h = torch.export.Dim("height", min=32, max=max_side)
    w = torch.export.Dim("width", min=32, max=max_side)
    dynamic_shapes = {"pixel_values": {0: batch, 2: h, 3: w}, "pixel_mask": {0: batch, 1: h, 2: w}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        program = torch.onnx.export(
            wrapper,
            (pixel_values, pixel_mask),
            dynamo=True,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES + (["masks"] if masks else []),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset_version,
            verbose=False,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.model.metadata_props.update(ExportMetadata.of(mask_model if masks else model).to_props())  # for predict
    atomic_write(path, lambda tmp: program.save(str(tmp)))
    return path


def check_onnx_masks(path: str | Path, model: nn.Module, pixel_values: Tensor, pixel_mask: Tensor) -> float:
    """A mask model's export: the largest absolute difference of the mask logits, onnxruntime vs PyTorch."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (masks,) = session.run(["masks"], {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy()})
    with torch.no_grad():
        _, _, reference = model.eval().decode_with_masks(pixel_values, pixel_mask)
    return float((torch.from_numpy(masks) - reference).abs().max())


def check_onnx(
    path: str | Path, model: DETR, pixel_values: Tensor, pixel_mask: Tensor | None = None
) -> tuple[float, float]:
    """Run the exported model in onnxruntime and ``model`` in PyTorch on the same inputs.

    Returns the largest absolute differences of the logits and of the boxes.
    """
    import onnxruntime

    if pixel_mask is None:
        pixel_mask = torch.zeros(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.bool)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, boxes = session.run(OUTPUT_NAMES, {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy()})
    with torch.no_grad():
        ref_logits, ref_boxes = model.eval().decode(pixel_values, pixel_mask, all_layers=False)
    return (
        float((torch.from_numpy(logits) - ref_logits[-1]).abs().max()),
        float((torch.from_numpy(boxes) - ref_boxes[-1]).abs().max()),
    )


class ExportRejected(RuntimeError):
    """The accuracy gate failed, or could not verify the export (and that was not allowed): nothing was
    written; ``result`` says what it measured."""

    def __init__(self, result: GateResult) -> None:
        if result.passed:  # nothing failed, but nothing was shown either
            problem = "could not be verified, nothing written (allow_unverified / --allow-unverified writes it)"
        else:
            problem = "lost too much accuracy, nothing written"
        super().__init__(f"the {result.precision} export {problem}:\n{result.describe()}")
        self.result = result


def calibration_inputs(
    source: str | Path, preprocessor: ImagePreprocessor, count: int = 200
) -> list[dict[str, np.ndarray]]:
    """Up to ``count`` images of ``source`` (a folder, searched with its subfolders, or one image),
    evenly spread over its sorted files, read as ``preprocessor`` reads them: INT8 calibration inputs."""
    from ..data.coco import DatasetError, read_image
    from ..data.formats import IMAGE_SUFFIXES

    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"no calibration images at {source}: give a folder of images of your data")
    if not files:
        raise ValueError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)}) to calibrate INT8 with")
    step = max(1, len(files) // count)
    inputs = []
    for path in files[::step][:count]:
        try:
            batch = preprocessor(read_image(path, exif=True))
        except DatasetError as err:
            raise ValueError(f"calibration image {path} cannot be read: {err}") from err
        inputs.append({"pixel_values": batch.pixel_values.numpy(), "pixel_mask": batch.mask.numpy()})
    return inputs


def export(
    model: DETR,
    path: str | Path,
    precision: str = "fp32",
    format: str = "onnx",
    calibration_data: str | Path | None = None,
    calibration_images: int = 200,
    keep_float: Sequence[str] | None = None,
    check_data: str | Path | None = None,
    split: str = "val",
    max_ap_drop: float | None = None,
    height: int | None = None,
    width: int | None = None,
    log: Callable[[str], None] = print,
    allow_unverified: bool = False,
    val_fraction: float = 0.1,
) -> tuple[Path, GateResult]:
    """Export ``model`` to ``path`` in ``precision`` (``fp32``, ``fp16``, ``int8``) and ``format``
    (``onnx``: a ``.onnx`` file; ``openvino``: ``path`` ``.xml`` with its ``.bin``), behind the gate.

    INT8 needs ``calibration_data`` (a folder of images like those the model will see). The export
    is checked against ``model`` on ``check_data``'s ``split`` (without a validation split, ``val_fraction`` of its
    images by a hash of their file names; AP drop at most ``max_ap_drop`` AP points,
    default :data:`detr.deploy.gate.MAX_AP_DROP`), else on generated images; when the gate fails,
    :class:`ExportRejected` is raised and nothing is left at ``path``; so too when the data could not verify the
    export (no detection of the model scored over 0.5, or too few images: ``result.unverified`` says which) unless
    ``allow_unverified``. Returns the path and the gate's result.
    """
    from .gate import compare_on_data, compare_on_generated
    from .runtime import load_exported

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if precision == "int8" and calibration_data is None:
        raise ValueError("int8 needs calibration images of your data: --calibration-data DIR (a few hundred images)")
    if precision != "int8" and (calibration_data is not None or keep_float is not None):
        raise ValueError(f"calibration data and modules kept in float apply to int8 only, not {precision}")
    path = Path(path)
    suffix = FORMATS[format]
    if path.suffix.lower() != suffix:
        raise ValueError(f"a {format} export is written to a {suffix} file, not {path.name}")
    model = model.eval()
    side = max(model.preprocessing.short_side or 800, 64)  # never so small that a feature map has one cell
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))  # beside path: same file system
    try:
        fp32 = export_onnx(model, work / "fp32.onnx", height=height or side, width=width or side)
        onnx_file = fp32
        if precision != "fp32":
            import onnx

            metadata = ExportMetadata.of(model, precision)
            onnx_file = work / f"{precision}.onnx"
            if precision == "fp16":
                proto, metadata.float_modules = to_fp16(onnx.load(str(fp32)))
            else:
                inputs = calibration_inputs(calibration_data, model.preprocessing, calibration_images)
                log(f"int8: calibrating on {len(inputs)} images of {calibration_data}")
                metadata.float_modules = to_int8(fp32, onnx_file, inputs, keep_float, log=log)
                proto = onnx.load(str(onnx_file))
            write_onnx_metadata(proto, metadata)
            onnx.save(proto, str(onnx_file))
            if precision == "int8":
                log(int8_outcome(metadata.float_modules, len(module_groups(onnx.load(str(fp32)))), fp32, onnx_file))
        written = [onnx_file]
        if format == "openvino":
            written = to_openvino(onnx_file, work / "model.xml")
        exported = load_exported(written[0])
        if check_data is not None:
            result = compare_on_data(exported, model, check_data, split, max_ap_drop, val_fraction=val_fraction)
        else:
            result = compare_on_generated(exported, model)
        if not result.passed or (result.unverified and not allow_unverified):
            raise ExportRejected(result)
        targets = [path.with_suffix(p.suffix) for p in written]  # model.xml + model.bin
        for source, target in zip(written, targets, strict=True):
            os.replace(source, target)
        return path, result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def int8_outcome(kept: Sequence[str], groups: int, fp32: Path, int8: Path) -> str:
    """One line on what an int8 export quantised: the module groups left in float, both files' sizes, and a
    warning where most of the model stayed in float (a file about as large as fp32, and about as slow)."""
    fp32_mb, int8_mb = fp32.stat().st_size / 2**20, int8.stat().st_size / 2**20
    line = (
        f"int8: {groups - len(kept)} of {groups} module groups quantised, {len(kept)} left in float"
        + (f" ({', '.join(kept)})" if kept else "")
        + f"; {int8_mb:.1f} MiB, fp32 {fp32_mb:.1f} MiB"
    )
    if 2 * len(kept) > groups or int8_mb > 0.6 * fp32_mb:
        line += (
            "\nint8: most of the model is still float, so the file is neither much smaller nor faster: the groups above "
            "lost too much accuracy alone; try more --calibration-images, or --precision fp16"
        )
    return line


def to_openvino(onnx_file: Path, xml: Path) -> list[Path]:
    """Convert an export to OpenVINO IR (``xml`` + ``.bin``), its metadata in ``rt_info["detr"]``."""
    try:
        import openvino
    except ImportError as err:
        raise ImportError('--format openvino needs the openvino package: pip install "detr-pytorch[openvino]"') from err
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    ov_model = openvino.convert_model(str(onnx_file))
    for key, value in props.items():
        if key.startswith(PREFIX):
            ov_model.set_rt_info(value, ["detr", key[len(PREFIX) :]])
    openvino.save_model(ov_model, str(xml), compress_to_fp16=False)  # weights as the ONNX file has them
    return [xml, xml.with_suffix(".bin")]
