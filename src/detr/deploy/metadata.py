"""What an exported file needs to be used like the model: class names, preprocessing, precision, task.

It travels inside the file: ONNX ``metadata_props`` (``detr.*`` keys, JSON values, readable in Netron
or with ``onnx.load(path).metadata_props``) and OpenVINO ``rt_info`` under ``detr``. A file without
them was not exported by this library and is refused with :class:`ForeignModelError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..processing.preprocess import ImagePreprocessor

if TYPE_CHECKING:
    from ..models.detr import DETR

FORMAT_VERSION = 1
PREFIX = "detr."
PRECISIONS = ("fp32", "fp16", "int8")
TASKS = ("boxes", "masks")  # what the graph gives: logits and boxes; a mask model's also masks (its third output)


class ForeignModelError(ValueError):
    """An exported file that this library did not write (it lacks the ``detr.*`` metadata)."""


@dataclass
class ExportMetadata:
    """Everything ``predict`` needs besides the graph.

    ``classes`` lists ``{"id": class id (the logits' index), "name", "category_id"}`` (name and
    category id None when the model has none); ``preprocessing`` is
    :meth:`~detr.processing.preprocess.ImagePreprocessor.to_dict` (resize rule and normalisation).
    """

    model: str  # the factory the model was built with ("detr_r50"), or its class name
    num_classes: int
    num_queries: int
    classes: list[dict[str, Any]]
    preprocessing: dict[str, Any]
    precision: str = "fp32"
    float_modules: list[str] = field(default_factory=list)  # parts left in float32 (int8, fp16)
    task: str = "boxes"  # "masks": a mask model's file (files written before this field: boxes)
    library_version: str = ""
    format_version: int = FORMAT_VERSION

    @classmethod
    def of(cls, model: DETR, precision: str = "fp32") -> ExportMetadata:
        from .. import __version__

        names = model.class_names or [None] * model.num_classes
        ids = model.category_ids or [None] * model.num_classes
        factory = getattr(model, "factory_spec", None)
        return cls(
            model=factory["model"] if factory else type(model).__name__,
            num_classes=model.num_classes,
            num_queries=model.num_queries,
            classes=[{"id": i, "name": n, "category_id": c} for i, (n, c) in enumerate(zip(names, ids, strict=True))],
            preprocessing=model.preprocessing.to_dict(),
            precision=precision,
            task=model.task,
            library_version=__version__,
        )

    @property
    def class_names(self) -> list[str] | None:
        names = [c["name"] for c in self.classes]
        return None if any(n is None for n in names) else names

    @property
    def category_ids(self) -> list[int] | None:
        ids = [c["category_id"] for c in self.classes]
        return None if any(i is None for i in ids) else ids

    @property
    def preprocessor(self) -> ImagePreprocessor:
        return ImagePreprocessor.from_dict(self.preprocessing)

    def to_props(self) -> dict[str, str]:
        """``{"detr.<field>": JSON}``: the string pairs ONNX and OpenVINO files hold."""
        return {PREFIX + key: json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ExportMetadata:
        """Read :meth:`to_props`' pairs back; ``source`` names the file in errors."""
        ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        if not ours:
            raise ForeignModelError(
                f"{source} was not exported by detr (it has no detr.* metadata, so its class names, "
                "preprocessing and output layout are unknown): export the model with `detr export --weights W`"
            )
        try:
            values = {key: json.loads(text) for key, text in ours.items()}
            version = values.get("format_version")
            if version != FORMAT_VERSION:
                raise ForeignModelError(
                    f"{source} has detr metadata version {version}; this detr (0.x) reads version {FORMAT_VERSION}: "
                    "export the model again with this version"
                )
            metadata = cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})
        except (json.JSONDecodeError, TypeError) as err:
            raise ForeignModelError(f"{source} has unreadable detr metadata ({err}): export the model again") from err
        if (
            metadata.precision not in PRECISIONS
            or metadata.task not in TASKS
            or len(metadata.classes) != metadata.num_classes
        ):
            raise ForeignModelError(f"{source} has inconsistent detr metadata: export the model again")
        return metadata


def write_onnx_metadata(model_proto: Any, metadata: ExportMetadata) -> None:
    """Set ``metadata``'s pairs on an ``onnx.ModelProto``, in place (replacing earlier ``detr.*`` ones)."""
    kept = [(p.key, p.value) for p in model_proto.metadata_props if not p.key.startswith(PREFIX)]
    del model_proto.metadata_props[:]
    for key, value in [*kept, *metadata.to_props().items()]:
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
