"""Pooled features (``ResNet.forward_embedding``: the classifier's input, 2048-d for ResNet-50, ``num_features``
in general) of image files, written with their paths, and the k-nearest-neighbour classifier on frozen features.

``resnet50 embed`` (:func:`embed_files`, :func:`save_embeddings`) writes one of:

    FILE.npy       float32 (N, D), and beside it FILE.paths.txt: the N paths, one a line, in the rows' order
    FILE.npz       arrays ``features`` float32 (N, D) and ``paths`` (N,) str
    FILE.parquet   columns ``path`` (string) and ``embedding`` (list<float>, D values): batch-predict's column

Only readable images get a row; the others are counted and named (``Embeddings.skipped``). Decoding and
preprocessing are prediction's (``data.transforms.preprocess``: the checkpoint's own resize, crop and normalisation).

``evaluate --knn K`` (:func:`knn_predict`) is the frozen-feature baseline of self-supervised learning: the train
split's features are the gallery, each evaluated image a query, similarity the cosine of L2-normalised features.
``vote="majority"``: the class most frequent among the K nearest, ties broken by the larger sum of the tied classes'
similarities (then by the lower class index). ``vote="weighted"``: DINO's weighted k-NN (Caron et al. 2021,
``eval_knn.py``): each neighbour votes exp(similarity / 0.07) for its class.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from .data import MAX_PIXELS, ImageDecodeError, Skipped
from .data.transforms import eval_transform
from .errors import UserError, require
from .files import atomic_path, output_file, write_text
from .data.transforms import preprocess
from .weights import HUB_WEIGHTS, Checkpoint, load

OUT_FORMATS = (".npy", ".npz", ".parquet")
VOTES = ("majority", "weighted")
DINO_TEMPERATURE = 0.07  # DINO's eval_knn.py default (--temperature 0.07)


# --- the model ----------------------------------------------------------------------------------------------------

def weights_file(path: str | os.PathLike) -> Path | str:
    """A run folder means its best.safetensors (a Hub-layout folder and a published name are left as they are)."""
    p = Path(path)
    if p.is_dir() and not (p / HUB_WEIGHTS).is_file():
        return p / "best.safetensors"
    return path


def load_classifier(path: str | os.PathLike, flag: str = "--weights") -> Checkpoint:
    """Classifier weights (any format ``weights.load`` reads, or a run folder) whose network gives pooled features;
    a detector's weights and ONNX files are refused with what to pass instead."""
    path = weights_file(path)
    if Path(path).suffix == ".onnx":
        raise UserError(f"{flag} {path} is an ONNX model; features come from the PyTorch network: pass the "
                        ".safetensors checkpoint it was exported from")
    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception:  # not readable as safetensors: weights.load says why
            meta = {}
        if meta.get("format", "").startswith("resnet50-toolkit/detector"):
            raise UserError(f"{flag} {path} holds a detector (RetinaNet), not a classifier; pass classifier weights "
                            "(a 'resnet50 train' run's best.safetensors, or published weights such as tv:resnet50.v2)")
    ckpt = load(path)
    ckpt.preprocessing = ckpt.preprocessing.for_channels(ckpt.in_chans)
    return ckpt


# --- features of files ----------------------------------------------------------------------------------------------

@dataclass
class Embeddings:
    paths: list[str]
    features: np.ndarray  # float32 (N, D), row i the features of paths[i]
    skipped: list[Skipped] = field(default_factory=list)  # files that could not be read, with the reason


@torch.inference_mode()
def embed_files(files: Sequence[str | os.PathLike], ckpt: Checkpoint, batch_size: int = 32,
                max_pixels: int = MAX_PIXELS, progress: bool = False, workers: int = 2,
                device: torch.device | str = "cpu") -> Embeddings:
    """Pooled features of each readable file, in the order given; unreadable files are skipped and named.
    Decoding runs on ``workers`` threads, at most two batches ahead of the network (bounded memory)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} but this machine has no CUDA device; use --device cpu")
    model = ckpt.model.eval().to(device)
    transform = eval_transform(ckpt.preprocessing, ckpt.in_chans)

    def read(path):
        try:
            return preprocess(path, ckpt, transform, max_pixels)
        except ImageDecodeError as e:
            return Skipped(str(path), e.reason)

    paths: list[str] = []
    parts: list[np.ndarray] = []
    skipped: list[Skipped] = []
    bar = tqdm(total=len(files), desc="embed", unit="img", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, bar:
        pending: deque = deque()
        next_file = 0
        for start in range(0, len(files), batch_size):
            while next_file < min(len(files), start + 2 * batch_size):
                pending.append(pool.submit(read, files[next_file]))
                next_file += 1
            chunk = files[start:start + batch_size]
            arrays = [pending.popleft().result() for _ in chunk]
            good = [(str(p), a) for p, a in zip(chunk, arrays) if isinstance(a, np.ndarray)]
            skipped += [a for a in arrays if isinstance(a, Skipped)]
            if good:
                x = torch.from_numpy(np.stack([a for _, a in good])).to(device)
                parts.append(model.forward_embedding(x).float().cpu().numpy())
                paths += [p for p, _ in good]
            bar.update(len(chunk))
    width = model.num_features
    features = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
    return Embeddings(paths, features, skipped)


def check_out(path: str | os.PathLike) -> Path:
    """Before any work: ``path`` has a known suffix, can be written, and Parquet's dependency is installed."""
    path = Path(path)
    if path.suffix.lower() not in OUT_FORMATS:
        raise UserError(f"--out {path}: unknown format {path.suffix or '(no suffix)'!r}; end the name with "
                        f"{', '.join(OUT_FORMATS)}")
    output_file(path)
    if path.suffix.lower() == ".parquet":
        require("pyarrow.parquet", "Parquet output")
    return path


