"""An HTTP inference server: Starlette on uvicorn, with dynamic batching on one inference thread.

    POST /predict   the image as the raw body (any Content-Type but form/JSON/text), or a multipart form with one
                    file field. 200: {"predictions": [{"rank", "index", "label", "probability"}, ...], "batch": n}
    GET  /health    {"status": "ok", model, backend, settings}
    GET  /metrics   Prometheus text format: requests by status, request latency histogram, batch-size histogram,
                    requests in flight (/predict and v2 infer requests together)
    /v2/...         the Open Inference Protocol (KServe v2 REST, Triton's client speaks it): GET /v2, /v2/health/live,
                    /v2/health/ready, /v2/models/<name>[/versions/1], .../ready; POST .../infer with JSON tensors or
                    the binary tensor extension. Inputs, outputs and encodings: ``resnet50.kserve_v2``.

Flow of a request: the body is read whole, before the request takes an admission slot, within ``body_timeout_s``
(408 past it: a slow or stalled upload holds no slot that other clients need) and a byte limit (413 past
``max_body_mb``, checked on Content-Length first, again while streaming and again after decompression); a body sent
with ``Content-Encoding: gzip`` or ``deflate`` (tritonclient's ``request_compression_algorithm``) is decompressed,
any other encoding is a 415 naming it. Past ``max_concurrency`` requests in flight the request is answered 503 at
once. The image header is read and an image of more than ``max_pixels`` refused (413, before
its pixels are decoded: decompression bombs); decoding and preprocessing run on a small thread pool; the tensor
joins the batching queue. The inference thread takes the first waiting image, then whatever else arrives within
``max_wait_ms``, up to ``max_batch`` images, runs them as one batch and resolves each request's future. The event
loop never runs decoding or inference.
Malformed input is a 4xx with a JSON body {"error": ...}: 400 not an image / truncated / empty / bad form, 413 too
large, 415 a JSON, text or urlencoded body; a malformed v2 request is a 400 (404: no such model or version) with
the protocol's body {"error": ...}. A v2 request of N images puts N images into the same batching queue as N
/predict requests would.

Who may call it: it binds to 127.0.0.1 unless told otherwise. Any other address needs a bearer token (``token``,
from ``--token-file``: every route but ``/v2/health/*`` then wants ``Authorization: Bearer <token>``, compared in
constant time, and answers 401 with a JSON error otherwise; a token in the query string is refused, as URLs end up
in logs) or an explicit ``no_auth`` (TorchServe turned token authorisation on by default after CVE-2023-43654).
``tls_cert`` / ``tls_key`` serve HTTPS (uvicorn's ``ssl_certfile`` / ``ssl_keyfile``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import ipaddress
import json
import queue
import socket
import ssl
import threading
import time
import zlib
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from .backends import Backend
from .data.decode import MAX_PIXELS, ImageDecodeError, ImageTooLarge
from .data.transforms import eval_transform, preprocess
from .errors import UserError, require
from .infer import label_rows
from .kserve_v2 import HTTPError, ModelInfo, encode_response, parse_request, server_metadata
from .weights import Checkpoint

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_concurrency: int = 64
    max_body_mb: float = 20.0
    max_pixels: int = MAX_PIXELS  # the data package's one limit (64 Mi): more is refused before decoding
    topk: int = 5
    decode_threads: int = 2
    model_name: str = ""  # the v2 model name; default: the checkpoint's architecture
    max_request_images: int = 64  # images in one v2 request (each becomes a C x H x W float32 array in memory)
    body_timeout_s: float = 30.0  # the whole body within this, or 408 (a stalled upload frees its connection)
    token: str = field(default="", repr=False)  # bearer token; "" = no authentication
    no_auth: bool = False  # serve a non-loopback address without a token, on purpose
    tls_cert: str = ""
    tls_key: str = ""

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_concurrency", "max_pixels", "topk", "decode_threads", "max_request_images"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.max_body_mb <= 0 or self.body_timeout_s <= 0:
            raise UserError("--max-wait-ms must be >= 0, --max-body-mb and --body-timeout-s > 0")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be 0..65535, got {self.port}")
        if self.token and self.no_auth:
            raise UserError("--token-file and --no-auth contradict each other; pass one")
        if not is_loopback(self.host) and not self.token and not self.no_auth:
            raise UserError(f"--host {self.host} serves anyone who can reach the port: pass --token-file FILE "
                            "(clients send 'Authorization: Bearer <token>') or, on a trusted network, --no-auth")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UserError("HTTPS needs both --tls-cert and --tls-key (the certificate and its private key)")
        for name in ("tls_cert", "tls_key"):
            if getattr(self, name) and not Path(getattr(self, name)).is_file():
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: no such file")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def settings(self) -> dict:
        """The settings /health reports: all but the token."""
        return {k: v for k, v in asdict(self).items() if k != "token"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def read_token(path: str) -> str:
    """The bearer token in ``path`` (``--token-file``): its text without surrounding whitespace."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--token-file {path}: no such file; write a token into it, e.g. "
                        "python -c 'import secrets; print(secrets.token_urlsafe(32))' > token.txt")
    try:
        token = p.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--token-file {path}: cannot read it as text ({e})") from None
    if not token or any(c.isspace() for c in token) or not token.isprintable():
        raise UserError(f"--token-file {path}: holds {'no token' if not token else 'spaces or control characters'}; "
                        "write one printable token without spaces")
    return token


