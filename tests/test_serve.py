"""detr serve: the real server on a free loopback port, called over HTTP. Every endpoint; the detections
of ``detr predict`` on the same files; the same detections alone and inside a busy batch; each bad input
refused with its 4xx while the server goes on; the API key; the page in a real (headless) browser."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import detr
from detr.cli import main
from detr.processing.preprocess import ImagePreprocessor

from .conftest import TINY_MODEL, calibrate_frozen_bn

for _module in ("fastapi", "uvicorn", "multipart", "prometheus_client", "httpx"):
    pytest.importorskip(_module, reason=f'the serve extra is not installed ({_module}): pip install -e ".[serve]"')

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from detr.serve import ServeConfig, create_app  # noqa: E402
from detr.serve.server import startup_warnings  # noqa: E402

NAMES = ["person", "car", "dog", "cat"]
SIZES = [(120, 90), (90, 120), (100, 100), (120, 90), (160, 100)]  # (width, height); two share a padded size
SCREENSHOTS = Path(os.environ.get("DETR_SCREENSHOT_DIR", "")) if os.environ.get("DETR_SCREENSHOT_DIR") else None


def _picture(width: int, height: int, seed: int) -> Image.Image:
    """Shapes on noise: something for a random model to score differently per image."""
    gen = np.random.default_rng(seed)
    image = Image.fromarray(gen.integers(0, 255, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = gen.integers(0, width - 30), gen.integers(0, height - 30)
        draw.rectangle([x0, y0, x0 + 25, y0 + 25], fill=tuple(int(v) for v in gen.integers(0, 255, 3)))
    return image


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (w, h) in enumerate(SIZES):
        paths.append(folder / f"img{i}.png")
        _picture(w, h, i).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def saved(images, tmp_path_factory) -> Path:
    """A tiny random detr_r18 (batch norms calibrated so that scores vary), saved as a user saves one."""
    torch.manual_seed(0)
    model = detr.detr_r18(num_classes=4, num_queries=8, class_names=NAMES, **TINY_MODEL).eval()
    model.preprocessing = ImagePreprocessor(short_side=64, max_size=96)
    calibrate_frozen_bn(model, model.preprocessing([Image.open(p) for p in images]).pixel_values)
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app):
    """``app`` under uvicorn in a thread on a free loopback port; yields its URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


LIMITS = ServeConfig(max_batch_size=8, max_wait_ms=40, max_upload_mb=0.5, max_pixels=200 * 200)


@pytest.fixture(scope="module")
def app(saved):
    return create_app(detr.load(saved), LIMITS)


@pytest.fixture(scope="module")
def url(app):
    with running(app) as found:
        yield found


def _post_file(url: str, data: bytes, name: str = "x.png", endpoint: str = "/predict", **fields) -> httpx.Response:
    return httpx.post(url + endpoint, files={"image": (name, data, "image/png")}, data=fields, timeout=30)


def _same(a: list[dict], b: list[dict], atol: float = 1e-5) -> None:
    assert [d["class_id"] for d in a] == [d["class_id"] for d in b]
    np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=atol, rtol=0)
    np.testing.assert_allclose([d["box"] for d in a], [d["box"] for d in b], atol=atol * 100, rtol=0)


