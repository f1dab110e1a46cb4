"""resnet50.serve against a real uvicorn server on 127.0.0.1 (a free port), with a real HTTP client (httpx)."""

import gzip
import io
import re
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from resnet50 import create_model
from resnet50.cli import main
from resnet50.errors import UserError
from resnet50.infer import EagerBackend, load_model
from resnet50.predict import predict_files
from resnet50.serve import BackgroundServer, ServeConfig
from resnet50.weights import Preprocessing, save

from .helpers import encoded, metric

CLASSES = ["cat", "dog", "bird"]


def _bomb():
    buf = io.BytesIO()
    Image.new("L", (1500, 1000)).save(buf, "PNG")  # 1.5 Mpx > the server's max_pixels, about 2 kB on the wire
    return buf.getvalue()


BOMB = _bomb()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    save(path, create_model("resnet20_cifar", num_classes=3), CLASSES, Preprocessing(36, 32), "test")
    return path, load_model(path)


@pytest.fixture(scope="module")
def server(model):
    cfg = ServeConfig(port=0, max_batch=8, max_wait_ms=20, max_body_mb=1, max_pixels=1_000_000)
    with BackgroundServer(model[1], EagerBackend(model[1].model), cfg) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_binds_loopback_only_by_default(server):
    assert ServeConfig().host == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")


def test_raw_and_multipart_images_match_predict(model, client, tmp_path):
    path, loaded = model
    for fmt in ("PNG", "JPEG", "WEBP"):
        data = encoded(fmt, seed=3)
        (tmp_path / f"x.{fmt.lower()}").write_bytes(data)
        want = predict_files([tmp_path / f"x.{fmt.lower()}"], loaded, EagerBackend(loaded.model), k=3)[0].top
        for r in (client.post("/predict", content=data, headers={"content-type": f"image/{fmt.lower()}"}),
                  client.post("/predict", files={"file": (f"x.{fmt}", data, "application/octet-stream")})):
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            assert [p["label"] for p in got] == [p["label"] for p in want]
            np.testing.assert_allclose([p["probability"] for p in got], [p["probability"] for p in want], atol=1e-5)
            assert r.json()["batch"] >= 1


@pytest.mark.parametrize("body, headers, status, words", [
    (b"definitely not an image", {}, 400, "not a readable image"),
    (encoded("JPEG", (64, 64))[:300], {}, 400, "not a readable image"),
    (b"", {}, 400, "empty body"),
    (b'{"image": "x"}', {"content-type": "application/json"}, 415, "not an image"),
    (b"hello", {"content-type": "text/plain"}, 415, "not an image"),
    (b"x" * (1024 * 1024 + 1), {}, 413, "exceeds the 1048576-byte limit"),
    (BOMB, {}, 413, "decompression bomb"),
    (b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nv\r\n--b--\r\n",
     {"content-type": "multipart/form-data; boundary=b"}, 400, "no file field"),
], ids=["garbage", "truncated", "empty", "json", "text", "oversize", "bomb", "form-without-file"])
def test_malformed_requests_get_4xx_json(client, body, headers, status, words):
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == status and words in r.json()["error"]


def test_oversize_chunked_body_without_length_is_413(client):
    def chunks():  # httpx sends a generator with Transfer-Encoding: chunked, no Content-Length
        for _ in range(20):
            yield b"\0" * 65536
    r = client.post("/predict", content=chunks())
    assert r.status_code == 413 and "exceeds the 1048576-byte limit" in r.json()["error"]


def test_health_and_metrics(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["arch"] == "resnet20_cifar" and h["classes"] == 3
    assert h["input"] == [3, 32, 32] and h["backend"] == "eager" and h["settings"]["max_batch"] == 8
    before = client.get("/metrics").text
    client.post("/predict", content=encoded())
    client.post("/predict", content=b"junk")
    text = client.get("/metrics").text
    def grew(name):
        return metric(text, name) - metric(before, name)
    assert grew('resnet50_requests_total{status="200"}') == 1 and grew('resnet50_requests_total{status="400"}') == 1
    assert grew("resnet50_request_latency_seconds_count") == 2
    assert metric(text, 'resnet50_batch_size_bucket{le="+Inf"}') == metric(text, "resnet50_batch_size_count") > 0
    assert "# TYPE resnet50_request_latency_seconds histogram" in text and "resnet50_requests_in_flight 0" in text


def test_concurrent_load_batches_and_never_5xx(server):
    good, bad = encoded(seed=1), b"\x89PNG\r\n\x1a\nbroken"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        before = c.get("/metrics").text

        def send(i):
            return c.post("/predict", content=bad if i % 10 == 0 else good).status_code
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(send, range(200)))
        after = c.get("/metrics").text
    assert codes.count(200) == 180 and codes.count(400) == 20
    batches = metric(after, "resnet50_batch_size_count") - metric(before, "resnet50_batch_size_count")
    images = metric(after, "resnet50_batch_size_sum") - metric(before, "resnet50_batch_size_sum")
    assert images == 180 and batches < 180  # some inference calls carried more than one image
    assert not re.search(r'status="5\d\d"', after)