# --- metrics ----------------------------------------------------------------------------------------------------

class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum, self.count = 0.0, 0

    def observe(self, v: float) -> None:
        i = next((i for i, b in enumerate(self.buckets) if v <= b), len(self.buckets))
        self.counts[i] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, cum = [], 0
        for b, c in zip(self.buckets + (float("inf"),), self.counts):
            cum += c
            le = "+Inf" if b == float("inf") else f"{b:g}"
            out.append(f'{name}_bucket{{le="{le}"}} {cum}')
        return out + [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


class Metrics:
    """Counters and histograms, shared by the event loop and the inference thread (hence the lock)."""

    def __init__(self, max_batch: int) -> None:
        self.lock = threading.Lock()
        self.requests: dict[int, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch = Histogram(tuple(sorted({2 ** i for i in range(max_batch.bit_length())} | {max_batch})))
        self.in_flight = 0

    def request(self, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            self.latency.observe(seconds)

    def batch_size(self, n: int) -> None:
        with self.lock:
            self.batch.observe(n)

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP resnet50_requests_total Prediction requests answered, by HTTP status.",
                     "# TYPE resnet50_requests_total counter"]
            lines += [f'resnet50_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
            lines += ["# HELP resnet50_request_latency_seconds Time from request to response (/predict, v2 infer).",
                      "# TYPE resnet50_request_latency_seconds histogram"]
            lines += self.latency.lines("resnet50_request_latency_seconds")
            lines += ["# HELP resnet50_batch_size Images per inference call (dynamic batching).",
                      "# TYPE resnet50_batch_size histogram"]
            lines += self.batch.lines("resnet50_batch_size")
            lines += ["# HELP resnet50_requests_in_flight /predict and v2 infer requests being handled now.",
                      "# TYPE resnet50_requests_in_flight gauge", f"resnet50_requests_in_flight {self.in_flight}"]
        return "\n".join(lines) + "\n"


# --- dynamic batching -------------------------------------------------------------------------------------------

class Batcher:
    """One inference thread: take the first queued image, add those that arrive within ``max_wait`` up to
    ``max_batch``, run the batch, resolve each future with (logits row, batch size)."""

    def __init__(self, backend: Backend, max_batch: int, max_wait_s: float, metrics: Metrics) -> None:
        self.backend, self.max_batch, self.max_wait_s, self.metrics = backend, max_batch, max_wait_s, metrics
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="resnet50-inference", daemon=True)
        self.thread.start()

    def submit(self, x: np.ndarray) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.put((x, fut))
        return fut

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            items, stop = [first], False
            deadline = time.monotonic() + self.max_wait_s
            while len(items) < self.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
            self._run(items)
            if stop:
                return

    def _run(self, items: list) -> None:
        try:
            logits = self.backend(np.stack([x for x, _ in items]))
        except Exception as e:  # a backend failure fails these requests (500), never the thread
            for _, fut in items:
                fut.set_exception(e)
            return
        self.metrics.batch_size(len(items))
        for row, (_, fut) in zip(logits, items):
            fut.set_result((row, len(items)))


# --- the application --------------------------------------------------------------------------------------------

CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def _read_body(request, limit: int, timeout_s: float) -> bytes:
    """The whole body, decoded by its Content-Encoding: 408 when it takes longer than ``timeout_s``, 413 past
    ``limit`` bytes (sent or decompressed), 415 for an encoding other than identity, gzip and deflate."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise HTTPError(413, f"body of {int(declared)} bytes exceeds the {limit}-byte limit (--max-body-mb)")
    codings = [c.strip().lower() for c in request.headers.get("content-encoding", "").split(",") if c.strip()]
    for c in codings:
        if c != "identity" and c not in CONTENT_ENCODINGS:
            raise HTTPError(415, f"Content-Encoding {c!r} is not supported; send the body uncompressed, gzip or "
                                 "deflate")
    chunks, total = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise HTTPError(413, f"body exceeds the {limit}-byte limit (--max-body-mb)")
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPError(408, f"the request body did not arrive within {timeout_s:g} s ({total} bytes received; "
                             "--body-timeout-s)") from None
    except ClientDisconnect:
        raise HTTPError(400, f"the client disconnected after {total} bytes of the body") from None
    body = b"".join(chunks)
    for c in reversed(codings):  # the last encoding applied is the first to undo
        if c != "identity":
            body = _decompress(body, c, limit)
    return body


def _decompress(body: bytes, coding: str, limit: int) -> bytes:
    """``body`` decoded from ``coding`` (gzip; deflate: the zlib format, or raw deflate as some clients send it),
    at most ``limit`` bytes out (a small compressed body can expand a thousandfold)."""
    for wbits in (CONTENT_ENCODINGS[coding],) + ((-zlib.MAX_WBITS,) if coding == "deflate" else ()):
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as e:
            error = e
            continue
        if len(out) > limit:
            raise HTTPError(413, f"the body decompressed ({coding}) exceeds the {limit}-byte limit (--max-body-mb)")
        if not d.eof or d.unused_data:
            raise HTTPError(400, f"the {coding} body is truncated or has bytes after its end "
                                 f"(Content-Encoding: {coding})")
        return out
    raise HTTPError(400, f"the body is not {coding} data although Content-Encoding says so ({error})")


async def _image_bytes(request, body: bytes, limit: int) -> bytes:
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}
        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=16, max_part_size=limit)
        except Exception as e:  # starlette raises MultiPartException / HTTPException for malformed forms
            raise HTTPError(400, f"malformed multipart form: {getattr(e, 'detail', None) or e}") from None
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise HTTPError(400, "the multipart form has no file field; send the image as a file (e.g. -F file=@x.jpg)")
        return await files[0].read()
    if ctype in ("application/json", "application/x-www-form-urlencoded") or ctype.startswith("text/"):
        raise HTTPError(415, f"Content-Type {ctype} is not an image; send raw image bytes or a multipart form")
    return body


def _json(content: dict, status: int = 200, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(content, status_code=status, headers=headers)


class Server:
    """One loaded model behind the routes: its metrics, batcher, decode pool and v2 model info, one method per
    route. The decode pool and the batching thread start and stop with the application (``lifespan``)."""

    def __init__(self, loaded: Checkpoint, backend: Backend, cfg: ServeConfig) -> None:
        self.loaded, self.backend, self.cfg = loaded, backend, cfg
        self.metrics = Metrics(cfg.max_batch)
        self.names = loaded.class_names()
        self.transform = eval_transform(loaded.preprocessing, loaded.in_chans)
        self.body_limit = int(cfg.max_body_mb * 1024 * 1024)
        self.info = ModelInfo.of(loaded, f"resnet50_{backend.name}", cfg.model_name)
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.batcher: Batcher | None = None

    @asynccontextmanager
    async def lifespan(self, app):
        self.pool = concurrent.futures.ThreadPoolExecutor(self.cfg.decode_threads, "resnet50-decode")
        self.batcher = Batcher(self.backend, self.cfg.max_batch, self.cfg.max_wait_ms / 1e3, self.metrics)
        try:
            yield
        finally:
            self.batcher.close()
            self.pool.shutdown(wait=False, cancel_futures=True)

    def routes(self) -> list:
        from starlette.routing import Route

        v2 = [Route("/v2", self.v2_server), Route("/v2/health/live", self.v2_live),
              Route("/v2/health/ready", self.v2_ready)]
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            v2 += [Route(base, self.v2_metadata), Route(base + "/ready", self.v2_model_ready),
                   Route(base + "/infer", self.v2_infer, methods=["POST"])]
        return [Route("/predict", self.predict, methods=["POST"]), Route("/health", self.health),
                Route("/metrics", self.prometheus), *v2]

    # --- the image to a tensor, and each request's accounting -------------------------------------------------

    def prepare(self, data: bytes) -> np.ndarray:
        """Encoded image bytes -> the model's input (on the decode pool): 400 unreadable, 413 too many pixels."""
        if not data:
            raise HTTPError(400, "empty body; send the image bytes")
        max_pixels = self.cfg.max_pixels
        try:
            return preprocess(data, self.loaded, self.transform, max_pixels=max_pixels, name="request body")
        except ImageTooLarge as e:  # refused from the header, before any pixel is decoded
            raise HTTPError(413, f"image of {e.pixels} pixels exceeds --max-pixels {max_pixels} "
                                 "(decompression bomb guard)") from None
        except ImageDecodeError as e:
            raise HTTPError(400, f"not a readable image: {e.reason}") from None

    def prepare_nth(self, i: int, count: int, data: bytes) -> np.ndarray:
        """:meth:`prepare` for image ``i`` of a v2 request of ``count``, its errors naming it."""
        try:
            return self.prepare(data)
        except HTTPError as e:
            raise HTTPError(e.status, f"image {i} of {count}: {e.message}") from None

    async def counted(self, handle, request, check=None):
        """``check(request)`` (the route's own 404s), the body read whole (``_read_body``) before admission so a
        slow upload holds no slot, admission (at most --max-concurrency requests in flight, else 503 with
        Retry-After), one JSON error body per failure (the protocol's {"error": ...} on both routes), and the
        request counted in /metrics."""
        start = time.perf_counter()
        status, admitted = 500, False
        try:
            if check is not None:
                check(request)
            body = await _read_body(request, self.body_limit, self.cfg.body_timeout_s)
            if self.metrics.in_flight >= self.cfg.max_concurrency:
                status = 503
                return _json({"error": f"server busy: {self.cfg.max_concurrency} requests in flight; retry"},
                             503, {"Retry-After": "1"})
            self.metrics.in_flight += 1
            admitted = True
            response = await handle(request, body)
            status = response.status_code
            return response
        except HTTPError as e:
            status = e.status
            return _json({"error": e.message}, e.status)
        except Exception as e:  # a bug or a backend failure: still JSON, still counted
            return _json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)
        finally:
            if admitted:
                self.metrics.in_flight -= 1
            self.metrics.request(status, time.perf_counter() - start)

    # --- /predict, /health, /metrics --------------------------------------------------------------------------

    async def predict(self, request):
        return await self.counted(self._predict, request)

    async def _predict(self, request, body: bytes):
        data = await _image_bytes(request, body, self.body_limit)
        x = await asyncio.get_running_loop().run_in_executor(self.pool, self.prepare, data)
        row, batch = await asyncio.wrap_future(self.batcher.submit(x))
        return _json({"predictions": label_rows(row[None, :], self.cfg.topk, self.names)[0], "batch": batch})

    async def health(self, request):
        loaded = self.loaded
        return _json({"status": "ok", "arch": loaded.arch, "classes": loaded.num_classes,
                      "backend": self.backend.name, "input": [loaded.in_chans, loaded.size, loaded.size],
                      "settings": self.cfg.settings()})

    async def prometheus(self, request):
        from starlette.responses import PlainTextResponse

        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    # --- the Open Inference Protocol (KServe v2) --------------------------------------------------------------

    def check_model(self, request) -> None:
        """404 unless the path names this model (and version 1, if a version)."""
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != self.info.name:
            raise HTTPError(404, f"unknown model {name!r}; this server serves {self.info.name!r}")
        if version is not None and version != "1":
            raise HTTPError(404, f"model {name!r} has no version {version!r}; it has version 1")

    async def v2_infer(self, request):
        return await self.counted(self._v2_infer, request, check=self.check_model)

    async def _v2_infer(self, request, body: bytes):
        from starlette.responses import Response

        req = parse_request(body, request.headers.get("inference-header-content-length"), self.info,
                            self.cfg.max_request_images)
        if req.images is not None:
            loop = asyncio.get_running_loop()
            xs = await asyncio.gather(*(loop.run_in_executor(self.pool, self.prepare_nth, i, req.count, data)
                                        for i, data in enumerate(req.images)))
        else:
            xs = list(req.tensor)
        rows = await asyncio.gather(*(asyncio.wrap_future(self.batcher.submit(x)) for x in xs))
        content, headers = encode_response(req, np.stack([row for row, _ in rows]), self.info)
        return Response(content, headers=headers)

    async def v2_server(self, request):
        return _json(server_metadata())

    async def v2_live(self, request):
        return _json({"live": True})

    async def v2_ready(self, request):
        ready = self.batcher is not None
        return _json({"ready": ready}, 200 if ready else 400)

    async def v2_metadata(self, request):
        try:
            self.check_model(request)
        except HTTPError as e:
            return _json({"error": e.message}, e.status)
        return _json(self.info.metadata())

    async def v2_model_ready(self, request):
        try:
            self.check_model(request)
        except HTTPError as e:
            return _json({"error": e.message}, e.status)
        return await self.v2_ready(request)


async def _http_error(request, exc):
    """Unknown paths and methods: the same JSON error body as every other failure."""
    return _json({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code)


def create_app(loaded: Checkpoint, backend: Backend, cfg: ServeConfig):
    """The Starlette application over one :class:`Server` (the batching thread starts and stops with it)."""
    require("starlette", "resnet50 serve")
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException

    server = Server(loaded, backend, cfg)
    app = Starlette(routes=server.routes(), lifespan=server.lifespan, exception_handlers={HTTPException: _http_error})
    app.state.metrics = server.metrics
    return BearerAuth(app, cfg.token) if cfg.token else app


# --- who may call -----------------------------------------------------------------------------------------------

OPEN_PATHS = ("/v2/health/",)  # liveness and readiness probes need no credential (they reveal nothing)
CREDENTIAL_PARAMS = {"token", "access_token", "api_key", "apikey", "key", "auth", "authorization", "bearer"}


class BearerAuth:
    """ASGI middleware: every HTTP request but ``OPEN_PATHS`` needs ``Authorization: Bearer <token>`` (compared
    with ``hmac.compare_digest``, constant time); otherwise 401 with ``{"error": ...}`` and ``WWW-Authenticate``.
    A credential in the query string is refused even beside a right header: URLs are written to access logs."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token.encode()

    def refusal(self, scope) -> str | None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATHS):
            return None
        query = [k.lower() for k, _ in parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                                 keep_blank_values=True)]
        if CREDENTIAL_PARAMS & set(query):
            return ("a credential in the URL's query string is refused (URLs are logged); send the header "
                    "'Authorization: Bearer <token>' instead")
        given = dict(scope["headers"]).get(b"authorization")
        if given is None:
            return "authentication required: send the header 'Authorization: Bearer <token>' (--token-file)"
        scheme, _, credential = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.token):
            return "wrong credential: send the header 'Authorization: Bearer <token>' with the --token-file token"
        return None

    async def __call__(self, scope, receive, send) -> None:
        message = self.refusal(scope)
        if message is None:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="resnet50"')]})
        await send({"type": "http.response.body", "body": body})


def _uvicorn_config(app, cfg: ServeConfig, log_level: str):
    uvicorn = require("uvicorn", "resnet50 serve")
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level, access_log=False,
                            lifespan="on", timeout_keep_alive=5, ssl_certfile=cfg.tls_cert or None,
                            ssl_keyfile=cfg.tls_key or None)
    try:
        config.load()  # the TLS files are read here: a wrong one is the user's mistake, not a traceback
    except (ssl.SSLError, OSError) as e:
        raise UserError(f"cannot use --tls-cert {cfg.tls_cert} / --tls-key {cfg.tls_key}: {e}; give a PEM "
                        "certificate and its unencrypted PEM private key") from None
    return config


def require_server() -> None:
    """The server's optional dependencies (the ``serve`` extra), checked before anything is loaded."""
    require("starlette", "resnet50 serve")
    require("uvicorn", "resnet50 serve")


def serve(loaded: Checkpoint, backend: Backend, cfg: ServeConfig, log_level: str = "info") -> None:
    """Run the server in the foreground until interrupted."""
    require_server()
    import uvicorn

    uvicorn.Server(_uvicorn_config(create_app(loaded, backend, cfg), cfg, log_level)).run()


class BackgroundServer:
    """The server on a thread, for tests and load scripts: ``with BackgroundServer(loaded, backend, cfg) as s:`` then
    ``s.url``. It binds its own socket first (port 0 picks a free one, no race) and stops on exit."""

    def __init__(self, loaded: Checkpoint, backend: Backend, cfg: ServeConfig, log_level: str = "warning") -> None:
        require_server()
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((cfg.host, cfg.port))
        self.port = self.sock.getsockname()[1]
        self.url = f"{cfg.scheme}://{cfg.host}:{self.port}"
        self.app = create_app(loaded, backend, cfg)
        self.server = uvicorn.Server(_uvicorn_config(self.app, cfg, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
