"""Offline batch inference on Ray Data: images in, a folder of Parquet files out (top-k classes, scores and, on
request, the pooled embedding), in a pool of actors each holding one loaded model. Ray Data does the reading,
scheduling, batching, back-pressure and writing (its own flagship example is ResNet-50 batch inference,
docs.ray.io "Image Classification Batch Inference with PyTorch"); this module only says what to read and what
each actor computes.

Inputs (``input_format="auto"`` decides by the path):
    images      image files, folders (the data package's discovery rule) or glob patterns, as ``predict`` takes
    list        a text file with one image path a line, relative to its folder (blank and ``#`` lines skipped)
    webdataset  tar shards (a brace pattern, glob, folder of ``.tar`` or URL; ``resnet50.data.webdataset``): each
                sample's first image member, named ``<shard>#<key>``
    parquet     a Parquet file or folder; ``column`` holds image paths (string) or encoded images (binary, then
                ``id_column`` names each row in the output). Every file of a folder is checked before Ray starts:
                one without the column, or with it of another type (two schemas in one folder: Ray would take the
                first file's and read the column of the others as nulls), is refused in one line naming it, and
                so is an input of zero rows. A null path, image or id is that row's error.

Each actor decodes and preprocesses as the checkpoint says (``resnet50.data.transforms.preprocess``, the same
pixels as ``predict`` and ``evaluate``) and runs one of our backends (``resnet50.infer.create_backend``). With
embeddings the PyTorch model runs once per batch for both outputs: ``forward_features``, the global average pool
(``forward_head(pre_logits=True)``: 2048-d for ResNet-50), then the classifier.

Output columns: ``path`` (string), ``error`` (null, or why the image could not be read: such rows are counted,
never a failed job), ``indices`` (list<int64>, top-k class indices, highest first), ``classes`` (list<string>),
``scores`` (list<double>, softmax probabilities), ``embedding`` (list<float>, with embeddings only).

Ray: a local instance started here (``num_cpus``, no dashboard), or the cluster ``RAY_ADDRESS`` names (then image
paths and the output folder must be on storage every node sees). Ray Data's reading tasks (listing files, reading
Parquet, reading shards) ask for one CPU each, beside the actors' ``actors x cpus_per_actor``: a local Ray with
less than ``READ_CPUS`` left over is refused before the job starts (the actor pool would hold every CPU and the
job wait for ever, with no output). Ray's CPUs are logical: ``num_cpus`` may exceed the machine's.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.decode import IMAGE_EXTENSIONS, MAX_PIXELS, ImageDecodeError
from .data.discover import expand_inputs
from .data.transforms import eval_transform, preprocess
from .data.webdataset import IMAGE_KEYS, expand_urls, is_url, read_shard
from .errors import UserError, require
from .infer import create_backend, load_model, resolve_backend, topk

FORMATS = ("auto", "images", "list", "webdataset", "parquet")
ID_COLUMNS = ("path", "key", "id", "file", "__key__")
READ_CPUS = 1  # what Ray Data's reading tasks ask for (one CPU a task), left free beside the actor pool


def _ray():
    return require("ray", "batch inference on Ray Data")


# --- inputs ----------------------------------------------------------------------------------------------------

def detect_format(inputs: list[str]) -> str:
    """``images``, ``list``, ``webdataset`` or ``parquet`` from the first input's name (or a folder's files)."""
    first = str(inputs[0])
    p = Path(first)
    if first.endswith(".parquet") or (p.is_dir() and any(p.glob("*.parquet"))):
        return "parquet"
    if ".tar" in first or first.startswith("pipe:") or (p.is_dir() and any(p.glob("*.tar"))) or \
            (is_url(first) and not first.lower().endswith(IMAGE_EXTENSIONS)):
        return "webdataset"
    if p.is_file() and p.suffix.lower() in (".txt", ".lst", ".list"):
        return "list"
    return "images"


def read_list(path: str | os.PathLike) -> list[str]:
    """The image paths in a list file: one a line, relative ones taken from the list's folder."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the list file {p} ({e}); give a text file with one image path a line") from e
    paths = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not paths:
        raise UserError(f"list file {p} names no images; give one image path a line")
    return [str((p.parent / q).resolve()) for q in paths]  # relative to the list's folder


def _shard_rows(row: dict) -> list[dict]:
    """One WebDataset shard -> rows {path: '<shard>#<key>', image: bytes | None, error: str | None}."""
    out = []
    for s in read_shard(row["shard"]):
        if not hasattr(s, "files"):  # a Skipped record: the shard (or the rest of it) could not be read
            out.append({"path": s.path, "image": None, "error": s.reason})
            continue
        ext = next((e for e in IMAGE_KEYS if e in s.files), None)
        name = f"{s.shard}#{s.key}"
        out.append({"path": name, "image": s.files[ext] if ext else None,
                    "error": None if ext else f"no image member ({', '.join(IMAGE_KEYS)})"})
    return out


