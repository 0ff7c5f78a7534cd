"""Deployment: the inference-only copy (:mod:`.inference`), export to ONNX and OpenVINO in fp32, fp16 or
int8 (:mod:`.export`, :mod:`.precision`) with the file's metadata (:mod:`.metadata`), the accuracy
gate (:mod:`.gate`), and exported files run as models (:mod:`.runtime`)."""

from .export import ExportRejected, check_onnx, export, export_onnx
from .inference import InferenceDETR, fold_batch_norms, inference_copy
from .runtime import ExportedDETR, OnnxDETR, OpenVINODETR, load_exported

__all__ = [
    "ExportRejected",
    "ExportedDETR",
    "InferenceDETR",
    "OnnxDETR",
    "OpenVINODETR",
    "check_onnx",
    "export",
    "export_onnx",
    "fold_batch_norms",
    "inference_copy",
    "load_exported",
]
