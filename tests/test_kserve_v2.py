"""The Open Inference Protocol (KServe v2) routes of resnet50.serve, driven by Triton's own client (tritonclient[http])
against a real uvicorn server on 127.0.0.1 (a free port), JSON and binary tensors both."""

import base64
import json
import re
import struct
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from resnet50 import create_model
from resnet50.data.decode import decode_image
from resnet50.data.transforms import eval_transform
from resnet50.infer import EagerBackend, load_model, softmax
from resnet50.serve import BackgroundServer, ServeConfig
from resnet50.weights import Preprocessing, save

from .helpers import encoded, metric

CLASSES = ["cat", "dog", "bird"]
NAME = "resnet20_cifar"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    save(path, create_model("resnet20_cifar", num_classes=3), CLASSES, Preprocessing(36, 32), "test")
    return load_model(path)


@pytest.fixture(scope="module")
def server(loaded):
    cfg = ServeConfig(port=0, max_batch=8, max_wait_ms=20, max_body_mb=1, max_request_images=16)
    with BackgroundServer(loaded, EagerBackend(loaded.model), cfg) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


def reference(loaded, images):
    """What the model gives for these encoded images through the checkpoint's preprocessing (no server)."""
    t = eval_transform(loaded.preprocessing, 3)
    x = np.stack([t(decode_image(b, 3)).numpy() for b in images])
    return x, EagerBackend(loaded.model)(x)


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, "1")
    assert not client.is_model_ready("resnet50") and not client.is_model_ready(NAME, "2")
    server = client.get_server_metadata()
    assert server["name"] == "resnet50" and {"binary_tensor_data", "classification"} <= set(server["extensions"])
    meta = client.get_model_metadata(NAME, "1")
    assert meta["name"] == NAME and meta["versions"] == ["1"] and meta["platform"] == "resnet50_eager"
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["inputs"]} == {
        ("image", "BYTES", (-1,)), ("input", "FP32", (-1, 3, 32, 32))}
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["outputs"]} == {
        ("logits", "FP32", (-1, 3)), ("probabilities", "FP32", (-1, 3)), ("label", "BYTES", (-1,))}
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json-base64"])
def test_encoded_images_match_the_model(loaded, client, binary):
    images = [encoded("PNG", seed=1), encoded("JPEG", seed=2), encoded("WEBP", seed=3, size=(30, 60))]
    _, want = reference(loaded, images)
    inp = triton.InferInput("image", [3], "BYTES")
    inp.set_data_from_numpy(np.array(images if binary else [base64.b64encode(b) for b in images], dtype=object),
                            binary_data=binary)
    outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "probabilities", "label")]
    r = client.infer(NAME, [inp], outputs=outs, request_id="req-7")
    assert r.get_response()["id"] == "req-7" and r.get_response()["model_name"] == NAME
    np.testing.assert_allclose(r.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.as_numpy("probabilities"), softmax(want), atol=1e-6)
    np.testing.assert_allclose(r.as_numpy("probabilities").sum(1), 1.0, atol=1e-6)
    assert [x.decode() if isinstance(x, bytes) else x for x in r.as_numpy("label")] == \
        [CLASSES[i] for i in want.argmax(1)]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_preprocessed_fp32_tensor(loaded, client, binary):
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    r = client.infer(NAME, [inp], outputs=[triton.InferRequestedOutput("logits", binary_data=binary)])
    assert [o["name"] for o in r.get_response()["outputs"]] == ["logits"]
    np.testing.assert_allclose(r.as_numpy("logits"), EagerBackend(loaded.model)(x), rtol=1e-5, atol=1e-5)


def test_default_outputs_and_classification_extension(loaded, client):
    images = [encoded("PNG", seed=s) for s in range(2)]
    _, want = reference(loaded, images)
    inp = triton.InferInput("image", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=object).reshape(2, 1))
    r = client.infer(NAME, [inp])  # no outputs named: all three, binary (tritonclient asks binary_data_output)
    assert [o["name"] for o in r.get_response()["outputs"]] == ["logits", "probabilities", "label"]
    assert all("binary_data_size" in o["parameters"] for o in r.get_response()["outputs"])
    np.testing.assert_allclose(r.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)
    r = client.infer(NAME, [inp], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)])
    top = r.as_numpy("probabilities")
    assert top.shape == (2, 2)
    probs = softmax(want)
    for row, p in zip(top, probs):
        fields = [x.decode().split(":") for x in row]
        order = np.argsort(-p)[:2]
        assert [int(f[1]) for f in fields] == order.tolist() and [f[2] for f in fields] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([float(f[0]) for f in fields], p[order], atol=1e-6)