def _parquet_files(path: str) -> list[Path]:
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.parquet")) if p.is_dir() else []
    if not files:
        raise UserError(f"{path} is neither a Parquet file nor a folder of .parquet files")
    return files


def _kind(pa, typ) -> str | None:
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return "bytes"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "paths"
    return None


def _parquet_columns(path: str, column: str | None, id_column: str | None) -> tuple[list[str], str, str | None, bool]:
    """(the files, image column, id column or None, whether the image column holds bytes), from the first file's
    schema, checked against every file's (their footers only: no data is read)."""
    pq = require("pyarrow.parquet", "reading Parquet")
    pa = require("pyarrow", "reading Parquet")
    files = _parquet_files(path)
    schemas, rows = [], 0
    for f in files:
        try:
            meta = pq.read_metadata(f)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for files that are not Parquet
            raise UserError(f"{f} is not a readable Parquet file ({str(e).splitlines()[0]})") from None
        schemas.append(meta.schema.to_arrow_schema())
        rows += meta.num_rows
    names = schemas[0].names
    column = column or next((c for c in ("image", "bytes", "path") if c in names), None)
    if column is None or column not in names:
        raise UserError(f"{files[0] if len(files) > 1 else path} has no column {column or 'image/bytes/path'!r} "
                        f"(columns: {', '.join(names)}); give the column of image paths or bytes with --column")
    kind = _kind(pa, schemas[0].field(column).type)
    if kind is None:
        raise UserError(f"{path}: column {column!r} is {schemas[0].field(column).type}; give a column of image "
                        "paths (string) or bytes (binary)")
    ident = None
    if kind == "bytes":
        ident = id_column or next((c for c in ID_COLUMNS if c in names), None)
        if ident is None or ident not in names:
            raise UserError(f"{path}: column {column!r} holds image bytes; name each row in the output with "
                            f"--id-column (columns: {', '.join(names)})")
    for f, schema in zip(files[1:], schemas[1:]):
        wanted = [c for c in (column, ident) if c is not None]
        lacking = [c for c in wanted if c not in schema.names]
        if lacking or _kind(pa, schema.field(column).type) != kind:
            what = (f"has no column {lacking[0]!r} (its columns: {', '.join(schema.names)})" if lacking else
                    f"has {column!r} as {schema.field(column).type}")
            raise UserError(f"{f} {what}, unlike {files[0].name}: the folder mixes two schemas; give files of one "
                            "schema (a folder per schema)")
    if rows == 0:
        raise UserError(f"{path} holds no rows ({len(files)} file(s), 0 rows); nothing to predict")
    return [str(f) for f in files], column, ident, kind == "bytes"


@dataclass
class Inputs:
    """What to read, checked before Ray starts: the format and its items (image paths, shard URLs, or one Parquet
    path with its image column, id column and whether that holds bytes)."""

    kind: str
    items: list[str]
    column: str | None = None
    id_column: str | None = None
    is_bytes: bool = False


def resolve_inputs(inputs: list[str], input_format: str = "auto", column: str | None = None,
                   id_column: str | None = None) -> Inputs:
    if input_format not in FORMATS:
        raise UserError(f"unknown input format {input_format!r}; choose from {', '.join(FORMATS)}")
    if not inputs:
        raise UserError("no inputs given")
    kind = detect_format(inputs) if input_format == "auto" else input_format
    if kind == "parquet":
        if len(inputs) != 1:
            raise UserError("give one Parquet file or folder")
        return Inputs(kind, *_parquet_columns(inputs[0], column, id_column))
    if kind == "webdataset":
        return Inputs(kind, [s for spec in inputs for s in expand_urls(spec)])
    if kind == "list":
        return Inputs(kind, [p for spec in inputs for p in read_list(spec)])
    return Inputs(kind, [str(p.resolve()) for p in expand_inputs(inputs)])  # actors may run elsewhere


