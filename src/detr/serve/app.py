"""The HTTP API of ``detr serve``: :func:`create_app` makes an ASGI app of a model (FastAPI).

Endpoints: ``POST /predict`` (detections in the original pixels), ``POST /explain`` (each detection's
decoder attention), ``GET /health``, ``GET /model``, ``GET /metrics`` (Prometheus), ``GET /`` (a page
to try the model in a browser), ``/docs`` and ``/redoc`` (OpenAPI, no CDN). Images come as multipart
uploads, JSON base64, or URLs when ``allow_urls``; refusals are 4xx with ``{"error": one line, "kind": ...}``.
Concurrent requests' images are batched (:mod:`detr.serve.batching`). The app holds no state between requests
besides the model and its counters: run N replicas behind a load balancer to scale out.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Hashable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..deploy.metadata import ExportMetadata
from ..processing.interop import mask_to_rle
from ..processing.postprocess import class_ids
from ..processing.preprocess import Batch, ImagePreprocessor
from .batching import DynamicBatcher
from .metrics import ServeMetrics
from .uploads import BadInput, decode_base64, decode_image

log = logging.getLogger("detr.serve")

ENDPOINTS = ("/predict", "/explain", "/health", "/model", "/metrics", "/")
PROTECTED = ("/predict", "/explain", "/model", "/metrics")  # the health probe and the page stay open
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches and what it accepts (``detr serve``'s flags)."""

    max_batch_size: int = 8  # images in one forward pass
    max_wait_ms: float = 10.0  # longest an image waits for others to join its batch
    max_upload_mb: float = 20.0  # largest request body
    max_pixels: int = 40_000_000  # largest image (width x height), checked before it is decoded
    max_images: int = 32  # images in one request
    allow_urls: bool = False  # fetch images from URLs given in JSON ("urls")
    url_timeout_s: float = 10.0
    api_key: str | None = None  # when set, /predict /explain /model /metrics need "Authorization: Bearer KEY"
    short_side: int | None = None  # resize (default: the model's)
    max_size: int | None = None
    bf16: bool = False  # detection models: backbone and encoder under bf16 autocast (detr predict --bf16)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_pixels", "max_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_upload_mb", "url_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty: give a secret, or None for no authentication")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


# ------------------------------------------------------------------ the answers' schema (for /docs)
class Detection(BaseModel):
    box: list[float] = Field(description="x0, y0, x1, y1 in the original image's pixels")
    score: float
    class_id: int = Field(description="the model's class index")
    class_name: str | None = None
    category_id: int | None = Field(None, description="the dataset's category id of the class (COCO results)")
    segmentation: dict[str, Any] | None = Field(None, description="mask models: the mask as COCO compressed RLE")


class ImageDetections(BaseModel):
    width: int
    height: int
    detections: list[Detection]


class PredictAnswer(BaseModel):
    images: list[ImageDetections]
    seconds: float


class Refusal(BaseModel):
    error: str = Field(description="one line: what is wrong and what to send")
    kind: str = Field(description="e.g. empty, not_an_image, truncated, too_large, too_many_pixels, unauthorized")
    id: str | None = Field(None, description="server errors: the id the server's log shows with the traceback")


_IMAGES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "threshold": {"type": "number"},
                        "k": {"type": "integer"},
                        "nms": {"type": "number"},
                        "classes": {"type": "string", "description": "comma-separated names or ids"},
                    },
                    "required": ["image"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "description": "base64"}},
                        "urls": {"type": "array", "items": {"type": "string"}, "description": "with --allow-urls"},
                        "threshold": {"type": "number"},
                        "k": {"type": "integer"},
                        "nms": {"type": "number"},
                        "classes": {"type": "array", "items": {"type": "string"}},
                    },
                }
            },
        },
    }
}
_REFUSALS = {code: {"model": Refusal} for code in (400, 401, 413, 415, 500)}