def test_v2_and_predict_share_the_batcher_and_never_5xx(loaded, server):
    good = encoded(seed=5)
    with httpx.Client(base_url=server.url, timeout=60) as h:
        before = h.get("/metrics").text

        def send(i):
            if i % 2:
                return h.post("/predict", content=good).status_code
            # tritonclient's HTTP client runs on gevent, one hub per thread: a client per thread
            c = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
            try:
                inp = triton.InferInput("image", [2], "BYTES")
                inp.set_data_from_numpy(np.array([good, good], dtype=object))
                return 200 if c.infer(NAME, [inp]).as_numpy("logits").shape == (2, 3) else 0
            finally:
                c.close()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(send, range(40)))
        after = h.get("/metrics").text
    assert codes == [200] * 40
    images = metric(after, "resnet50_batch_size_sum") - metric(before, "resnet50_batch_size_sum")
    batches = metric(after, "resnet50_batch_size_count") - metric(before, "resnet50_batch_size_count")
    assert images == 20 * 2 + 20 and batches < images
    ok = 'resnet50_requests_total{status="200"}'
    assert metric(after, ok) - metric(before, ok) == 40
    assert not re.search(r'status="5\d\d"', after)


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


IMG = encoded("PNG", seed=9)
ONE_IMAGE = {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(IMG) + 4}}
FP32 = {"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}
MALFORMED = {
    "not-json": (b"{inputs: [", {}, 400, "not valid JSON"),
    "json-array": (b"[1, 2]", {}, 400, "JSON object"),
    "empty": (b"", {}, 400, "empty request"),
    "no-inputs": (b'{"outputs": []}', {}, 400, "'inputs' must be a list"),
    "two-inputs": (json.dumps({"inputs": [FP32, FP32]}).encode(), {}, 400, "exactly one"),
    "unknown-input": (json.dumps({"inputs": [{**FP32, "name": "x"}]}).encode(), {}, 400, "unknown input 'x'"),
    "wrong-datatype": (json.dumps({"inputs": [{**FP32, "datatype": "INT64"}]}).encode(), {}, 400,
                       "FP32 of shape [N, 3, 32, 32]"),
    "wrong-size": (json.dumps({"inputs": [{**FP32, "shape": [1, 3, 64, 64]}]}).encode(), {}, 400,
                   "FP32 of shape [N, 3, 32, 32]"),
    "data-count": (json.dumps({"inputs": [{**FP32, "data": [0.0] * 10}]}).encode(), {}, 400, "holds 10 values"),
    "data-not-numbers": (json.dumps({"inputs": [{**FP32, "data": ["a"] * 3072}]}).encode(), {}, 400,
                         "must be numbers"),
    "negative-shape": (json.dumps({"inputs": [{**FP32, "shape": [-1, 3, 32, 32]}]}).encode(), {}, 400,
                       "non-negative integers"),
    "empty-batch": (json.dumps({"inputs": [{**FP32, "shape": [0, 3, 32, 32], "data": []}]}).encode(), {}, 400,
                    "send 1 to 16"),
    "too-many-images": (json.dumps({"inputs": [{"name": "image", "shape": [17], "datatype": "BYTES",
                                                "data": ["eA=="] * 17}]}).encode(), {}, 400, "send 1 to 16"),
    "json-bytes-not-base64": (json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                      "data": ["not base64 !"]}]}).encode(), {}, 400, "base64"),
    "not-an-image": (*binary_body({"inputs": [{**ONE_IMAGE, "parameters": {"binary_data_size": 9}}]},
                                  bytes_tensor(b"junk!")), 400, "image 0 of 1: not a readable image"),
    "header-length-too-big": (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, 400,
                              "Inference-Header-Content-Length '999'"),
    "header-length-not-a-number": (b'{"inputs": []}', {"Inference-Header-Content-Length": "x"}, 400,
                                   "not a byte count"),
    "binary-size-past-body": (*binary_body({"inputs": [ONE_IMAGE]}, bytes_tensor(IMG)[:-10]), 400,
                              "exceeds the"),
    "binary-left-over": (*binary_body({"inputs": [ONE_IMAGE]}, bytes_tensor(IMG) + b"extra"), 400,
                         "5 bytes after the binary tensors"),
    "bytes-length-prefix-lies": (*binary_body({"inputs": [{**ONE_IMAGE, "parameters": {"binary_data_size": 8}}]},
                                              struct.pack("<I", 1000) + b"abcd"), 400, "declares 1000 bytes"),
    "bytes-count-mismatch": (*binary_body({"inputs": [{**ONE_IMAGE, "parameters": {
        "binary_data_size": 2 * (len(IMG) + 4)}}]}, bytes_tensor(IMG, IMG)), 400, "holds 2 elements, the shape says 1"),
    "fp32-binary-size": (*binary_body({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                                   "parameters": {"binary_data_size": 12}}]}, b"\0" * 12), 400,
                         "binary_data_size 12 != 3072 FP32 elements x 4 bytes"),
    "binary-without-size": (*binary_body({"inputs": [FP32]}, b"\0" * 8), 400, "no input has a binary_data_size"),
    "unknown-output": (json.dumps({"inputs": [FP32], "outputs": [{"name": "features"}]}).encode(), {}, 400,
                       "unknown output 'features'"),
    "classification-too-big": (json.dumps({"inputs": [FP32], "outputs": [{"name": "logits", "parameters": {
        "classification": 4}}]}).encode(), {}, 400, "classification must be 0..3"),
    "too-large": (b"x" * (1024 * 1024 + 1), {}, 413, "exceeds the 1048576-byte limit"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_4xx_with_the_protocol_error(server, case):
    body, headers, status, words = MALFORMED[case]
    with httpx.Client(base_url=server.url, timeout=30) as h:
        r = h.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.json()


@pytest.mark.parametrize("method, path, status, words", [
    ("POST", "/v2/models/resnet50/infer", 404, "unknown model 'resnet50'"),
    ("POST", f"/v2/models/{NAME}/versions/3/infer", 404, "no version '3'"),
    ("GET", f"/v2/models/{NAME}/infer", 405, "Method Not Allowed"),
    ("GET", "/v2/repository/index", 404, "Not Found"),
])
def test_unknown_routes_models_and_methods(server, method, path, status, words):
    with httpx.Client(base_url=server.url, timeout=30) as h:
        r = h.request(method, path, content=json.dumps({"inputs": [FP32]}))
    assert r.status_code == status and words in r.json()["error"]


def test_tritonclient_sees_the_error_message(client):
    inp = triton.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(InferenceServerException, match="not a readable image"):
        client.infer(NAME, [inp])


def _strict_json(body: bytes):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(body, parse_constant=refuse)  # as a browser, Go or Java client parses it


@pytest.mark.parametrize("value, words", [(np.nan, "holds 1 NaN and 0 Inf values (the first at [1, 2, 3, 4]"),
                                          (-np.inf, "holds 0 NaN and 1 Inf values (the first at [1, 2, 3, 4]")])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_non_finite_fp32_input_is_a_400_naming_the_tensor(server, client, value, words, binary):
    x = np.zeros((2, 3, 32, 32), np.float32)
    x[1, 2, 3, 4] = value
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    with pytest.raises(InferenceServerException, match=re.escape(f"input 'input' {words}")):
        client.infer(NAME, [inp])
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    with httpx.Client(base_url=server.url, timeout=30) as h:
        r = h.post(f"/v2/models/{NAME}/infer", content=head + x.tobytes(),
                   headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and set(_strict_json(r.content)) == {"error"}


def test_finite_input_with_non_finite_logits_is_refused_in_strict_json(loaded, server):
    x = np.full((1, 3, 32, 32), 3e38, np.float32)  # finite, but the first convolution overflows float32
    assert not np.isfinite(EagerBackend(loaded.model)(x)).all()
    with httpx.Client(base_url=server.url, timeout=30) as h:
        r = h.post(f"/v2/models/{NAME}/infer", content=json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": x.ravel().tolist()}],
             "outputs": [{"name": "label"}]}))
    assert r.status_code == 400
    assert "logits for image(s) [0] are not finite (the input reaches |x| = 3e+38" in _strict_json(r.content)["error"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_bodies_are_decoded(loaded, client, algorithm):
    """tritonclient's request_compression_algorithm sends the body with Content-Encoding: gzip or deflate."""
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    r = client.infer(NAME, [inp], outputs=[triton.InferRequestedOutput("logits")],
                     request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
    np.testing.assert_allclose(r.as_numpy("logits"), EagerBackend(loaded.model)(x), rtol=1e-5, atol=1e-5)
