"""The Open Inference Protocol (KServe v2, the REST protocol of Triton and KServe): request parsing and response
encoding for ``resnet50 serve``, which routes ``/v2/...`` here beside its own ``/predict``.

Source: the KServe v2 REST specification (kserve/kserve ``docs/predict-api/v2/required_api.md``, now the Open
Inference Protocol) and two of Triton's extensions to it: binary tensor data (``extension_binary_data.md``) and
classification (``extension_classification.md``).

The model, ``<name>`` version ``1`` (name: the checkpoint's architecture unless ``--model-name`` says otherwise):

    inputs (exactly one per request)
      image          BYTES  [N] or [N, 1]   encoded images (JPEG, PNG, WebP, ...), preprocessed by the server with
                                            the checkpoint's own contract (resize, centre crop, normalise), as
                                            /predict does. In JSON each element is the image's base64 text (a JSON
                                            string cannot carry raw bytes); with the binary extension, the raw bytes.
      input          FP32   [N, C, H, W]    already preprocessed (``data.eval_transform`` of the checkpoint's
                                            ``Preprocessing``), C = in_chans, H = W = the crop
    outputs (all three when the request names none)
      logits         FP32   [N, K]          the classifier's outputs, K = classes
      probabilities  FP32   [N, K]          softmax of the logits
      label          BYTES  [N]             the top-1 class name (the index as text where the model has no names)

A ``classification`` parameter k on ``logits`` or ``probabilities`` (Triton's classification extension, the
``class_count`` of tritonclient) returns BYTES [N, k] instead: ``"<value>:<index>:<label>"``, highest first.
Binary data: an input whose ``parameters`` carry ``binary_data_size`` takes its bytes from after the JSON header
(``Inference-Header-Content-Length``), in input order; outputs are returned binary when their ``binary_data``
parameter, or the request's ``binary_data_output``, is true. Binary BYTES elements are a 4-byte little-endian
length then the bytes. Every malformed request is an :class:`HTTPError` (4xx) whose body is ``{"error": ...}``.
An FP32 input holding NaN or Inf is malformed (400 naming the input and the first such element): JSON has no
spelling for them, and a model fed them answers NaN; an answer that is not finite (huge but finite inputs) is
refused the same way, so a response is always strict JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .infer import softmax, top_indices
from .weights import Checkpoint

VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "classification"]
OUTPUTS = ("logits", "probabilities", "label")


class HTTPError(Exception):
    """A request the server refuses: HTTP ``status`` with ``{"error": message}``. The one error type of
    ``resnet50.serve`` and this codec (defined here, below the server, which imports it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ModelInfo:
    """What the metadata routes report and the parser checks against."""

    name: str
    platform: str
    in_chans: int
    size: int
    labels: list[str] | None
    num_classes: int

    @classmethod
    def of(cls, loaded: Checkpoint, platform: str, name: str = "") -> ModelInfo:
        """The model ``loaded`` as served under ``name`` (default: its architecture)."""
        return cls(name or loaded.arch, platform, loaded.in_chans, loaded.size, loaded.class_names(),
                   loaded.num_classes)

    def metadata(self) -> dict:
        """The model metadata response ($metadata_model_response)."""
        k = self.num_classes
        return {"name": self.name, "versions": [VERSION], "platform": self.platform,
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                           {"name": "input", "datatype": "FP32", "shape": [-1, self.in_chans, self.size, self.size]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, k]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
                            {"name": "label", "datatype": "BYTES", "shape": [-1]}]}


def server_metadata() -> dict:
    """The server metadata response ($metadata_server_response)."""
    return {"name": "resnet50", "version": __version__, "extensions": EXTENSIONS}


@dataclass
class Output:
    name: str
    binary: bool = False
    classification: int = 0


@dataclass
class InferRequest:
    """A parsed request: ``images`` (encoded bytes, one per image) or ``tensor`` (float32 N x C x H x W)."""

    id: str | None
    images: list[bytes] | None = None
    tensor: np.ndarray | None = None
    outputs: list[Output] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.images) if self.images is not None else len(self.tensor)


def _bad(message: str) -> HTTPError:
    return HTTPError(400, message)


def _split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise _bad(f"Inference-Header-Content-Length {header_length!r} is not a byte count within the "
                       f"{len(body)}-byte body")
        n = int(header_length)
        json_part, binary = body[:n], memoryview(body)[n:]
    if not json_part:
        raise _bad("empty request: send an inference request JSON object")
    try:
        doc = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"the request header is not valid JSON ({e}); binary tensors need the "
                   "Inference-Header-Content-Length header") from None
    if not isinstance(doc, dict):
        raise _bad("the inference request must be a JSON object with 'inputs'")
    return doc, binary


