"""JPEG decoding for the evaluation input (shorter side 256, centre crop 224): img/s on one core, by decoder.

    python benchmarks/decode.py [--runs 7] [--images 48]

Pipelines, each from the file's bytes to a 224 x 224 RGB image, one thread:

    baseline          Image.open(path).convert("RGB").resize((224, 224))   (plain Pillow, squashes the aspect)
    pillow            decode_image (Pillow, full size) -> Resize(256) -> CenterCrop(224)   (this package's default)
    pillow+draft      the same with draft_size=256: Pillow's DCT scaling (TransformConfig(jpeg_draft=True))
    simplejpeg        simplejpeg.decode_jpeg (full size) -> Resize -> CenterCrop             (if installed)
    simplejpeg+scale  simplejpeg.decode_jpeg(min_width, min_height) -> ...                   (its DCT scaling)
    turbojpeg         PyTurboJPEG decode (full size) -> ...; turbojpeg+scale with scaling_factor

The images are made here: photo-like content (smooth colour fields, edges and sensor-like noise), JPEG quality 90,
4:2:0, at ImageNet's typical 500 x 375 and at a camera-like 2000 x 1500. A run decodes every image once per
pipeline (pipelines interleaved, so drift hits all alike); the figure is the median run, after one warm-up run.
"diff" is the mean absolute difference (0-255) of the 224 x 224 output from the pillow pipeline's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image, features  # noqa: E402

from resnet50.data.decode import decode_image  # noqa: E402
from resnet50.data.transforms import CenterCrop, Resize  # noqa: E402

RESIZE, CROP = 256, 224
_fit = [Resize(RESIZE), CenterCrop(CROP)]


def fit(img: Image.Image) -> Image.Image:
    for step in _fit:
        img = step(img)
    return img


def photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth random colour fields, a few hard-edged shapes and Gaussian noise: compresses like a photo."""
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(img).astype(np.float32)
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 10, width // 3), rng.integers(height // 10, height // 3)
        array[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    array += rng.normal(0, 6, array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def make_images(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{size[0]}x{size[1]}_{i:03d}.jpg"
        photo(*size, rng).save(path, "JPEG", quality=90, subsampling="4:2:0")
        paths.append(path)
    return paths


def pipelines() -> dict[str, Callable[[Path], Image.Image]]:
    def read(path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    found: dict[str, Callable[[Path], Image.Image]] = {
        "baseline": lambda p: Image.open(p).convert("RGB").resize((CROP, CROP)),
        "pillow": lambda p: fit(decode_image(read(p))),
        "pillow+draft": lambda p: fit(decode_image(read(p), draft_size=RESIZE)),
    }
    try:
        import simplejpeg

        def simple_scaled(p: Path) -> Image.Image:
            data = read(p)
            w, h = simplejpeg.decode_jpeg_header(data)[:2]
            s = min(w, h) / RESIZE  # ask for the image's aspect at the target scale, as decode_image does
            return fit(Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=round(w / s),
                                                              min_height=round(h / s))))

        found["simplejpeg"] = lambda p: fit(Image.fromarray(simplejpeg.decode_jpeg(read(p), colorspace="RGB")))
        found["simplejpeg+scale"] = simple_scaled
    except ImportError:
        pass
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        tj = TurboJPEG()
        factors = sorted((f for f in tj.scaling_factors if f[0] <= f[1]), key=lambda f: f[0] / f[1])

        def turbo_scaled(p: Path) -> Image.Image:
            data = read(p)
            w, h = tj.decode_header(data)[:2]
            # the smallest scale that keeps the shorter side >= RESIZE
            factor = next(f for f in factors if min(w, h) * f[0] / f[1] >= RESIZE) if min(w, h) >= RESIZE else (1, 1)
            return fit(Image.fromarray(tj.decode(data, pixel_format=TJPF_RGB, scaling_factor=factor)))

        found["turbojpeg"] = lambda p: fit(Image.fromarray(tj.decode(read(p), pixel_format=TJPF_RGB)))
        found["turbojpeg+scale"] = turbo_scaled
    except (ImportError, RuntimeError, OSError):
        pass
    return found


def measure(paths: list[Path], pipes: dict[str, Callable], runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in pipes}
    for run in range(runs + 1):
        for name, pipe in pipes.items():
            start = time.perf_counter()
            for p in paths:
                pipe(p)
            if run:  # run 0 warms caches
                times[name].append(time.perf_counter() - start)
    return times


def versions() -> str:
    parts = [f"Python {platform.python_version()}", f"Pillow {PIL.__version__} (libjpeg-turbo "
             f"{features.version('libjpeg_turbo')})", f"numpy {np.__version__}"]
    for dist in ("simplejpeg", "PyTurboJPEG"):
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return ", ".join(parts)


def cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        fields = {k.strip(): v for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
        name, family, model = (fields.get(k, "?").strip() for k in ("model name", "cpu family", "model"))
        return f"{name}, family {family} model {model}, {os.cpu_count()} logical CPUs"
    except OSError:
        return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--images", type=int, default=48, help="images per size (a quarter of it at 2000 x 1500)")
    args = parser.parse_args(argv)
    pipes = pipelines()
    print(f"# {cpu()}; {versions()}; median of {args.runs} runs, 1 thread\n")
    with tempfile.TemporaryDirectory() as tmp:
        for size, count in (((500, 375), args.images), ((2000, 1500), max(args.images // 4, 1))):
            paths = make_images(Path(tmp), count, size, seed=size[0])
            mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
            reference = [np.asarray(pipes["pillow"](p), dtype=np.int16) for p in paths[:8]]
            times = measure(paths, pipes, args.runs)
            base = len(paths) / statistics.median(times["pillow"])
            print(f"{size[0]} x {size[1]}, {count} JPEGs of {mean_kb:.0f} KiB on average")
            print("| pipeline | img/s (1 core) | spread (min-max) | vs pillow | diff |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for name, t in times.items():
                rate = len(paths) / statistics.median(t)
                lo, hi = len(paths) / max(t), len(paths) / min(t)
                diff = "n/a" if name == "baseline" else "{:.2f}".format(np.mean([  # baseline: other geometry
                    np.abs(np.asarray(pipes[name](p), dtype=np.int16) - r).mean() for p, r in zip(paths, reference)]))
                print(f"| {name} | {rate:.0f} | {lo:.0f}-{hi:.0f} | {rate / base:.2f}x | {diff} |")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