def _text(value) -> str | None:
    """A cell as text, or None for a null (None, NaN, pandas.NA)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType":
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _parquet_rows(col: str, ident: str | None, is_bytes: bool):
    def to_rows(batch):
        if is_bytes:
            names = [_text(v) for v in batch[ident]]
            images = [v if isinstance(v, (bytes, bytearray, memoryview)) else None for v in batch[col]]
            errors = [None if img is not None else f"null in the image column {col!r}" for img in images]
            return {"path": names, "image": images, "error": errors}
        paths = [_text(v) for v in batch[col]]
        return {"path": paths, "image": [None] * len(paths),
                "error": [None if p else f"no image path (a null or empty {col!r})" for p in paths]}
    return to_rows


def to_dataset(inp: Inputs):
    """A Ray Dataset of rows {path, image (bytes, or None: read from path), error (None, or why not readable)}."""
    ray = _ray()
    if inp.kind == "parquet":
        col, ident = inp.column, inp.id_column
        ds = ray.data.read_parquet(inp.items)
        ds = ds.select_columns([col] + ([ident] if ident else []))
        return ds.map_batches(_parquet_rows(col, ident, inp.is_bytes), batch_format="pandas")
    if inp.kind == "webdataset":
        return ray.data.from_items([{"shard": s} for s in inp.items]).flat_map(_shard_rows)
    return ray.data.from_items([{"path": p, "image": None, "error": None} for p in inp.items])


# --- the actor ---------------------------------------------------------------------------------------------------

def output_schema(pa, embeddings: bool):
    """The output's Arrow schema (fixed, so that every Parquet file of a job has the same one)."""
    fields = [("path", pa.string()), ("error", pa.string()), ("indices", pa.list_(pa.int64())),
              ("classes", pa.list_(pa.string())), ("scores", pa.list_(pa.float64()))]
    return pa.schema(fields + ([("embedding", pa.list_(pa.float32()))] if embeddings else []))


class Predictor:
    """A Ray Data actor: loads the model once, then maps a batch of rows {path, image, error} to the output rows.
    ``device`` ``cuda`` runs the PyTorch model on the actor's GPU (``num_gpus`` > 0), else the named backend."""

    def __init__(self, weights: str, backend: str = "auto", k: int = 5, embeddings: bool = False,
                 max_pixels: int = MAX_PIXELS, threads: int | None = None, device: str = "cpu") -> None:
        self.loaded = load_model(weights)
        self.k, self.max_pixels, self.embeddings = k, max_pixels, embeddings
        self.names = self.loaded.class_names()
        self.transform = eval_transform(self.loaded.preprocessing, self.loaded.in_chans)
        self.device = torch.device(device)
        self.pa = require("pyarrow", "batch inference on Ray Data")
        self.schema = output_schema(self.pa, embeddings)
        if embeddings or self.device.type == "cuda":  # one PyTorch pass gives both outputs
            torch.set_num_threads(threads or 1)
            self.model = self.loaded.model.eval().to(self.device, memory_format=torch.channels_last)
            self.backend = None
        else:
            self.backend = create_backend(backend, self.loaded, threads)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N, classes) and, with embeddings, the pooled features (N, num_features), float32."""
        if self.backend is not None:
            return self.backend(x), None
        t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            emb = self.model.forward_head(self.model.forward_features(t), pre_logits=True)
            logits = self.model.get_classifier()(emb)
        return logits.float().cpu().numpy(), emb.float().cpu().numpy() if self.embeddings else None

    def __call__(self, batch):
        n = len(batch)
        errors = [e if isinstance(e, str) else None for e in batch["error"]]
        arrays: list[np.ndarray | None] = [None] * n
        for i, (path, image) in enumerate(zip(batch["path"], batch["image"])):
            if errors[i] is not None:
                continue
            try:
                source = bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else path
                arrays[i] = preprocess(source, self.loaded, self.transform, self.max_pixels, name=path)
            except ImageDecodeError as e:
                errors[i] = e.reason
        good = [i for i in range(n) if arrays[i] is not None]
        out = {"path": [_text(p) for p in batch["path"]], "error": errors, "indices": [None] * n,
               "classes": [None] * n, "scores": [None] * n, "embedding": [None] * n}
        if good:
            logits, emb = self.run(np.stack([arrays[i] for i in good]))
            idx, probs = topk(logits, self.k)
            for j, i in enumerate(good):
                out["indices"][i] = idx[j].tolist()
                out["classes"][i] = [self.names[c] if self.names else str(int(c)) for c in idx[j]]
                out["scores"][i] = probs[j].tolist()
                if emb is not None:
                    out["embedding"][i] = emb[j]
        if not self.embeddings:
            del out["embedding"]
        return self.pa.table(out, schema=self.schema)


# --- the job -----------------------------------------------------------------------------------------------------

@dataclass
class BatchResult:
    out: str
    rows: int
    errors: int
    seconds: float
    images_per_s: float
    input_format: str
    backend: str
    actors: int
    cluster: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def start_ray(num_cpus: int | None = None, num_gpus: int | None = None, progress: bool = False) -> bool:
    """Connect to the cluster RAY_ADDRESS names, or start a local Ray (no dashboard) with ``num_cpus``; returns
    whether this call started it (and so should shut it down)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kw)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kw)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.ERROR)
    return True


