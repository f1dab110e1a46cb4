"""INT8 post-training static quantisation with ONNX Runtime, and its accuracy before and after.

Settings, and why:
- QDQ format (QuantizeLinear/DequantizeLinear pairs around each op): ONNX Runtime fuses them into integer kernels
  (QLinearConv and friends) at load time, and other runtimes (OpenVINO, TensorRT) read the same file.
- Activations uint8 (asymmetric), weights int8 (symmetric), i.e. U8S8: the combination ONNX Runtime's x86 integer
  GEMM kernels (AVX2 ``vpmaddubsw``, AVX512-VNNI ``vpdpbusd``) are built for.
- Per-channel weight scales: one scale per output channel of each convolution; with per-tensor scales the
  channels with small weights lose most of their resolution.
- ``reduce_range`` (7-bit weights) only where the CPU lacks VNNI: AVX2's ``vpmaddubsw`` adds pairs of u8 x s8
  products into int16, which can saturate with full-range weights; VNNI accumulates in int32 and does not. Decided
  on the machine that quantises (``auto``); pass ``reduce_range=True`` when the model will run on AVX2-only CPUs.
- Calibration: MinMax over the calibration images by default (a few hundred images suffice for ResNets);
  ``percentile`` (99.999) clips outliers and is the alternative when MinMax loses accuracy.
- The fp32 graph first goes through ``quant_pre_process`` (shape inference and graph optimisation, e.g. BN folded
  into the convolutions), as ONNX Runtime recommends, so the quantised graph has no BN left to run in float.

The report holds top-1 agreement between INT8 and fp32 on a held-out set (``eval_dir``, else every 5th calibration
file, never used for calibration) and, where the images sit in class folders whose names are the model's classes
(or ImageNet WordNet IDs for 1000-class models, or class indices 0, 1, ...), the top-1 accuracy of both.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backends import OnnxRuntimeBackend
from .cpu import has_vnni
from .data.decode import ImageDecodeError
from .data.discover import expand_inputs
from .data.transforms import eval_transform, preprocess
from .errors import UserError, require
from .export import ONNX_INPUT
from .files import atomic_path, output_file
from .infer import create_backend, load_model, onnx_file
from .labels import class_mapping, model_class_keys
from .weights import Checkpoint

CALIB_METHODS = ("minmax", "percentile")
QUANTIZATION = "int8-qdq-u8s8-per-channel"


def quantize_onnx(fp32: Path, out: Path, batches: Iterable[np.ndarray], metadata: dict[str, str],
                  method: str = "minmax", reduce_range: bool | None = None) -> dict:
    """Quantise the fp32 ONNX model ``fp32`` with calibration ``batches`` (float32 NCHW) into ``out`` (atomically);
    ``metadata`` goes into its metadata_props with the quantisation settings added. Returns the settings."""
    require("onnxruntime", "INT8 quantisation")
    onnx = require("onnx", "INT8 quantisation")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if method not in CALIB_METHODS:
        raise UserError(f"unknown calibration method {method!r}; choose from: {', '.join(CALIB_METHODS)}")
    if reduce_range is None:
        reduce_range = not has_vnni()
    calib_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)
            self.count = 0

        def get_next(self):
            x = next(self.it, None)
            if x is None:
                return None
            self.count += len(x)
            return {ONNX_INPUT: np.ascontiguousarray(x, dtype=np.float32)}

    reader = Reader()
    with tempfile.TemporaryDirectory(prefix="resnet50-quant-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(pre))
        # the histogram calibrators print progress with print(): keep stdout for the report (--json)
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(str(pre), str(q), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calib_method,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                           **({"CalibPercentile": 99.999} if method == "percentile" else {})})
        if reader.count == 0:
            raise UserError("no calibration images could be read; give a folder of images with --calib")
        proto = onnx.load(str(q))
    settings = {"format": "QDQ", "activations": "uint8 asymmetric", "weights": "int8 symmetric per-channel",
                "reduce_range": reduce_range, "calibration": method, "calibration_images": reader.count}
    del proto.metadata_props[:]
    for k, v in {**metadata, "quantization": QUANTIZATION,
                 "quantization_settings": json.dumps(settings)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    with atomic_path(out) as tmp_out:
        onnx.save(proto, str(tmp_out))
    return settings


def _labels(files: Sequence[Path], root: Path, loaded: Checkpoint) -> list[int] | None:
    """Model class indices from the files' class folders (their parent folder's name, matched by
    ``labels.class_mapping``), or None when the files are not in class folders of the model's classes."""
    if any(f.parent == root for f in files):
        return None
    names = model_class_keys(loaded.classes, loaded.num_classes)
    folders = sorted({f.parent.name for f in files})
    try:
        mapping = dict(zip(folders, class_mapping(folders, names, loaded.num_classes, f"the folders of {root}")))
    except UserError:
        return None
    return [mapping[f.parent.name] for f in files]


def _arrays(files: Sequence[Path], loaded: Checkpoint) -> tuple[np.ndarray, list[int], list[str]]:
    """Preprocessed images, the positions of the files that decoded, and the failures."""
    transform = eval_transform(loaded.preprocessing, loaded.in_chans)
    arrays, kept, failed = [], [], []
    for i, f in enumerate(files):
        try:
            arrays.append(preprocess(f, loaded, transform))
            kept.append(i)
        except ImageDecodeError as e:
            failed.append(str(e))
    shape = (0, loaded.in_chans, loaded.size, loaded.size)
    return (np.stack(arrays) if arrays else np.zeros(shape, np.float32)), kept, failed