def _shape(tensor: dict) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise _bad(f"input {tensor.get('name')!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    return shape


def _parameters(obj: dict, where: str) -> dict:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise _bad(f"{where}: 'parameters' must be a JSON object")
    return params


def _bytes_elements(raw: memoryview, count: int) -> list[bytes]:
    """Binary BYTES: each element is a 4-byte little-endian length then that many bytes."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise _bad("binary BYTES data ends inside an element's 4-byte length prefix")
        (n,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + n > len(raw):
            raise _bad(f"binary BYTES element {len(out)} declares {n} bytes, more than the data holds")
        out.append(bytes(raw[pos + 4:pos + 4 + n]))
        pos += 4 + n
    if len(out) != count:
        raise _bad(f"binary BYTES data holds {len(out)} elements, the shape says {count}")
    return out


def _check_input(name, dtype, shape: list[int], model: ModelInfo, max_images: int) -> None:
    if name == "image":
        if dtype != "BYTES" or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise _bad(f"input 'image' is BYTES of shape [N] or [N, 1] (encoded images); got {dtype} {shape}")
    elif name == "input":
        want = [model.in_chans, model.size, model.size]
        if dtype != "FP32" or len(shape) != 4 or shape[1:] != want:
            raise _bad(f"input 'input' is FP32 of shape [N, {', '.join(map(str, want))}] (preprocessed); "
                       f"got {dtype} {shape}")
    else:
        raise _bad(f"unknown input {name!r}; the model takes 'image' (BYTES) or 'input' (FP32)")
    count = shape[0]
    if not 1 <= count <= max_images:
        raise _bad(f"batch of {count} images; send 1 to {max_images} per request (--max-request-images)")


def _binary_part(tensor: dict, name: str, size, binary: memoryview) -> memoryview:
    """The input's ``binary_data_size`` bytes after the JSON header, which must be all of them."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > len(binary):
        raise _bad(f"input {name!r}: binary_data_size {size!r} exceeds the {len(binary)} bytes after the header")
    if "data" in tensor:
        raise _bad(f"input {name!r} has both 'data' and binary_data_size; send one")
    raw, rest = binary[:size], binary[size:]
    if len(rest):
        raise _bad(f"{len(rest)} bytes after the binary tensors that no input's binary_data_size accounts for")
    return raw


def _image_elements(tensor: dict, shape: list[int], elements: int, raw: memoryview | None) -> list[bytes]:
    """Input ``image``: the encoded images, from the binary part (``raw``) or from the JSON's base64 strings."""
    if raw is not None:
        return _bytes_elements(raw, elements)
    data = tensor["data"]
    items = data if isinstance(data, list) else [data]
    flat = [x for row in items for x in (row if isinstance(row, list) else [row])]
    if len(flat) != elements or not all(isinstance(x, str) for x in flat):
        raise _bad(f"input 'image' in JSON: {elements} base64 strings expected (shape {shape})")
    try:
        return [base64.b64decode(x, validate=True) for x in flat]
    except (binascii.Error, ValueError):
        raise _bad("input 'image' in JSON must be the base64 text of each encoded image "
                   "(or send raw bytes with the binary tensor extension)") from None


def _fp32_tensor(tensor: dict, shape: list[int], elements: int, raw: memoryview | None) -> np.ndarray:
    """Input ``input``: the float32 N x C x H x W tensor, from the binary part (``raw``) or the JSON's numbers;
    finite values only."""
    if raw is not None:
        if len(raw) != elements * 4:
            raise _bad(f"input 'input': binary_data_size {len(raw)} != {elements} FP32 elements x 4 bytes")
        array = np.frombuffer(raw, dtype="<f4").reshape(shape)
    else:
        try:
            array = np.asarray(tensor["data"], dtype=np.float32)
        except (ValueError, TypeError, OverflowError):
            raise _bad("input 'input': 'data' must be numbers (a flat or nested list)") from None
        if array.size != elements:
            raise _bad(f"input 'input': 'data' holds {array.size} values, the shape {shape} needs {elements}")
        array = array.reshape(shape)
    _check_finite(array, "input 'input'")
    return np.ascontiguousarray(array, dtype=np.float32)


def parse_request(body: bytes, header_length: str | None, model: ModelInfo, max_images: int) -> InferRequest:
    """A request body (JSON, or JSON then binary tensors) -> :class:`InferRequest`; raises HTTPError (400)."""
    doc, binary = _split_body(body, header_length)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _bad("'inputs' must be a list of exactly one tensor: 'image' (BYTES) or 'input' (FP32)")
    tensor = inputs[0]
    name, dtype = tensor.get("name"), tensor.get("datatype")
    shape = _shape(tensor)
    params = _parameters(tensor, f"input {name!r}")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise _bad("'id' must be a string")
    _check_input(name, dtype, shape, model, max_images)
    elements = int(np.prod(shape))
    size = params.get("binary_data_size")
    if size is not None:
        raw = _binary_part(tensor, name, size, binary)
    elif len(binary):
        raise _bad("binary data after the JSON header but no input has a binary_data_size parameter")
    elif "data" not in tensor:
        raise _bad(f"input {name!r} has no 'data' (nor a binary_data_size parameter)")
    else:
        raw = None
    if name == "image":
        images = _image_elements(tensor, shape, elements, raw)
        return InferRequest(rid, images=images, outputs=_requested_outputs(doc, model))
    array = _fp32_tensor(tensor, shape, elements, raw)
    return InferRequest(rid, tensor=array, outputs=_requested_outputs(doc, model))


def _check_finite(array: np.ndarray, what: str) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        raise _bad(f"{what} holds {n_nan} NaN and {n_inf} Inf values (the first at {list(first)}: "
                   f"{array[first]}); send finite FP32 values (a zero std in the client's normalisation gives Inf)")


def _requested_outputs(doc: dict, model: ModelInfo) -> list[Output]:
    default_binary = _parameters(doc, "the request").get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise _bad("parameter binary_data_output must be true or false")
    wanted = doc.get("outputs")
    if wanted is None:
        return [Output(n, default_binary) for n in OUTPUTS]
    if not isinstance(wanted, list) or not wanted or not all(isinstance(o, dict) for o in wanted):
        raise _bad("'outputs' must be a non-empty list of objects with a 'name'")
    out = []
    for o in wanted:
        name = o.get("name")
        if name not in OUTPUTS:
            raise _bad(f"unknown output {name!r}; the model gives {', '.join(OUTPUTS)}")
        params = _parameters(o, f"output {name!r}")
        binary, k = params.get("binary_data", default_binary), params.get("classification", 0)
        if not isinstance(binary, bool):
            raise _bad(f"output {name!r}: binary_data must be true or false")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= model.num_classes:
            raise _bad(f"output {name!r}: classification must be 0..{model.num_classes}, got {k!r}")
        if k and name == "label":
            raise _bad("classification applies to 'logits' or 'probabilities', not 'label'")
        out.append(Output(name, binary, k))
    return out


def _label(model: ModelInfo, i: int) -> str:
    return model.labels[i] if model.labels else str(i)


def _output_tensor(o: Output, logits: np.ndarray, model: ModelInfo) -> tuple[str, list[int], np.ndarray | list[str]]:
    values = (softmax(logits.astype(np.float64)) if o.name == "probabilities" else logits).astype(np.float32)
    if o.name == "label":
        top = top_indices(values, 1)[:, 0]
        return "BYTES", [len(top)], [_label(model, int(i)) for i in top]
    if o.classification:
        k = o.classification
        order = top_indices(values, k)
        rows = [f"{values[r, i]:f}:{int(i)}:{_label(model, int(i))}" for r in range(len(values)) for i in order[r]]
        return "BYTES", [len(values), k], rows
    return "FP32", list(values.shape), values


def encode_response(req: InferRequest, logits: np.ndarray, model: ModelInfo) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON then the binary outputs (Inference-Header-Content-Length
    gives the JSON's length; Content-Type application/octet-stream, as Triton sends)."""
    if not np.isfinite(logits).all():
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(logits))[:, 0]})
        if req.tensor is None:
            raise HTTPError(500, f"the model's logits for image(s) {bad} are not finite")
        peak = float(np.abs(req.tensor[bad]).max())
        raise _bad(f"input 'input': the model's logits for image(s) {bad} are not finite (the input reaches "
                   f"|x| = {peak:g}; preprocessed values are a few units around 0)")
    doc: dict = {"model_name": model.name, "model_version": VERSION, "outputs": []}
    if req.id is not None:
        doc["id"] = req.id
    blobs = []
    for o in req.outputs:
        dtype, shape, values = _output_tensor(o, logits, model)
        entry: dict = {"name": o.name, "datatype": dtype, "shape": shape}
        if o.binary:
            if dtype == "FP32":
                raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
            else:
                raw = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in values)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = values.ravel().tolist() if dtype == "FP32" else values
        doc["outputs"].append(entry)
    header = json.dumps(doc, allow_nan=False).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream",
                                      "inference-header-content-length": str(len(header))}