def batch_predict(inputs: list[str], weights: str, out: str | os.PathLike, *, input_format: str = "auto",
                  column: str | None = None, id_column: str | None = None, backend: str = "auto", k: int = 5,
                  batch_size: int = 32, actors: int = 1, cpus_per_actor: float = 1, gpus_per_actor: float = 0,
                  embeddings: bool = False, max_pixels: int = MAX_PIXELS, num_cpus: int | None = None,
                  progress: bool = False) -> BatchResult:
    """Classify ``inputs`` on Ray Data with ``actors`` actors (each ``cpus_per_actor`` CPUs, ``gpus_per_actor``
    GPUs and one model) in batches of ``batch_size``, writing Parquet files into the new folder ``out``.

    Errors: UserError for a bad option, input or weights file (checked here, before Ray starts), or an ``out``
    that already exists. Unreadable images are rows with ``error`` set, counted in the result."""
    ray = _ray()
    require("pyarrow", "batch inference on Ray Data")
    for name, v in (("--topk", k), ("--batch-size", batch_size), ("--actors", actors)):
        if v < 1:
            raise UserError(f"{name} must be >= 1, got {v}")
    if cpus_per_actor <= 0 or gpus_per_actor < 0:
        raise UserError("--cpus-per-actor must be > 0 and --gpus-per-actor >= 0")
    loaded = load_model(weights)  # a bad weights file fails here, once, not in every actor
    if embeddings or gpus_per_actor:
        if loaded.model is None or backend not in ("auto", "eager"):
            raise UserError("--embeddings and --gpus-per-actor run the PyTorch model (one pass gives the pooled "
                            "features and the logits): give .safetensors weights and --backend eager (or auto)")
        backend = "eager"
    else:
        backend = resolve_backend(backend, loaded)
    remote = "://" in str(out)
    out_path = Path(out)
    if not remote and out_path.exists():
        raise UserError(f"--out {out_path} exists; give a new folder (the Parquet files are written into it)")
    inp = resolve_inputs(inputs, input_format, column, id_column)
    if num_cpus is not None and not os.environ.get("RAY_ADDRESS"):  # known before Ray starts: refuse at once
        check_fits(actors, cpus_per_actor, 0, {"CPU": num_cpus})
    started = start_ray(num_cpus, progress=progress)
    try:
        if not os.environ.get("RAY_ADDRESS"):  # a cluster may autoscale; a local Ray will not
            check_fits(actors, cpus_per_actor, gpus_per_actor, ray.cluster_resources())
        t0 = time.perf_counter()
        ds = to_dataset(inp)
        threads = max(1, int(cpus_per_actor))
        preds = ds.map_batches(Predictor, fn_constructor_kwargs=dict(
            weights=str(Path(weights).resolve()), backend=backend, k=k, embeddings=embeddings,
            max_pixels=max_pixels, threads=threads, device="cuda" if gpus_per_actor else "cpu"),
            batch_size=batch_size, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
        # written beside the target and renamed when complete: a failed job leaves no half-written --out
        tmp = out if remote else out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
        try:
            preds.write_parquet(str(Path(tmp).resolve()) if not remote else tmp)
            if not remote:
                os.replace(tmp, out_path)
        except BaseException:
            if not remote:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - t0
        rows, errors = count_rows(str(out))
        cluster = os.environ.get("RAY_ADDRESS") or f"local ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
    finally:
        if started:
            ray.shutdown()
    return BatchResult(str(out), rows, errors, seconds, rows / max(seconds, 1e-9), inp.kind, backend, actors, cluster)


def check_fits(actors: int, cpus_per_actor: float, gpus_per_actor: float, resources: dict) -> None:
    """Refuse an actor pool that leaves the reading tasks no CPU (or asks for more GPUs than there are): Ray would
    wait for ever, with no output."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    need = actors * cpus_per_actor
    if need + READ_CPUS > cpus:
        fit = int((cpus - READ_CPUS) // cpus_per_actor)
        fix = f"--actors {fit}" if fit >= 1 else f"--num-cpus {math.ceil(need + READ_CPUS)} (Ray's CPUs are logical)"
        raise UserError(f"--actors {actors} x --cpus-per-actor {cpus_per_actor:g} = {need:g} CPU(s) leave less than "
                        f"the {READ_CPUS} CPU that reading the inputs needs, of this Ray's {cpus:g} (the job would "
                        f"wait for ever); use {fix}")
    if actors * gpus_per_actor > gpus:
        raise UserError(f"--actors {actors} x --gpus-per-actor {gpus_per_actor:g} needs {actors * gpus_per_actor:g} "
                        f"GPUs; this Ray has {gpus:g}")


def count_rows(out: str) -> tuple[int, int]:
    """(rows, rows with an error) in the Parquet files under ``out``, reading only the error column."""
    ds = require("pyarrow.dataset", "reading Parquet")
    table = ds.dataset(out, format="parquet").to_table(columns=["error"])
    return table.num_rows, table.num_rows - table.column("error").null_count