def paths_file(path: str | os.PathLike) -> Path:
    """The sidecar of a .npy output: FILE.paths.txt beside FILE.npy."""
    return Path(path).with_suffix(".paths.txt")


def save_embeddings(emb: Embeddings, out: str | os.PathLike) -> list[Path]:
    """Write ``emb`` to ``out`` (.npy with a FILE.paths.txt sidecar, .npz or .parquet), atomically; returns the
    files written."""
    out = check_out(out)
    if not emb.paths:
        raise UserError("no image could be read, so nothing was written; see the reasons above")
    kind = out.suffix.lower()
    if kind == ".npy":
        bad = next((p for p in emb.paths if "\n" in p or "\r" in p), None)
        if bad is not None:
            raise UserError(f"a path holds a line break ({bad!r}), which the one-path-a-line sidecar cannot hold; "
                            "write .npz or .parquet instead")
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, emb.features)
        return [out, write_text(paths_file(out), "".join(p + "\n" for p in emb.paths))]
    if kind == ".npz":
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=emb.features, paths=np.array(emb.paths, dtype=str))
        return [out]
    pa = require("pyarrow", "Parquet output")
    pq = require("pyarrow.parquet", "Parquet output")
    n, d = emb.features.shape
    values = pa.array(emb.features.reshape(-1), type=pa.float32())
    column = pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), values)
    table = pa.table({"path": pa.array(emb.paths, type=pa.string()), "embedding": column})
    with atomic_path(out) as tmp:
        pq.write_table(table, str(tmp))
    return [out]


def load_embeddings(path: str | os.PathLike) -> Embeddings:
    """Read back what :func:`save_embeddings` wrote."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind == ".npy":
        lines = paths_file(path).read_text(encoding="utf-8").splitlines()
        return Embeddings(lines, np.load(path))
    if kind == ".npz":
        with np.load(path) as z:
            return Embeddings([str(p) for p in z["paths"]], z["features"])
    pq = require("pyarrow.parquet", "reading Parquet")
    table = pq.read_table(str(path))
    col = table.column("embedding").combine_chunks()
    features = col.values.to_numpy().reshape(len(table), -1) if len(table) else np.zeros((0, 0), np.float32)
    return Embeddings(table.column("path").to_pylist(), features)


# --- features of a dataset, and k-NN --------------------------------------------------------------------------------

@torch.inference_mode()
def extract(model: nn.Module, loader, progress: bool = False, desc: str = "features",
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, D) float32 and labels (N,) of every readable sample of ``loader`` (batches of images,
    labels, skipped records), in order."""
    model.eval()
    feats, labels = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        images, y = batch[0], batch[1]
        if y.numel() == 0:
            continue
        feats.append(model.forward_embedding(images.to(device)).float().cpu())
        labels.append(y)
    if not feats:
        raise UserError("no samples could be read for the k-NN features: the split is empty or every file was "
                        "unreadable")
    return torch.cat(feats), torch.cat(labels)


def knn_predict(gallery: torch.Tensor, gallery_labels: torch.Tensor, queries: torch.Tensor, k: int,
                num_classes: int, vote: str = "majority", temperature: float = DINO_TEMPERATURE) -> torch.Tensor:
    """The class (Q,) int64 of each query (Q, D) by its ``k`` nearest gallery rows (G, D) in cosine similarity;
    ``vote`` as the module docstring says. Queries are scored in chunks: memory stays about 64 M similarities."""
    if vote not in VOTES:
        raise UserError(f"unknown k-NN vote {vote!r}; use one of {', '.join(VOTES)}")
    if k < 1:
        raise UserError(f"--knn must be >= 1, got {k}")
    if k > len(gallery):
        raise UserError(f"--knn {k} exceeds the {len(gallery)} gallery images; use a K of at most {len(gallery)}")
    g = nn.functional.normalize(gallery.float(), dim=1)
    gl = gallery_labels.long()
    chunk = max(1, (1 << 26) // max(len(g), 1))
    out = []
    for start in range(0, len(queries), chunk):
        q = nn.functional.normalize(queries[start:start + chunk].float(), dim=1)
        sims, idx = (q @ g.T).topk(k, dim=1)  # (B, k), most similar first
        neighbours = gl[idx]
        if vote == "weighted":
            scores = torch.zeros(len(q), num_classes).scatter_add_(1, neighbours, (sims / temperature).exp())
        else:
            counts = torch.zeros(len(q), num_classes).scatter_add_(1, neighbours, torch.ones_like(sims))
            sim_sum = torch.zeros(len(q), num_classes).scatter_add_(1, neighbours, sims)
            # a class's similarity sum lies in [-k, k], so one more vote (worth 2k + 1) always outweighs it
            scores = counts.double() * (2 * k + 1) + sim_sum.double()
        out.append(scores.argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)