# ------------------------------------------------------------------------------------ the model
class ServedModel:
    """The model behind the app: its batched ``run`` and what ``/model`` says of it.

    ``model``: what :func:`detr.load` gives (a DETR, a mask model, or an exported file's model).
    """

    def __init__(self, model: Any, preprocessor: ImagePreprocessor, bf16: bool = False) -> None:
        self.model = model
        self.preprocessor = preprocessor
        self.exported = not isinstance(model, torch.nn.Module)
        self.masks = getattr(model, "task", "boxes") == "masks"  # a mask model, or a mask model's exported file
        if bf16 and (self.exported or self.masks):
            raise ValueError(
                "bf16 is for PyTorch detection models: an exported file has its own precision (detr export "
                "--precision fp16), a mask model predicts in float32"
            )
        # what detr predict runs: the inference copy for detection models, mask and exported models as they are
        dtype = torch.bfloat16 if bf16 else torch.float32
        self.fast = model if self.exported or self.masks else model.optimize_for_inference(dtype=dtype)
        self.metadata = model.metadata if self.exported else ExportMetadata.of(model, "bf16" if bf16 else "fp32")
        self.category_ids = self.metadata.category_ids
        self.detector = getattr(model, "detr", model)  # a mask model's detector: its attention is explained
        self._explain_lock = threading.Lock()

    @property
    def device(self) -> str:
        return "cpu" if self.exported else str(next(self.model.parameters()).device)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.metadata.model,
            "kind": type(self.model).__name__,
            "masks": self.masks,
            "num_classes": self.metadata.num_classes,
            "num_queries": self.metadata.num_queries,
            "classes": self.metadata.classes,
            "preprocessing": self.preprocessor.to_dict(),
            "precision": self.metadata.precision,
            "device": self.device,
            "library_version": __version__,
            "explain": not self.exported,
        }

    def run(self, options: Hashable, batch: Batch) -> list[list[dict[str, Any]]]:
        """The detections of a batch's images, JSON-ready (masks as COCO RLE, category ids added)."""
        found = self.fast.predict(batch, **dict(options))  # type: ignore[arg-type]
        return [[self.json_detection(d) for d in dets] for dets in found]

    def json_detection(self, d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k != "mask"}
        out["category_id"] = self.category_ids[d["class_id"]] if self.category_ids is not None else None
        if "mask" in d:
            out["segmentation"] = mask_to_rle(d["mask"])
        return out

    def explain(self, image: Any, threshold: float, k: int, layer: int, head: int | None, png: bool) -> list[dict]:
        """Each detection (as ``/predict`` gives it) with its decoder attention over the image's feature
        cells (``attention``: rows of floats summing to 1) and with ``png``, ``detr explain``'s overlay."""
        from ..explain import heat_overlay, image_attention

        if self.exported:
            raise BadInput(
                "explain needs PyTorch weights (an exported file keeps no attention maps): serve the saved model",
                kind="explain_unavailable",
            )
        with self._explain_lock:  # the recording switches the model's attention layers: one at a time
            found = image_attention(self.detector, image, threshold, k, self.preprocessor)
        out = []
        for i, det in enumerate(found.detections):
            heat = found.decoder(i, layer, head).float().cpu()
            item = self.json_detection(det) | {"attention": [[round(v, 6) for v in row] for row in heat.tolist()]}
            if png:
                buffer = io.BytesIO()
                heat_overlay(image, heat).save(buffer, format="PNG")
                item["attention_png"] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            out.append(item)
        return out


# ---------------------------------------------------------------------------- request reading
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _refusal(status: int, message: str, kind: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": _one_line(message), "kind": kind, **extra}, status_code=status)


def _number(values: dict[str, Any], name: str, kind: type, default: Any, low: float, high: float | None) -> Any:
    value = values.get(name, default)
    if value is None or value == "":
        return default
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None
    if value < low or (high is not None and value > high):
        raise BadInput(f"{name} must be in [{low}, {high if high is not None else 'inf'}], got {value}")
    return value


def _options(values: dict[str, Any], served: ServedModel, threshold: float = 0.5, k: int = 100) -> dict[str, Any]:
    """``predict``'s options from a request's fields, checked: threshold, k, nms, classes."""
    classes = values.get("classes")
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c.strip()]
    if classes:
        classes = [int(c) if isinstance(c, int) or str(c).strip().isdigit() else str(c).strip() for c in classes]
        try:
            class_ids(classes, served.metadata.class_names, served.metadata.num_classes)
        except ValueError as err:
            raise BadInput(f"classes: {err}", kind="bad_classes") from None
    return {
        "k": _number(values, "k", int, k, 1, None),
        "score_threshold": _number(values, "threshold", float, threshold, 0.0, 1.0),
        "nms": _number(values, "nms", float, None, 0.0, 1.0),
        "classes": tuple(classes) if classes else None,
    }


