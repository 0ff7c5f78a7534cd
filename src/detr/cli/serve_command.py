"""``detr serve``: the model behind an HTTP API (:mod:`detr.serve`), until Ctrl-C."""

from __future__ import annotations

import argparse
import os

from .flags import BF16_HELP, DEVICE_HELP, EXPORTED_HELP, MAX_SIZE_HELP, MODEL_HELP, SIZE_HELP
from .inputs import load_for_inference

HELP = "serve a model over HTTP: predict and explain API, metrics, a page to try it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help=EXPORTED_HELP)
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network; see --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="most images of concurrent requests run together; every pass runs this many (copies fill the rest, so "
        "an image's detections never depend on its neighbours): on a CPU a lone request pays for all of them",
    )
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="longest an image waits for others to batch with")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own copy of the model")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image (width x height)")
    p.add_argument("--allow-urls", action="store_true", help="let requests name image URLs for the server to fetch")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $DETR_API_KEY, else none)")
    p.add_argument("--size", type=int, help=SIZE_HELP)
    p.add_argument("--max-size", type=int, help=MAX_SIZE_HELP)
    p.add_argument("--bf16", action="store_true", help=BF16_HELP)


def run(args: argparse.Namespace) -> int:
    try:
        from ..serve.app import ServeConfig
        from ..serve.server import serve
    except ImportError as err:
        raise SystemExit(
            f'error: detr serve needs the serve extra ({err}): pip install "detr-pytorch[serve]"'
        ) from None
    from ..deploy.runtime import is_exported
    from ..device import resolve_device

    device = resolve_device(args.device)
    model = load_for_inference(args.weights, args.model, device, args.device)
    config = ServeConfig(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        allow_urls=args.allow_urls,
        api_key=args.api_key or os.environ.get("DETR_API_KEY") or None,
        short_side=args.size,
        max_size=args.max_size,
        bf16=args.bf16,
    )
    where = "cpu" if is_exported(args.weights) else str(device)  # exported files run on the CPU here
    serve(model, config, args.host, args.port, args.workers, weights=args.weights, device=where)
    return 0