# ----------------------------------------------------------------------------------- endpoints
def test_health_model_metrics_docs_and_page(url, saved):
    assert httpx.get(url + "/health").json()["status"] == "ok"
    info = httpx.get(url + "/model").json()
    assert [c["name"] for c in info["classes"]] == NAMES and info["model"] == "detr_r18"
    assert info["preprocessing"]["short_side"] == 64 and info["preprocessing"]["max_size"] == 96
    assert info["precision"] == "fp32" and info["library_version"] == detr.__version__ and info["explain"] is True
    assert info["serving"]["max_batch_size"] == 8 and info["serving"]["api_key"] is False
    schema = httpx.get(url + "/openapi.json").json()
    assert {"/predict", "/explain", "/health", "/model", "/metrics"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert httpx.get(url + "/docs").status_code == 200
    page = httpx.get(url + "/")
    script = httpx.get(url + "/static/page.js")
    assert page.status_code == script.status_code == 200 and 'src="static/page.js"' in page.text
    for text in (page.text, script.text):  # offline: nothing fetched from elsewhere
        assert "http://" not in text and "https://" not in text
    _post_file(url, _encoded(_picture(100, 80, 7)))
    metrics = httpx.get(url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in ("detr_requests_total", "detr_errors_total", "detr_request_seconds_bucket", "detr_batch_size_bucket",
                 "detr_queue_length", "detr_images_total"):  # fmt: skip
        assert name in text, name
    assert 'detr_requests_total{endpoint="/predict",status="200"}' in text


@pytest.mark.parametrize("docs", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_elsewhere(url, docs):
    """FastAPI's own /docs and /redoc fetch Swagger UI / ReDoc from a CDN (blank offline): ours come from the app."""
    page = httpx.get(url + docs)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(a.endswith(".js") for a in assets), page.text  # the page's script is among them
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset  # served by this app
        answer = httpx.get(url + asset)
        assert answer.status_code == 200 and len(answer.content) > 1000, asset
    script = httpx.get(url + next(a for a in assets if a.endswith(".js"))).text
    assert ("SwaggerUIBundle" if docs == "/docs" else "Redoc") in script


def test_predict_gives_the_detections_of_detr_predict(url, saved, images, tmp_path):
    assert main(["predict", str(images[0].parent), "--weights", str(saved), "--out", str(tmp_path / "p"),
                 "--threshold", "0.05", "--k", "6", "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    expected = {Path(k).name: v for k, v in json.loads((tmp_path / "p" / "detections.json").read_text()).items()}
    # multipart, several files in one request
    files = [("image", (p.name, p.read_bytes(), "image/png")) for p in images]
    answer = httpx.post(url + "/predict", files=files, data={"threshold": "0.05", "k": "6"}, timeout=30).json()
    assert len(answer["images"]) == len(images)
    assert sum(len(v) for v in expected.values()) >= len(images)  # detections to compare
    for path, found in zip(images, answer["images"], strict=True):
        assert (found["width"], found["height"]) == Image.open(path).size
        _same(found["detections"], expected[path.name])
        assert [d["class_name"] for d in found["detections"]] == [d["class_name"] for d in expected[path.name]]
        assert all(d["category_id"] is None for d in found["detections"])  # the model has no category ids
    # JSON with base64, options as detr predict's flags
    assert main(["predict", str(images[2]), "--weights", str(saved), "--out", str(tmp_path / "q"), "--threshold",
                 "0.0", "--nms", "0.5", "--classes", "dog,cat", "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    (filtered,) = json.loads((tmp_path / "q" / "detections.json").read_text()).values()
    body = {"images": [base64.b64encode(images[2].read_bytes()).decode()], "threshold": 0, "nms": 0.5,
            "classes": ["dog", "cat"]}  # fmt: skip
    (found,) = httpx.post(url + "/predict", json=body, timeout=30).json()["images"]
    assert filtered and {d["class_name"] for d in found["detections"]} <= {"dog", "cat"}
    _same(found["detections"], filtered)


def test_bf16_serves_the_detections_of_detr_predict_bf16(saved, images, tmp_path):
    assert main(["predict", str(images[3]), "--weights", str(saved), "--out", str(tmp_path / "p"), "--bf16",
                 "--threshold", "0.05", "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    (expected,) = json.loads((tmp_path / "p" / "detections.json").read_text()).values()
    with running(create_app(detr.load(saved), bf16=True)) as url:
        assert httpx.get(url + "/model").json()["precision"] == "bf16"
        found = _post_file(url, images[3].read_bytes(), threshold="0.05").json()["images"][0]["detections"]
    assert expected
    _same(found, expected)


def test_the_same_image_alone_and_in_a_busy_batch(app, url, images):
    """Bit for bit: the JSON answers equal, not only close (batched kernels sum otherwise at another batch
    size, and a batch mixing padded and unpadded images runs the masked path for all)."""
    batcher = app.state.batcher
    sizes: list[int] = []  # submitted images per batch
    observe = batcher.on_batch
    batcher.on_batch = lambda n: (sizes.append(n), observe(n))
    try:
        unpadded = [_encoded(_picture(150, 100, 90 + i)) for i in range(4)]  # read as 96 x 64: no padding
        padded = [_encoded(_picture(120, 90, 100 + i)) for i in range(11)]  # read as 85 x 64, padded to 96 x 64
        mine = [images[0].read_bytes(), unpadded[0]]
        alone = [_post_file(url, data, threshold="0").json()["images"][0]["detections"] for data in mine]
        sizes.clear()
        payloads = mine + unpadded[1:] + [p.read_bytes() for p in images[1:]] + padded
        with ThreadPoolExecutor(len(payloads)) as pool:
            answers = list(pool.map(lambda data: _post_file(url, data, threshold="0"), payloads))
    finally:
        batcher.on_batch = observe
    assert all(a.status_code == 200 for a in answers)
    assert max(sizes) > 2, sizes  # they were batched with others
    busy = [a.json()["images"][0]["detections"] for a in answers[: len(mine)]]
    assert all(len(found) == 8 for found in alone)  # threshold 0: every query, near-ties included
    assert busy == alone


def test_explain_gives_each_detections_attention(url, saved, images):
    from detr.explain import image_attention

    answer = _post_file(url, images[1].read_bytes(), endpoint="/explain", threshold="0.05", k="3", png="true")
    assert answer.status_code == 200, answer.text
    found = answer.json()["detections"]
    predicted = _post_file(url, images[1].read_bytes(), threshold="0.05", k="3").json()["images"][0]["detections"]
    _same(found, predicted, atol=1e-4)  # the detections /predict gives
    model = detr.load(saved)
    expected = image_attention(model, Image.open(images[1]).convert("RGB"), 0.05, 3)
    assert len(found) == len(expected.detections) == 3
    for i, det in enumerate(found):
        heat = np.array(det["attention"])
        np.testing.assert_allclose(heat, expected.decoder(i).numpy(), atol=1e-5)
        assert heat.sum() == pytest.approx(1.0, abs=1e-3)  # a distribution over the image's cells
        png = Image.open(io.BytesIO(base64.b64decode(det["attention_png"].split(",", 1)[1])))
        assert png.size == Image.open(images[1]).size
    # a server resizing otherwise than the model (detr serve --size): predict and explain both read it so
    other = ImagePreprocessor(short_side=96, max_size=128)
    with running(create_app(model, short_side=96, max_size=128)) as resized:
        assert httpx.get(resized + "/model").json()["preprocessing"]["short_side"] == 96
        found = _post_file(resized, images[1].read_bytes(), endpoint="/explain", threshold="0.05", k="2").json()
    expected = image_attention(model, Image.open(images[1]).convert("RGB"), 0.05, 2, other)
    heat = np.array(found["detections"][0]["attention"])
    assert heat.shape == tuple(expected.decoder(0).shape) == (4, 3)  # a 90 x 120 image read as 96 x 128: stride 32
    np.testing.assert_allclose(heat, expected.decoder(0).numpy(), atol=1e-5)


def test_a_mask_model_sends_its_masks_as_coco_rle(images):
    from pycocotools import mask as mask_utils

    from detr.models.segmentation import DETRSegmentation

    torch.manual_seed(0)
    detector = detr.detr_r18(num_classes=4, num_queries=5, class_names=NAMES, **TINY_MODEL)
    detector.preprocessing = ImagePreprocessor(short_side=64, max_size=96)
    model = DETRSegmentation(detector).eval()
    with running(create_app(model)) as url:
        assert httpx.get(url + "/model").json()["masks"] is True
        answer = _post_file(url, images[1].read_bytes(), threshold="0", k="3")
    assert answer.status_code == 200, answer.text
    found = answer.json()["images"][0]["detections"]
    expected = model.predict([Image.open(images[1]).convert("RGB")], k=3)[0]
    _same(found, expected, atol=1e-4)
    width, height = Image.open(images[1]).size
    assert any(0 < int(d["mask"].sum()) < width * height for d in expected)  # masks with something to compare
    for det, ours in zip(found, expected, strict=True):
        rle = det["segmentation"]
        assert rle["size"] == [height, width]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})  # (H, W) uint8
        np.testing.assert_array_equal(decoded.astype(bool), ours["mask"].numpy())


# ------------------------------------------------------------------------------------ bad input
def _truncated_jpeg() -> bytes:
    data = _encoded(_picture(120, 90, 3), "JPEG")
    return data[: len(data) // 2]


def _sixteen_bit() -> bytes:
    return _encoded(Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)))


def _cmyk() -> bytes:
    return _encoded(_picture(60, 40, 4).convert("CMYK"), "JPEG")


BAD = {
    "over --max-upload-mb": (lambda u: _post_file(u, os.urandom(600_000)), 413, "too_large"),
    "over --max-upload-mb, streamed without a length": (
        lambda u: httpx.post(u + "/predict", content=iter([b"{" + b" " * 100_000] * 7),
                             headers={"content-type": "application/json"}), 413, "too_large"),  # fmt: skip
    "over --max-pixels": (lambda u: _post_file(u, _encoded(Image.new("RGB", (300, 300)))), 413, "too_many_pixels"),
    "not an image": (lambda u: _post_file(u, b"hello, this is text"), 415, "not_an_image"),
    "truncated image": (lambda u: _post_file(u, _truncated_jpeg(), "x.jpg"), 400, "truncated"),
    "16-bit image": (lambda u: _post_file(u, _sixteen_bit()), 415, "unsupported_mode"),
    "CMYK image": (lambda u: _post_file(u, _cmyk(), "x.jpg"), 415, "unsupported_mode"),
    "empty upload": (lambda u: _post_file(u, b""), 400, "empty"),
    "empty body": (lambda u: httpx.post(u + "/predict", content=b"", headers={"content-type": "application/json"}),
                   400, "empty"),  # fmt: skip
    "no body at all": (lambda u: httpx.post(u + "/predict"), 400, "empty"),
    "bad base64": (lambda u: httpx.post(u + "/predict", json={"images": ["not base64!"]}), 400, "bad_base64"),
    "not JSON": (lambda u: httpx.post(u + "/predict", content=b"{", headers={"content-type": "application/json"}),
                 400, "bad_json"),  # fmt: skip
    "URL without --allow-urls": (lambda u: httpx.post(u + "/predict", json={"urls": ["http://127.0.0.1:9/x.png"]}),
                                 403, "urls_off"),  # fmt: skip
    "unknown class": (lambda u: _post_file(u, _encoded(_picture(50, 50, 5)), classes="zebra"), 400, "bad_classes"),
    "threshold out of range": (lambda u: _post_file(u, _encoded(_picture(50, 50, 5)), threshold="2"), 400,
                               "bad_request"),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_in_one_line_and_the_server_goes_on(url, case):
    send, status, kind = BAD[case]
    answer = send(url)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["kind"] == kind and "\n" not in body["error"] and len(body["error"]) > 10
    good = _post_file(url, _encoded(_picture(80, 60, 11)))
    assert good.status_code == 200 and len(good.json()["images"]) == 1


def test_a_model_error_is_a_500_with_an_id_in_the_log(app, url, caplog):
    def broken(options, batch):
        raise RuntimeError("simulated failure")

    served, run = app.state.served, app.state.served.run
    served.run = broken
    try:
        with caplog.at_level(logging.ERROR, logger="detr.serve"):
            answer = _post_file(url, _encoded(_picture(80, 60, 12)))
    finally:
        served.run = run
    assert answer.status_code == 500
    error_id = answer.json()["id"]
    assert error_id in answer.json()["error"]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
    assert _post_file(url, _encoded(_picture(80, 60, 12))).status_code == 200


# --------------------------------------------------------------------------- key, URLs, command
def test_the_api_key_and_urls(saved, images):
    folder = images[0].parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    app = create_app(detr.load(saved), api_key="s3cret", allow_urls=True)
    try:
        with running(app) as url:
            data = images[0].read_bytes()
            assert _post_file(url, data).status_code == 401
            wrong = httpx.post(url + "/predict", files={"image": ("x.png", data)}, headers={"Authorization": "Bearer"})
            assert wrong.status_code == 401 and wrong.json()["kind"] == "unauthorized"
            assert httpx.get(url + "/model").status_code == 401 and httpx.get(url + "/metrics").status_code == 401
            assert httpx.get(url + "/health").status_code == 200  # probes need no key
            key = {"Authorization": "Bearer s3cret"}
            uploaded = httpx.post(url + "/predict", files={"image": ("x.png", data)}, headers=key, timeout=30)
            assert uploaded.status_code == 200
            link = f"http://127.0.0.1:{files.server_address[1]}/{images[0].name}"
            fetched = httpx.post(url + "/predict", json={"urls": [link]}, headers=key, timeout=30)
            assert fetched.status_code == 200, fetched.text
            assert fetched.json()["images"] == uploaded.json()["images"]
            missing = httpx.post(url + "/predict", json={"urls": [link + ".nothing"]}, headers=key, timeout=30)
            assert missing.status_code == 400 and missing.json()["kind"] == "url_unreachable"
    finally:
        files.shutdown()


def test_binding_beyond_loopback_warns_of_no_authentication():
    from detr.models.segmentation import DETRSegmentation

    assert startup_warnings("127.0.0.1", ServeConfig()) == []
    (warning,) = startup_warnings("0.0.0.0", ServeConfig())
    assert "no authentication" in warning and "--api-key" in warning
    assert all("no authentication" not in w for w in startup_warnings("0.0.0.0", ServeConfig(api_key="k")))
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="bf16 is for PyTorch detection models"):
        create_app(DETRSegmentation(detr.detr_r18(num_classes=2, **TINY_MODEL)), bf16=True)


def test_detr_serve_prints_the_model_and_ctrl_c_lets_requests_finish(saved, images):
    port = _free_port()
    command = [sys.executable, "-m", "detr", "serve", str(saved), "--port", str(port), "--device", "cpu",
               "--max-wait-ms", "1500"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while not any("page:" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stdout.readline())
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}" in banner and "detr_r18" in banner
        assert "person, car, dog, cat" in banner and "short side 64" in banner
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health").status_code == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_post_file, url, images[0].read_bytes())
            time.sleep(0.5)  # the request waits in the batcher (--max-wait-ms 1500)
            process.send_signal(signal.SIGINT)
            answer = pending.result(timeout=30)
        assert answer.status_code == 200 and len(answer.json()["images"]) == 1
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ----------------------------------------------------------------------------------- ONNX, page
@pytest.mark.slow
def test_onnx_weights_serve_the_detections_of_the_pytorch_weights(saved, images, tmp_path):
    """Exporting even the tiny model takes about 30 s: slow."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from detr.deploy.export import export

    path, _ = export(detr.load(saved), tmp_path / "tiny.onnx", log=lambda _: None)
    found = {}
    for name, weights in (("torch", saved), ("onnx", path)):
        with running(create_app(detr.load(weights))) as url:
            files = [("image", (p.name, p.read_bytes(), "image/png")) for p in images]
            found[name] = httpx.post(url + "/predict", files=files, data={"threshold": "0.05"}, timeout=60).json()
            if name == "onnx":
                assert httpx.get(url + "/model").json()["explain"] is False
                refused = _post_file(url, images[0].read_bytes(), endpoint="/explain")
                assert refused.status_code == 400 and refused.json()["kind"] == "explain_unavailable"
    for ours, theirs in zip(found["torch"]["images"], found["onnx"]["images"], strict=True):
        _same(theirs["detections"], ours["detections"], atol=1e-4)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def test_the_page_in_a_browser_shows_the_detections_of_predict(url, images, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium found (Debian: apt-get install chromium): the page's browser test needs one")
    expected = _post_file(url, images[4].read_bytes(), threshold="0.3").json()["images"][0]["detections"]
    assert expected, "pick a threshold that leaves detections to compare"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            outside: list[str] = []  # offline: anything the pages ask of another host is refused and noted

            def loopback_only(route) -> None:
                if route.request.url.startswith(url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", loopback_only)
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('detr_r18')")
            page.set_input_files("#file", str(images[4]))
            page.wait_for_function("document.getElementById('detections').dataset.ready === 'true'")
            page.eval_on_selector("#threshold", "(e) => { e.value = '0.3'; e.dispatchEvent(new Event('input')); }")
            shown = page.eval_on_selector_all(
                "#detections li", "(items) => items.map((i) => [i.dataset.className, +i.dataset.score, "
                "JSON.parse(i.dataset.box)])",
            )
            assert [s[0] for s in shown] == [d["class_name"] for d in expected]
            np.testing.assert_allclose([s[1] for s in shown], [d["score"] for d in expected], atol=1e-6)
            np.testing.assert_allclose([s[2] for s in shown], [d["box"] for d in expected], atol=1e-4)
            page.click("#detections li >> nth=0")  # its attention map
            page.wait_for_function("document.getElementById('attention').naturalWidth > 0")
            size = page.eval_on_selector("#attention", "(e) => [e.naturalWidth, e.naturalHeight]")
            assert tuple(size) == Image.open(images[4]).size
            title = page.text_content("#attention-title")
            assert f"attention of {expected[0]['class_name']} {expected[0]['score']:.2f}" in title, title
            # the page's own COCO RLE decoder (masks of mask models) against pycocotools' encoder
            from pycocotools import mask as mask_utils

            truth = np.zeros((7, 9), dtype=np.uint8)
            truth[1:5, 2:8] = 1
            truth[6, 0] = 1
            rle = mask_utils.encode(np.asfortranarray(truth))
            alpha = page.evaluate(
                "(rle) => Array.from(maskImage(rle, [9, 9, 9]).data).filter((v, i) => i % 4 === 3)",
                {"size": list(rle["size"]), "counts": rle["counts"].decode()},
            )
            np.testing.assert_array_equal(np.array(alpha).reshape(7, 9) > 0, truth.astype(bool))
            shot = (SCREENSHOTS or tmp_path) / "serve_page.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert Image.open(shot).size[0] > 0
            # /docs draws the API's operations from files the app serves (FastAPI's default fetches them from a CDN)
            page.goto(url + "/docs")
            page.wait_for_function("document.querySelectorAll('.opblock').length >= 5")
            drawn = page.eval_on_selector_all(".opblock-summary-path", "(items) => items.map((i) => i.textContent)")
            assert {"/predict", "/explain", "/health"} <= {path.strip() for path in drawn}, drawn
            assert outside == []
        finally:
            browser.close()