def _batched(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def _run(backend, x: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([backend(b) for b in _batched(x, batch)]) if len(x) else np.zeros((0, 0))


def split_images(calib: str | Path, eval_dir: str | Path | None, calib_count: int
                 ) -> tuple[Path, list[Path], Path, list[Path]]:
    """(calibration folder, ``calib_count`` of its images spread evenly, evaluation folder, its images): the
    evaluation images are ``eval_dir``'s, or every 5th image of ``calib``, then left out of calibration."""
    calib_root = Path(calib)
    if not calib_root.is_dir():
        raise UserError(f"--calib {calib} is not a folder; give a folder of images (class subfolders allowed)")
    files = expand_inputs([calib_root])
    if eval_dir is None:
        eval_root, eval_files = calib_root, files[4::5]
        calib_files = [f for i, f in enumerate(files) if i % 5 != 4]
    else:
        eval_root = Path(eval_dir)
        if not eval_root.is_dir():
            raise UserError(f"--eval {eval_dir} is not a folder; give a folder of images")
        eval_files, calib_files = expand_inputs([eval_root]), files
    if not calib_files or not eval_files:
        raise UserError(f"{calib} has {len(files)} image(s): too few to calibrate and hold out a set; "
                        "give at least 2 (better: a few hundred)")
    pick = np.unique(np.linspace(0, len(calib_files) - 1, min(calib_count, len(calib_files))).round().astype(int))
    return calib_root, [calib_files[i] for i in pick], eval_root, eval_files


def quantize(weights: str | Path, calib: str | Path, out: str | Path, eval_dir: str | Path | None = None,
             calib_count: int = 300, method: str = "minmax", reduce_range: bool | None = None,
             progress: bool = False) -> dict:
    """Quantise a checkpoint (or fp32 ONNX export) to INT8 with images from ``calib``; report accuracy on
    ``eval_dir`` (or a held-out fifth of ``calib``) before and after. Returns the report."""
    if calib_count < 1:
        raise UserError(f"--calib-count must be >= 1, got {calib_count}")
    out = output_file(out)
    if out.suffix != ".onnx":
        raise UserError(f"the INT8 model is an ONNX file: name the output {out.with_suffix('.onnx')}")
    loaded = load_model(weights)
    if loaded.quantization:
        raise UserError(f"{weights} is already quantised; give the fp32 checkpoint or fp32 ONNX export")
    calib_root, calib_files, eval_root, eval_files = split_images(calib, eval_dir, calib_count)
    t0 = time.perf_counter()
    fp32 = onnx_file(loaded)
    calib_x, _, calib_failed = _arrays(calib_files, loaded)
    bar = tqdm(total=len(calib_x), unit="img", desc="calibrating", disable=not progress, leave=False)

    # MinMax takes any batches; the percentile calibrator stacks every batch's activations into one histogram
    # array and fails on a short last batch (onnxruntime 1.32), so it gets one image at a time.
    def batches():
        for b in _batched(calib_x, 8 if method == "minmax" else 1):
            bar.update(len(b))
            yield b
    with bar:
        settings = quantize_onnx(fp32, out, batches(), loaded.metadata(), method, reduce_range)
    seconds = time.perf_counter() - t0

    eval_x, kept, eval_failed = _arrays(eval_files, loaded)
    labels = _labels([eval_files[i] for i in kept], eval_root, loaded)
    before = _run(create_backend("onnx", loaded), eval_x)
    after = _run(OnnxRuntimeBackend(out, "onnx-int8"), eval_x)
    p_before, p_after = before.argmax(1), after.argmax(1)
    report = {
        "out": str(out), "bytes": out.stat().st_size, "fp32_bytes": Path(fp32).stat().st_size,
        "arch": loaded.arch, "settings": settings, "seconds": round(seconds, 2),
        "calibration": {"folder": str(calib_root), "images": len(calib_x), "failed": len(calib_failed)},
        "evaluation": {"folder": str(eval_root), "held_out_from_calib": eval_dir is None, "images": len(kept),
                       "failed": len(eval_failed),
                       "top1_agreement": float(np.mean(p_before == p_after)),
                       "max_abs_logit_diff": float(np.max(np.abs(before - after))),
                       "top1_fp32": None, "top1_int8": None,
                       "labels": "class folders" if labels is not None else
                       "none (images are not in folders named after the model's classes)"},
    }
    if labels is not None:
        y = np.asarray(labels)
        report["evaluation"]["top1_fp32"] = float(np.mean(p_before == y))
        report["evaluation"]["top1_int8"] = float(np.mean(p_after == y))
    return report


def quantize_random(loaded: Checkpoint, out: Path, images: int = 32, seed: int = 0) -> dict:
    """Quantise ``loaded`` calibrated on random normal inputs: for speed measurements only (benchmarks of random-weight
    models), never for a model whose accuracy matters."""
    x = np.random.default_rng(seed).standard_normal((images, loaded.in_chans, loaded.size, loaded.size), dtype=np.float32)
    return quantize_onnx(onnx_file(loaded), out, _batched(x, 8), {**loaded.metadata(), "source": loaded.source +
                                                             " (INT8 calibrated on random inputs: speed only)"})
