"""Smaller, faster ONNX files: half precision and 8-bit integer (static) quantisation.

Both rewrite a float32 file written by :func:`detr.deploy.export.export_onnx`, whose nodes still
name the module they come from (``model.backbone...``, ``model.transformer.encoder...``): the
policy is stated in modules, as a user reads the model, not in node names.

- **FP16** (:func:`to_fp16`): the backbone, the input projection and the transformer's layers run
  in half precision, where nearly all the FLOPs are. The operators whose float16 result can overflow
  or lose what matters stay float32 (:data:`FP32_OPS`: normalisation statistics, softmax, exp/log,
  the position encoding's cumulative sums and sines); so do the heads, the box arithmetic and
  any discrete choice (two-stage's top-k), whose rounding would land on the outputs directly.
- **INT8** (:func:`to_int8`): onnxruntime's static QDQ quantisation of the convolutions and matrix
  products, weights per channel, calibrated on the user's images. Each module group is first
  quantised alone on a few calibration images; the groups whose outputs then move more than a
  tolerance (:data:`INT8_TOLERANCE`) are left in float. The accuracy gate
  (:mod:`detr.deploy.gate`) then measures the AP of the result.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FP16_GROUPS = ("backbone", "input_proj", "transformer.encoder", "transformer.decoder")
FP32_OPS = (
    "LayerNormalization", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Softmax", "Exp", "Log",
    "CumSum", "Sin", "Cos", "TopK", "Range",
)  # fmt: skip
INT8_OPS = ("Conv", "MatMul", "Gemm")
# a group is left in float when quantising it alone moves the confident queries' scores or boxes by more
INT8_TOLERANCE = {"score": 0.02, "box": 0.005}  # mean |score diff|, mean |box diff| (fraction of the image)
CONFIDENT = 0.3  # queries whose float32 best-class probability reaches this count in the tolerance

Inputs = dict[str, np.ndarray]  # {"pixel_values": (1, 3, H, W) float32, "pixel_mask": (1, H, W) bool}


def module_group(node: Any) -> str:
    """The module group of an exported node: ``"backbone"``, ``"transformer.encoder"``, ``"box_head"``
    ... or ``""`` for the glue between modules (read from the exporter's ``namespace`` metadata)."""
    namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
    scopes = namespace.split("/")
    if len(scopes) < 2 or not scopes[1].startswith("model."):
        return ""
    parts = scopes[1].split(":")[0].split(".")[1:]  # "model.transformer.encoder.layers.0" -> transformer, encoder ...
    return ".".join(parts[:2]) if parts[0] == "transformer" else parts[0]


def nodes_by_group(model_proto: Any) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for node in model_proto.graph.node:
        groups[module_group(node)].append(node.name)
    return dict(groups)


def to_fp16(model_proto: Any) -> tuple[Any, list[str]]:
    """A copy of a float32 export computing :data:`FP16_GROUPS` in float16 (inputs and outputs stay
    float32); returns it and the module groups left in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    groups = nodes_by_group(model_proto)
    if not any(groups.get(g) for g in FP16_GROUPS):
        raise ValueError("the ONNX graph names no modules (was it written by detr.deploy.export_onnx?)")
    blocked = [name for group, names in groups.items() if group not in FP16_GROUPS for name in names]
    half = convert_float_to_float16(
        model_proto, keep_io_types=True, node_block_list=blocked, op_block_list=list(FP32_OPS), disable_shape_infer=True
    )
    return half, sorted(g for g in groups if g and g not in FP16_GROUPS)


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of inputs."""

    def __init__(self, inputs: Sequence[Inputs]) -> None:
        self.inputs = iter(inputs)

    def get_next(self) -> Inputs | None:
        return next(self.inputs, None)


def output_error(
    reference: Sequence[tuple[np.ndarray, np.ndarray]], other: Sequence[tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """Mean |score diff| and mean |box diff| (normalized cxcywh) over the queries the reference is
    confident about (best-class probability >= :data:`CONFIDENT`; all queries of an image without any)."""
    scores, boxes = [], []
    for (ref_logits, ref_boxes), (logits, out_boxes) in zip(reference, other, strict=True):
        ref_prob, prob = _probabilities(ref_logits), _probabilities(logits)
        best = ref_prob[..., :-1].argmax(-1)  # (B, Q) the reference's class of each query
        ref_score = np.take_along_axis(ref_prob, best[..., None], -1)[..., 0]
        score = np.take_along_axis(prob, best[..., None], -1)[..., 0]
        keep = ref_score >= CONFIDENT
        if not keep.any():
            keep = np.ones_like(keep)
        scores.append(np.abs(ref_score - score)[keep])
        boxes.append(np.abs(ref_boxes - out_boxes)[keep].ravel())
    return {"score": float(np.concatenate(scores).mean()), "box": float(np.concatenate(boxes).mean())}


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Root-logger warnings off for a while, unless the user asked for them (``--verbose``: INFO)."""
    root = logging.getLogger()
    level = root.level
    if level > logging.INFO:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def module_groups(proto: Any) -> dict[str, list[str]]:
    """The module groups of an ONNX graph that int8 may quantise (those holding :data:`INT8_OPS`), each with its
    nodes' names; the glue outside any module (box arithmetic) stays float and is left out."""
    groups = defaultdict(list)
    for node in proto.graph.node:
        if node.op_type in INT8_OPS:
            groups[module_group(node)].append(node.name)
    groups.pop("", None)
    return dict(groups)


def to_int8(
    source: Path,
    target: Path,
    calibration: Sequence[Inputs],
    keep_float: Iterable[str] | None = None,
    probe_images: int = 16,
    tolerance: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Quantise the float32 export ``source`` into ``target`` (QDQ, int8 weights per channel, uint8
    activations) calibrated on ``calibration``; returns the module groups left in float.

    ``keep_float`` names groups to leave in float without measuring; otherwise every group holding
    convolutions or matrix products is quantised alone first and measured on ``probe_images`` of the
    calibration images (:func:`output_error` against ``tolerance``, default :data:`INT8_TOLERANCE`).
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("INT8 calibration needs images: none were given")
    tolerance = tolerance or INT8_TOLERANCE
    quantizable = module_groups(onnx.load(str(source)))
    if not quantizable:
        raise ValueError("the ONNX graph names no modules (was it written by detr.deploy.export_onnx?)")

    def quantize(nodes: list[str], inputs: Sequence[Inputs], out: Path) -> None:
        with _quiet_root_logger():  # onnxruntime advises pre-processing, whose shape inference fails here
            quantize_static(
                str(source), str(out), _Reader(inputs), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OPS),
                nodes_to_quantize=nodes, extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )  # fmt: skip

    def outputs(path: Path, inputs: Sequence[Inputs]) -> list[tuple[np.ndarray, np.ndarray]]:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [tuple(session.run(["logits", "boxes"], x)) for x in inputs]

    if keep_float is None:
        probe = list(calibration[:probe_images])
        reference = outputs(source, probe)
        keep_float = []
        with tempfile.TemporaryDirectory(prefix="detr-int8-") as tmp:
            for group, nodes in sorted(quantizable.items()):
                trial = Path(tmp) / f"{group}.onnx"
                quantize(nodes, probe, trial)
                error = output_error(reference, outputs(trial, probe))
                lost = error["score"] > tolerance["score"] or error["box"] > tolerance["box"]
                log(
                    f"  int8 {group:<20} alone: score error {error['score']:.4f}, box error {error['box']:.4f}"
                    f" -> {'left in float' if lost else 'quantised'}"
                )
                if lost:
                    keep_float.append(group)
    keep_float = sorted(set(keep_float))
    unknown = set(keep_float) - set(quantizable)
    if unknown:
        raise ValueError(f"no module group {sorted(unknown)} to keep in float; groups: {sorted(quantizable)}")
    nodes = [name for group, names in quantizable.items() if group not in keep_float for name in names]
    if not nodes:  # (an empty list would mean "every node" to onnxruntime)
        raise ValueError("every module group lost too much accuracy in int8: export in fp16 or fp32 instead")
    quantize(nodes, calibration, target)
    return keep_float