class SlowBackend(EagerBackend):
    def __call__(self, x):
        time.sleep(0.3)
        return super().__call__(x)


def test_saturation_gives_503(model):
    cfg = ServeConfig(port=0, max_batch=1, max_wait_ms=0, max_concurrency=2)
    with BackgroundServer(model[1], SlowBackend(model[1].model), cfg) as s, \
            httpx.Client(base_url=s.url, timeout=30) as c:
        with ThreadPoolExecutor(6) as pool:
            rs = list(pool.map(lambda _: c.post("/predict", content=encoded()), range(6)))
        codes = [r.status_code for r in rs]
        assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}
        assert all("busy" in r.json()["error"] and r.headers["retry-after"] == "1" for r in rs if r.status_code == 503)
        assert metric(c.get("/metrics").text, 'resnet50_requests_total{status="503"}') == codes.count(503)


def test_config_and_cli_errors(model, capsys):
    with pytest.raises(UserError, match="--max-batch must be >= 1"):
        ServeConfig(max_batch=0)
    rc = main(["serve", "--weights", str(model[0]), "--backend", "gpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "unknown backend 'gpu'" in err


@pytest.mark.parametrize("encode, coding", [(gzip.compress, "gzip"), (zlib.compress, "deflate"),
                                            (lambda b: zlib.compress(b)[2:-4], "deflate"),  # raw deflate
                                            (lambda b: zlib.compress(gzip.compress(b)), "gzip, deflate")],
                         ids=["gzip", "deflate", "raw-deflate", "gzip-then-deflate"])
def test_compressed_image_bodies_are_decoded(model, client, encode, coding):
    image = encoded(seed=4)
    plain = client.post("/predict", content=image)
    r = client.post("/predict", content=encode(image), headers={"Content-Encoding": coding})
    assert plain.status_code == 200 and r.status_code == 200, r.text
    assert r.json()["predictions"] == plain.json()["predictions"]


@pytest.mark.parametrize("body, coding, status, words", [
    (b"abc", "br", 415, "Content-Encoding 'br' is not supported; send the body uncompressed, gzip or deflate"),
    (b"not gzip at all", "gzip", 400, "the body is not gzip data although Content-Encoding says so"),
    (gzip.compress(b"x" * 100_000)[:-12], "gzip", 400, "the gzip body is truncated"),
    (gzip.compress(b"\0" * (2 * 1024 * 1024)), "gzip", 413, "decompressed (gzip) exceeds the 1048576-byte limit"),
], ids=["unknown", "not-gzip", "truncated", "bomb"])
def test_bad_content_encodings_are_named(client, body, coding, status, words):
    assert len(body) < 1024 * 1024
    r = client.post("/predict", content=body, headers={"Content-Encoding": coding})
    assert r.status_code == status and words in r.json()["error"], r.text


def _stalled_upload(url: str, declared: int = 10_000) -> socket.socket:
    """A client that sends the headers and 100 of ``declared`` body bytes, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode() + b"\0" * 100)
    return s


def _response(sock: socket.socket) -> str:
    """The whole HTTP response on ``sock``: headers, then as many body bytes as Content-Length says (a response may
    arrive in several segments on a loaded machine)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data.decode()
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
        b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_stalled_uploads_hold_no_admission_slot_and_time_out(model):
    # the body timeout is 4 s, so the three predictions (well under it even on a loaded 2-core machine) cannot
    # have waited for the stalled uploads
    cfg = ServeConfig(port=0, max_concurrency=1, body_timeout_s=4.0)
    with BackgroundServer(model[1], EagerBackend(model[1].model), cfg) as s, \
            httpx.Client(base_url=s.url, timeout=30) as c:
        stalled = [_stalled_upload(s.url) for _ in range(3)]
        time.sleep(0.3)
        start = time.monotonic()
        codes = [c.post("/predict", content=encoded()).status_code for _ in range(3)]
        assert codes == [200, 200, 200] and time.monotonic() - start < 4.0  # not 503, not waiting for them
        for sock in stalled:
            answer = _response(sock)
            sock.close()
            assert answer.startswith("HTTP/1.1 408"), answer
            assert "did not arrive within 4 s (100 bytes received; --body-timeout-s)" in answer
        assert metric(c.get("/metrics").text, 'resnet50_requests_total{status="408"}') == 3
        assert metric(c.get("/metrics").text, "resnet50_requests_in_flight") == 0
