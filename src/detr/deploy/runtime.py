"""Exported models as models: an ONNX file (onnxruntime) or an OpenVINO IR (openvino) with ``predict``.

:func:`load` takes any file or folder the library writes and returns an object with the same
``predict()`` (and ``decode``, ``class_names``, ``preprocessing``, ``num_classes``, ``task``), so that
``detr predict`` and ``detr eval`` run an exported file exactly as the PyTorch weights: the same
preprocessing (read from the file's metadata), the same post-processing, the same output files. A mask
model's file (``task == "masks"``) predicts masks and panoptic segments as the mask model does
(:class:`~detr.models.segmentation.MaskPredictor`: one post-processing for both).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..models.segmentation import MaskPredictor
from ..processing.checks import check_images
from ..processing.postprocess import predictions
from ..processing.preprocess import ImagePreprocessor, prediction_inputs
from ..processing.tiling import tiled_or_capped
from .metadata import ExportMetadata

ONNX_SUFFIXES = (".onnx",)
OPENVINO_SUFFIXES = (".xml",)


class RuntimeUnsupported(RuntimeError, ValueError):
    """The installed runtime cannot run this file here (a precision it lacks, no GPU provider); a
    ValueError too, so that the command line reports it as bad input, without a traceback."""


class ExportedDETR(MaskPredictor):
    """What the exported DETRs share: metadata, input checks, ``decode`` and ``predict`` as the model's (a mask
    model's file: ``decode_with_masks``, ``predict`` with masks and ``panoptic``, as :class:`DETRSegmentation`'s).

    Subclasses run the graph: ``_run(pixel_values (B, 3, H, W) float32, pixel_mask (B, H, W) bool, names)``
    -> the outputs named, as numpy arrays: ``logits`` (B, Q, K+1), ``boxes`` (B, Q, 4) normalized cxcywh, and
    a mask model's ``masks`` (B, Q, H/4, W/4) mask logits.
    """

    def __init__(self, path: Path, metadata: ExportMetadata) -> None:
        self.path = path
        self.metadata = metadata
        self.num_classes = metadata.num_classes
        self.num_queries = metadata.num_queries
        self.class_names = metadata.class_names
        self.category_ids = metadata.category_ids
        self.preprocessing: ImagePreprocessor = metadata.preprocessor
        self.precision = metadata.precision
        self.task = metadata.task  # "boxes", or "masks": a mask model's file, its masks a third output

    def _run(self, pixel_values: np.ndarray, pixel_mask: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.metadata.model}, {self.precision})"

    # the parts of nn.Module's interface the engine uses (evaluation calls eval() and to())
    def eval(self) -> ExportedDETR:
        return self

    def to(self, device: torch.device | str) -> ExportedDETR:
        if torch.device(device).type != "cpu":
            raise ValueError(f"{type(self).__name__} runs on the CPU here; got device {device}")
        return self

    def _outputs(self, x: Tensor, mask: Tensor | None, names: Sequence[str]) -> list[Tensor]:
        """The graph's outputs ``names`` for x (B, 3, H, W) float normalized images, mask (B, H, W) bool (True
        on padding) or None, as float32 tensors."""
        mask = check_images(x, mask)
        found = self._run(x.detach().float().cpu().contiguous().numpy(), mask.cpu().numpy(), names)
        return [torch.from_numpy(np.asarray(output, np.float32)) for output in found]

    def __call__(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, 3, H, W) float normalized images, mask (B, H, W) bool (True on padding) or None ->
        ``(pred_logits (B, Q, K+1), pred_boxes (B, Q, 4) normalized cxcywh)`` float32, as the model's."""
        logits, boxes = self._outputs(x, mask, ("logits", "boxes"))
        return logits, boxes

    forward = __call__

    def decode_with_masks(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """A mask model's file, as :meth:`~detr.models.segmentation.DETRSegmentation.decode_with_masks`: logits
        (B, Q, K+1), boxes (B, Q, 4) and mask logits (B, Q, H/4, W/4)."""
        if self.task != "masks":
            raise ValueError(
                f"{self.path} is a detection model's export: it has no masks (export a mask model for masks)"
            )
        logits, boxes, masks = self._outputs(x, mask, ("logits", "boxes", "masks"))
        return logits, boxes, masks

    _mask_outputs = decode_with_masks  # what MaskPredictor's predict and panoptic run

    def decode(self, x: Tensor, mask: Tensor | None = None, all_layers: bool = False) -> tuple[Tensor, Tensor]:
        """As :meth:`detr.models.detr.DETR.decode`: ``(logits (1, B, Q, K+1), boxes (1, B, Q, 4))``;
        an exported file has the last decoder layer only."""
        if all_layers:
            raise ValueError("an exported model has the last decoder layer's outputs only: use all_layers=False")
        logits, boxes = self(x, mask)
        return logits[None], boxes[None]  # (1, B, Q, K+1), (1, B, Q, 4)

    @torch.no_grad()
    def predict(
        self,
        x: Any,
        mask: Tensor | None = None,
        k: int = 100,
        score_threshold: float = 0.0,
        image_sizes: Tensor | None = None,
        preprocessor: ImagePreprocessor | None = None,
        nms: float | None = None,
        classes: Sequence[int | str] | None = None,
        tile: int | None = None,
        tile_overlap: float = 0.2,
        tile_full_image: bool = False,
        max_detections: int | None = None,
        mask_threshold: float = 0.5,
    ) -> list[list[dict[str, Any]]]:
        """Detections per image, exactly as :meth:`detr.models.detr.DETR.predict` (same arguments, tiles too);
        a mask model's file as :meth:`detr.models.segmentation.DETRSegmentation.predict`: each detection with
        its ``"mask"`` (``sigmoid > mask_threshold``), no tiles."""
        tiled, k = tiled_or_capped(
            self, x, tile, tile_overlap, tile_full_image, k, score_threshold, preprocessor, nms, classes, max_detections
        )
        if tiled is not None:
            return tiled
        if self.task == "masks":
            return self._mask_detections(
                x, mask, k, score_threshold, image_sizes, preprocessor, nms, classes, mask_threshold
            )
        x, mask, sizes = prediction_inputs(x, mask, image_sizes, preprocessor or self.preprocessing)
        logits, boxes = self(x, mask)
        return predictions(logits, boxes, sizes, self.class_names, k, score_threshold, nms, classes)


class OnnxDETR(ExportedDETR):
    """A DETR exported by :func:`detr.deploy.export.export_onnx`, run by onnxruntime.

    Args:
        path: the ``.onnx`` file.
        device: ``"cpu"``, or ``"cuda"`` for onnxruntime's CUDA provider (``onnxruntime-gpu``).
        threads: intra-op threads (0: onnxruntime's choice, one per core).
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", threads: int = 0) -> None:
        try:
            import onnx
            import onnxruntime
        except ImportError as err:
            raise ImportError(
                'running an ONNX file needs onnx and onnxruntime: pip install "detr-pytorch[export]"'
            ) from err
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as err:
            raise ValueError(f"{path} is not a readable ONNX file ({type(err).__name__}: {err})") from err
        super().__init__(path, ExportMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(path)))
        self.device = torch.device(device)
        available = onnxruntime.get_available_providers()
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise RuntimeUnsupported(
                    f"this onnxruntime ({onnxruntime.__version__}) has no CUDA provider (it has {available}): "
                    "pip install onnxruntime-gpu, or run on the CPU (--device cpu)"
                )
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
        elif self.device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"onnxruntime runs on cpu or cuda, not {self.device}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # e.g. NOT_IMPLEMENTED: an operator in a precision this build lacks
            first = str(err).strip().splitlines()[0][:300]
            raise RuntimeUnsupported(
                f"onnxruntime {onnxruntime.__version__} ({', '.join(p if isinstance(p, str) else p[0] for p in providers)}) "
                f"cannot run {path}, a {self.precision} export: {first}. Export it in another precision "
                "(detr export --precision fp32), or run it where onnxruntime supports it (fp16: the CUDA provider)"
            ) from err

    def to(self, device: torch.device | str) -> OnnxDETR:
        if torch.device(device) != self.device:
            raise ValueError(f"this ONNX session runs on {self.device}: load it again with device={str(device)!r}")
        return self

    def _run(self, pixel_values: np.ndarray, pixel_mask: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        return self.session.run(list(names), {"pixel_values": pixel_values, "pixel_mask": pixel_mask})


class OpenVINODETR(ExportedDETR):
    """A DETR exported with ``detr export --format openvino`` (``model.xml`` + ``model.bin``), run by
    OpenVINO on the CPU (``threads``: 0 for OpenVINO's choice)."""

    def __init__(self, path: str | Path, device: str = "CPU", threads: int = 0) -> None:
        try:
            import openvino
        except ImportError as err:
            raise ImportError('running an OpenVINO model needs openvino: pip install "detr-pytorch[openvino]"') from err
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no OpenVINO model at {path}")
        core = openvino.Core()
        model = core.read_model(str(path))
        props = {}
        if model.has_rt_info("detr"):
            props = {f"detr.{key}": value.astype(str) for key, value in model.get_rt_info()["detr"].items()}
        super().__init__(path, ExportMetadata.from_props(props, str(path)))
        # OpenVINO computes in bf16 by default where the CPU can (AMX, AVX512-BF16): an fp32 export stays fp32
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"} if self.precision == "fp32" else {}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, device, config)

    def _run(self, pixel_values: np.ndarray, pixel_mask: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        out = self.compiled({"pixel_values": pixel_values, "pixel_mask": pixel_mask})
        return [out[self.compiled.output(name)] for name in names]


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` names an exported file (ONNX or OpenVINO IR) rather than PyTorch weights."""
    return Path(path).suffix.lower() in ONNX_SUFFIXES + OPENVINO_SUFFIXES


def load_exported(path: str | Path, device: torch.device | str = "cpu") -> ExportedDETR:
    """An exported file as a model: ``.onnx`` -> :class:`OnnxDETR`, ``.xml`` -> :class:`OpenVINODETR`."""
    suffix = Path(path).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return OnnxDETR(path, device)
    if suffix in OPENVINO_SUFFIXES:
        if torch.device(device).type != "cpu":
            raise ValueError(f"the OpenVINO model runs on the CPU here, not {device}")
        return OpenVINODETR(path)
    raise ValueError(f"{path} is not an exported model (.onnx or OpenVINO .xml)")
