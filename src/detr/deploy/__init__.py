"""Deployment: the inference-only copy (:mod:`.inference`) and ONNX export (:mod:`.export`)."""

from .export import check_onnx, export_onnx
from .inference import InferenceDETR, fold_batch_norms, inference_copy

__all__ = ["InferenceDETR", "check_onnx", "export_onnx", "fold_batch_norms", "inference_copy"]
