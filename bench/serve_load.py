"""Load test of ``detr serve`` on loopback: a fixed number of requests, then it stops by itself.

Starts ``detr serve`` in a child process on a free 127.0.0.1 port (the model: ``--weights``, or a
random one of ``--model`` saved to a temporary folder; speed does not depend on the weights), then
sends ``--requests`` single-image requests from 1, 4 and 16 concurrent clients (httpx). For each:
images a second, p50 / p99 latency, the batch sizes the server ran (requests' images per pass, from
its /metrics; every pass runs ``--max-batch-size`` images, copies filling the rest, so a lone client
pays a whole batch's pass), failed requests (must be 0) and the server's resident memory before and
after. Then the 16-client run again against a server started with ``--max-batch-size 1`` (one request
at a time): batching must give more images a second. Prints a Markdown table; ``--out`` also writes
the figures as JSON.

    .venv/bin/python bench/serve_load.py --model detr_r18 --size 256 --image-size 320 240   # 2000 requests a row
    .venv/bin/python bench/serve_load.py --model detr_r18 --size 128 --image-size 160 120 --requests 20  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pictures(count: int, width: int, height: int) -> list[bytes]:
    """JPEGs of shapes on noise, all of one size (so that they can share batches)."""
    gen = np.random.default_rng(0)
    out = []
    for _ in range(count):
        image = Image.fromarray(gen.integers(0, 255, (height, width, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = int(gen.integers(0, width - 60)), int(gen.integers(0, height - 60))
            draw.ellipse([x, y, x + 50, y + 50], fill=tuple(int(v) for v in gen.integers(0, 255, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def batch_histogram(metrics: str) -> dict[str, float]:
    """The server's batch-size histogram: cumulative bucket counts, sum and count."""
    found = {}
    for name, value in re.findall(r"^detr_batch_size_(bucket\{le=\"[^\"]+\"\}|sum|count) (\S+)$", metrics, re.M):
        found[name] = float(value)
    return found


def batch_summary(before: dict[str, float], after: dict[str, float]) -> str:
    """Batches run between two /metrics readings: how many, mean size, and how many of each size bucket."""
    batches = after.get("count", 0) - before.get("count", 0)
    if not batches:
        return "none"
    mean = (after["sum"] - before.get("sum", 0)) / batches
    buckets = sorted(
        ((float(k[len('bucket{le="') : -2]), after[k] - before.get(k, 0)) for k in after if k.startswith("bucket")),
        key=lambda kv: kv[0],
    )
    parts, below = [], 0.0
    for le, cumulative in buckets:
        if cumulative - below > 0 and le != float("inf"):
            parts.append(f"<={le:g}: {int(cumulative - below)}")
        below = cumulative
    return f"{int(batches)} batches, mean {mean:.2f} ({', '.join(parts)})"


async def load(url: str, images: list[bytes], clients: int, requests: int, threshold: float) -> dict:
    """``requests`` POST /predict from ``clients`` concurrent clients; latencies and failures."""
    latencies: list[float] = []
    failures: list[str] = []
    sent = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests:
            index = sent
            sent += 1
            data = images[index % len(images)]
            started = time.perf_counter()
            try:
                answer = await http.post(
                    url + "/predict", files={"image": ("x.jpg", data, "image/jpeg")}, data={"threshold": str(threshold)}
                )
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code}: {answer.text[:200]}")
                    continue
            except httpx.HTTPError as err:
                failures.append(repr(err))
                continue
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": requests,
        "seconds": round(seconds, 2),
        "images_per_s": round(len(latencies) / seconds, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "failed": len(failures),
        "first_failures": failures[:3],
    }


class Server:
    """``detr serve`` in a child process, on loopback only."""

    def __init__(self, weights: str, max_batch_size: int, max_wait_ms: float, device: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "detr", "serve", weights, "--host", "127.0.0.1", "--port", str(self.port),
                   "--device", device, "--max-batch-size", str(max_batch_size),
                   "--max-wait-ms", str(max_wait_ms)]  # fmt: skip
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise SystemExit(f"detr serve did not start:\n{self.log.read()}")
            time.sleep(0.2)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def stop(self) -> None:
        self.process.send_signal(2)  # Ctrl-C: a clean stop
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_phase(server: Server, images: list[bytes], clients: int, args: argparse.Namespace, label: str) -> dict:
    before, rss_before = batch_histogram(server.metrics()), rss_mb(server.process.pid)
    row = asyncio.run(load(server.url, images, clients, args.requests, args.threshold))
    after, rss_after = batch_histogram(server.metrics()), rss_mb(server.process.pid)
    row.update(server=label, batches=batch_summary(before, after), rss_mb=(round(rss_before), round(rss_after)))
    print(
        f"| {label} | {clients} | {row['requests']} | {row['images_per_s']} | {row['p50_ms']} | {row['p99_ms']} | "
        f"{row['batches']} | {row['failed']} | {row['rss_mb'][0]} -> {row['rss_mb'][1]} |",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="what detr serve serves (default: a random --model saved for the run)")
    parser.add_argument("--model", default="detr_r50", help="factory of the random model when no --weights")
    parser.add_argument("--size", type=int, default=480, help="the random model's short side (and max side x 1.5)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--requests", type=int, default=2000, help="requests per row")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the figures here (JSON)")
    args = parser.parse_args()

    import torch

    import detr
    from detr.processing.preprocess import ImagePreprocessor

    with tempfile.TemporaryDirectory() as folder:
        weights = args.weights
        if weights is None:
            torch.manual_seed(0)
            model = detr.create_model(args.model, num_classes=91, pretrained_backbone=False)
            model.preprocessing = ImagePreprocessor(short_side=args.size, max_size=args.size * 3 // 2)
            weights = str(model.save_pretrained(Path(folder) / "model"))
        images = pictures(16, *args.image_size)
        cpuinfo = Path("/proc/cpuinfo")
        lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
        cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.machine())
        print(
            f"{time.strftime('%Y-%m-%d')}, machine: {cpu}, {os.cpu_count()} cores; torch "
            f"{torch.__version__}; model {args.weights or args.model + ' (random)'}; images "
            f"{args.image_size[0]}x{args.image_size[1]}; {args.requests} requests a row; "
            f"--max-wait-ms {args.max_wait_ms:g}\n"
        )
        print("| server | clients | requests | images/s | p50 ms | p99 ms | batches run | failed | server MiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        rows = []
        server = Server(weights, args.max_batch_size, args.max_wait_ms, args.device)
        try:
            asyncio.run(load(server.url, images, 1, 3, args.threshold))  # warm-up
            for clients in args.clients:
                rows.append(run_phase(server, images, clients, args, f"batched (<= {args.max_batch_size})"))
        finally:
            server.stop()
        one = Server(weights, 1, 0, args.device)
        try:
            asyncio.run(load(one.url, images, 1, 3, args.threshold))
            rows.append(run_phase(one, images, max(args.clients), args, "one at a time"))
        finally:
            one.stop()
    batched = next(r for r in rows if r["clients"] == max(args.clients) and r["server"].startswith("batched"))
    speedup = batched["images_per_s"] / rows[-1]["images_per_s"]
    failed = sum(r["failed"] for r in rows)
    print(f"\nwith {max(args.clients)} clients, batching gives {speedup:.2f}x the images a second of one at a time; "
          f"{failed} failed requests")  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "speedup": speedup}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