def _fetch(url: str, config: ServeConfig) -> bytes:
    if not url.startswith(("http://", "https://")):
        raise BadInput(f"URL {url!r} is not http(s)", kind="bad_url")
    try:
        with urllib.request.urlopen(url, timeout=config.url_timeout_s) as answer:  # http(s) only: checked above
            data = answer.read(config.max_upload_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise BadInput(f"could not fetch {url}: {err}", kind="url_unreachable") from None
    if len(data) > config.max_upload_bytes:
        raise BadInput(
            f"{url} is over the server's --max-upload-mb {config.max_upload_mb:g}", status=413, kind="too_large"
        )
    return data


async def _read_images(request: Request, config: ServeConfig) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """The request's images (a name for errors, the file's bytes) and its other fields."""
    content_type = request.headers.get("content-type", "")
    files: list[tuple[str, bytes]] = []
    fields: dict[str, Any] = dict(request.query_params)
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=config.max_images, max_fields=100)
        except Exception as err:  # noqa: BLE001 (the multipart parser's own refusals: too many files, malformed body)
            raise BadInput(f"cannot read the multipart body: {err}", kind="bad_multipart") from None
        for key, value in form.multi_items():
            if hasattr(value, "read"):  # an upload
                files.append((f"{key} {value.filename or ''}".strip(), await value.read()))
            else:
                fields[key] = value
        if not files:
            raise BadInput("the form holds no file: upload the image as the field 'image'", kind="empty")
    elif content_type.startswith("application/json"):
        body = await request.body()
        if not body:
            raise BadInput("the body is empty: send JSON with 'images' (base64) or a multipart upload", kind="empty")
        try:
            values = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadInput(f"the body is not valid JSON: {err}", kind="bad_json") from None
        if not isinstance(values, dict):
            raise BadInput("the JSON body must be an object with 'images' (base64 strings)", kind="bad_json")
        images = values.pop("images", None)
        image = values.pop("image", None)
        urls = values.pop("urls", None) or []
        images = ([image] if image is not None else []) + (images or [])
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise BadInput("'images' must be a list of base64 strings", kind="bad_json")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise BadInput("'urls' must be a list of strings", kind="bad_json")
        files = [(f"images[{i}]", decode_base64(text, f"images[{i}]")) for i, text in enumerate(images)]
        if urls:
            if not config.allow_urls:
                raise BadInput("this server fetches no URLs (start it with --allow-urls): send the image itself",
                               status=403, kind="urls_off")  # fmt: skip
            if len(files) + len(urls) > config.max_images:
                raise BadInput(f"over {config.max_images} images in one request", status=413, kind="too_many_images")
            files += [(url, await run_in_threadpool(_fetch, url, config)) for url in urls]
        fields.update(values)
        if not files:
            raise BadInput("no image in the request: give 'images' (base64)" + (" or 'urls'" if config.allow_urls
                           else ""), kind="empty")  # fmt: skip
    else:
        body = await request.body()
        if not body:
            raise BadInput("the body is empty: upload an image (multipart field 'image') or send JSON", kind="empty")
        raise BadInput(
            f"unsupported content type {content_type or '(none)'}: send multipart/form-data or application/json",
            status=415,
            kind="bad_content_type",
        )
    if len(files) > config.max_images:
        raise BadInput(f"{len(files)} images in one request, over {config.max_images}", status=413,
                       kind="too_many_images")  # fmt: skip
    return files, fields


# ----------------------------------------------------------------------------- middleware
class _BodyLimit:
    """Refuses a body over ``limit`` bytes: at once when Content-Length says so, else once that much
    arrived (the body is read here, up to the limit, and handed on whole)."""

    def __init__(self, app: Any, limit: int, on_refusal: Any) -> None:
        self.app, self.limit, self.on_refusal = app, limit, on_refusal

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        chunks, seen, more = [], 0, declared <= self.limit
        while more:
            event = await receive()
            if event["type"] != "http.request":  # the client went away
                return
            chunks.append(event.get("body", b""))
            seen += len(chunks[-1])
            more = event.get("more_body", False) and seen <= self.limit
        if max(seen, declared) > self.limit:
            self.on_refusal("too_large")
            response = _refusal(
                413,
                f"the request is over the server's --max-upload-mb {self.limit / 1024 / 1024:g} "
                f"({max(seen, declared)} bytes{' or more' if seen > declared else ''})",
                "too_large",
            )
            return await response(scope, receive, send)
        body = b"".join(chunks)
        given = False

        async def replay() -> dict:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


