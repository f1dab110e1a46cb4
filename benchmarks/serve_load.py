"""Bounded load test of ``resnet50 serve``: 1,000 requests at 8-way concurrency, 10 % malformed, on 127.0.0.1.

    python benchmarks/serve_load.py [--requests 1000] [--concurrency 8] [--arch resnet50] [--backend auto]
                                    [--route predict|v2]

Starts the server as a subprocess on a free loopback port (random-weight model saved to a temporary checkpoint;
the server exports and caches its ONNX file there), waits for /health, sends the requests (JPEG photos-sized
images; every 10th request a malformed body), then prints client-side latency p50/p99, status counts and the
server's batch-size histogram from /metrics, and stops the server. Traffic goes only to 127.0.0.1.
``--route v2`` sends each image as an Open Inference Protocol (KServe v2) infer request instead: one BYTES input with
the binary tensor extension, built by tritonclient (``generate_request_body``), outputs binary.
"""

import argparse
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from resnet50 import create_model
from resnet50.weights import save

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def photo(seed: int) -> bytes:
    """A 500 x 375 JPEG with smooth structure (gradients plus noise): the size of a typical ImageNet photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500]
    base = np.stack([(x * rng.uniform(0.2, 0.6) + y * rng.uniform(0.1, 0.5) + rng.uniform(0, 255)) % 256
                     for _ in range(3)], axis=-1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


MALFORMED = [b"", b"not an image at all", b"\xff\xd8\xff\xe0 truncated jpeg", b"\x89PNG\r\n\x1a\n\x00\x00"]


def v2_request(image: bytes) -> tuple[bytes, dict]:
    """One image as a KServe v2 infer request body (binary tensor extension) and its headers, built by tritonclient."""
    import tritonclient.http as triton

    inp = triton.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=object), binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [inp], outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)])
    return body, {"Inference-Header-Content-Length": str(json_size), "content-type": "application/octet-stream"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--deadline-s", type=float, default=900, help="stop sending after this long, whatever is left")
    ap.add_argument("--route", choices=("predict", "v2"), default="predict",
                    help="POST /predict (raw image bytes), or v2: /v2/models/<arch>/infer (binary BYTES tensor)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="resnet50-load-") as tmp:
        weights = Path(tmp) / f"{args.arch}.safetensors"
        save(weights, create_model(args.arch), None, None, f"random init ({args.arch}) for the load test")
        port = free_port()
        env = {**os.environ, "RESNET50_CACHE": str(Path(tmp) / "cache")}
        server = subprocess.Popen(
            [sys.executable, "-m", "resnet50", "serve", "--weights", str(weights), "--host", HOST, "--port",
             str(port), "--backend", args.backend, "--max-batch", str(args.max_batch), "--max-wait-ms",
             str(args.max_wait_ms)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://{HOST}:{port}"
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                deadline = time.monotonic() + 300
                while True:
                    if server.poll() is not None:
                        print(server.stderr.read().decode()[-2000:], file=sys.stderr)
                        return 1
                    try:
                        health = client.get("/health").json()
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            raise SystemExit("the server did not come up in 300 s")
                        time.sleep(0.5)
                photos = [photo(i) for i in range(16)]
                if args.route == "v2":
                    path = f"/v2/models/{health['arch']}/infer"
                    good = [v2_request(p) for p in photos]
                    bad = [v2_request(b) for b in MALFORMED]
                else:
                    path = "/predict"
                    good = [(p, {"content-type": "image/jpeg"}) for p in photos]
                    bad = [(b, {"content-type": "image/jpeg"}) for b in MALFORMED]
                stop_at = time.monotonic() + args.deadline_s

                def send(i: int):
                    if time.monotonic() > stop_at:
                        return None, 0.0
                    body, headers = bad[i // 10 % len(bad)] if i % 10 == 9 else good[i % len(good)]
                    t = time.perf_counter()
                    try:
                        r = client.post(path, content=body, headers=headers)
                        status = r.status_code
                    except httpx.HTTPError as e:
                        status = type(e).__name__
                    return status, time.perf_counter() - t

                start = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    results = [r for r in pool.map(send, range(args.requests)) if r[0] is not None]
                wall = time.perf_counter() - start
                metrics = client.get("/metrics").text
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()

    statuses: dict = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    ok = np.array([t for s, t in results if s == 200]) * 1e3
    bad = np.array([t for s, t in results if s != 200]) * 1e3
    buckets = dict(re.findall(r'^resnet50_batch_size_bucket\{le="([^"]+)"\} (\d+)', metrics, re.M))
    report = {
        "route": path, "requests_sent": len(results), "concurrency": args.concurrency, "wall_s": round(wall, 2),
        "throughput_req_s": round(len(results) / wall, 1), "statuses": statuses,
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "transport_errors": sum(n for s, n in statuses.items() if not s.isdigit()),
        "latency_ms_ok": {"p50": round(float(np.percentile(ok, 50)), 1), "p99": round(float(np.percentile(ok, 99)), 1)}
        if len(ok) else None,
        "latency_ms_malformed": {"p50": round(float(np.percentile(bad, 50)), 1)} if len(bad) else None,
        "batch_size_cumulative_buckets": {k: int(v) for k, v in buckets.items()},
        "batches": int(re.search(r"^resnet50_batch_size_count (\d+)", metrics, re.M).group(1)),
        "server": {"backend": health["backend"], "arch": health["arch"], "max_batch": args.max_batch,
                   "max_wait_ms": args.max_wait_ms},
        "load_average_1_5_15m": [round(x, 2) for x in os.getloadavg()],  # other jobs sharing the CPU, if any
    }
    print(json.dumps(report, indent=2))
    return 0 if report["server_errors_5xx"] == 0 and report["transport_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