# ---------------------------------------------------------------------------------- the app
def create_app(model: Any, config: ServeConfig | None = None, **settings: Any) -> FastAPI:
    """The ASGI app serving ``model`` (anything :func:`detr.load` returns: a DETR, a mask model, an
    exported ONNX / OpenVINO model) with ``config`` (or :class:`ServeConfig`'s fields as keywords).

    Mount it in a service, or run it under any ASGI server (``uvicorn.run(app)``); ``detr serve`` does that.
    """
    if config is None:
        config = ServeConfig(**settings)
    elif settings:
        raise ValueError(f"give config or settings, not both (got {sorted(settings)})")
    preprocessor = model.preprocessing.with_sizes(config.short_side, config.max_size)
    served = ServedModel(model, preprocessor, config.bf16)
    batcher = DynamicBatcher(
        lambda options, batch: served.run(options, batch), config.max_batch_size, config.max_wait_ms
    )
    metrics = ServeMetrics(lambda: batcher.queue_length)
    batcher.on_batch = metrics.batch_size.observe

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(batcher.close)  # what is queued still runs: requests in flight get answers

    # /docs and /redoc as FastAPI draws them, their scripts and styles served from the fastapi-offline
    # package (under /static-offline-docs) instead of a CDN: the docs work offline, as the page at / does
    app = FastAPIOffline(
        title="detr serve",
        version=__version__,
        description=f"DETR object detection: {served.metadata.model}, {served.metadata.num_classes} classes",
        lifespan=lifespan,
    )
    app.state.served = served
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.config = config

    def refused(err: BadInput) -> JSONResponse:
        metrics.errors.labels(err.kind).inc()
        return _refusal(err.status, str(err), err.kind)

    def failed(err: BaseException, what: str) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.error("%s failed (error id %s)", what, error_id, exc_info=err)
        metrics.errors.labels("model_error").inc()
        return _refusal(500, f"{what} failed: {type(err).__name__} (error id {error_id}, in the server's log)",
                        "model_error", id=error_id)  # fmt: skip

    async def prepared(name: str, data: bytes) -> tuple[Any, Batch]:
        image = await run_in_threadpool(decode_image, data, config.max_pixels, name)
        return image, await run_in_threadpool(preprocessor, image)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        if config.api_key is not None and request.url.path in PROTECTED:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
                metrics.errors.labels("unauthorized").inc()
                response: Response = _refusal(
                    401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'", "unauthorized"
                )
                response.headers["WWW-Authenticate"] = "Bearer"
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.get("/health", summary="liveness: 200 while the server runs")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "queue_length": batcher.queue_length}

    @app.get("/model", summary="the model: classes, preprocessing, precision, library version")
    async def model_info() -> dict[str, Any]:
        return served.describe() | {"serving": asdict(config) | {"api_key": config.api_key is not None}}

    @app.get("/metrics", summary="Prometheus text format", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post(
        "/predict",
        summary="detect objects in one or more images",
        description="Multipart upload (field 'image', repeated for more) or JSON with base64 'images' "
        "('urls' with --allow-urls). Options (form fields, JSON keys or query): threshold (default 0.5), "
        "k (default 100), nms (IoU), classes. Boxes are in the original image's pixels.",
        openapi_extra=_IMAGES_BODY,
        responses={200: {"model": PredictAnswer}, **_REFUSALS},
    )
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            files, fields = await _read_images(request, config)
            options = _options(fields, served)
            inputs = [await prepared(name, data) for name, data in files]
        except BadInput as err:
            return refused(err)
        key = tuple(sorted(options.items()))
        try:
            found = await asyncio.gather(*(batcher.predict(key, batch) for _, batch in inputs))
        except Exception as err:  # noqa: BLE001 (the model's error: a 500 with an id, the server goes on)
            return failed(err, "predict")
        metrics.images.inc(len(inputs))
        images = [
            {"width": image.width, "height": image.height, "detections": dets}
            for (image, _), dets in zip(inputs, found, strict=True)
        ]
        return JSONResponse({"images": images, "seconds": round(time.perf_counter() - started, 4)})

    @app.post(
        "/explain",
        summary="each detection's attention map (decoder cross-attention, as detr explain draws it)",
        description="The same inputs as /predict (one image). Options: threshold (default 0.5), k (default 8), "
        "layer (-1), head (default: the mean over heads), png (true: also detr explain's overlay as a PNG "
        "data URL). 'attention' is the map over the image's feature cells (rows top to bottom, sums to 1).",
        openapi_extra=_IMAGES_BODY,
        responses=_REFUSALS,
    )
    async def explain(request: Request) -> Response:
        try:
            files, fields = await _read_images(request, config)
            if len(files) != 1:
                raise BadInput(f"explain takes one image, got {len(files)}", kind="too_many_images")
            options = _options(fields, served, threshold=0.5, k=8)
            layer = _number(fields, "layer", int, -1, -64, 64)
            head = _number(fields, "head", int, None, 0, 64)
            png = str(fields.get("png", "false")).lower() in ("1", "true", "yes")
            image, _ = await prepared(*files[0])
        except BadInput as err:
            return refused(err)
        try:
            found = await run_in_threadpool(
                served.explain, image, options["score_threshold"], options["k"], layer, head, png
            )
        except BadInput as err:
            return refused(err)
        except Exception as err:  # noqa: BLE001
            return failed(err, "explain")
        return JSONResponse({"width": image.width, "height": image.height, "detections": found})

    static = resources.files("detr.serve") / "static"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_middleware(
        _BodyLimit, limit=config.max_upload_bytes, on_refusal=lambda kind: metrics.errors.labels(kind).inc()
    )
    return app
