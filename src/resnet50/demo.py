"""The first command a newcomer runs: train ResNet-50 v1.5 on the embedded Fashion-MNIST subset, evaluate it on the
official test split (the t10k IDX files, never used for training or tuning), and classify a few image files."""

from __future__ import annotations

import time
from pathlib import Path

from .data import build_dataset
from .errors import UserError
from .evaluate import evaluate_weights
from .files import output_dir, write_json
from .infer import create_backend, load_model
from .predict import predict_files
from .recipes import resolve
from .train import train

DEFAULT_TEST_DATA = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
# The demo trains in a time budget, so that the whole demo ends within 10 minutes on any 2-core CPU: the budget
# covers training, its validation and the final t10k evaluation (planned at the measured training speed: on the
# AVX2-only Zen 2 of docs/benchmarks.md, 59 img/s, the flip-TTA evaluation alone took 2 min 19-25 s, so a slow CPU
# gives training less time), leaving about half a minute for start-up and the samples; --epochs is the upper bound
# on a fast CPU. It validates once, at the end (eval_every = the epoch bound): each validation cost about 8 % of an
# epoch, time the budget now spends on training steps. Measured on the CPU kinds in docs/benchmarks.md.
DEMO_BUDGET = {"time_budget": 9.0, "epochs": 14, "eval_every": 14}
TEST_IMAGES = 10_000  # t10k
EMBEDDED_VAL_IMAGES = 2_000  # the fallback without t10k


def run_demo(out: str = "runs", test_data: str = DEFAULT_TEST_DATA, overrides: dict | None = None,
             samples: int = 8, progress: bool = True, log=print) -> dict:
    have_test = (Path(test_data) / "t10k-images-idx3-ubyte.gz").exists() or \
        (Path(test_data) / "t10k-images-idx3-ubyte").exists()
    cfg = resolve("demo", {**DEMO_BUDGET, "out": out, **(overrides or {})})
    if cfg.run.time_budget and "budget_after_images" not in (overrides or {}):
        # the final evaluation's forward passes: t10k, or the embedded validation split, with the recipe's TTA
        cfg.run.budget_after_images = (TEST_IMAGES if have_test else EMBEDDED_VAL_IMAGES) * \
            (2 if cfg.run.tta_flip else 1)
    if cfg.run.time_budget:
        log(f"the demo trains and evaluates in a budget of {cfg.run.time_budget:g} minutes (as many training "
            f"steps as fit, at most {cfg.optim.epochs} epochs), then classifies a few files: about "
            f"{cfg.run.time_budget + 0.5:.0f} minutes in all, ending about "
            f"{time.strftime('%H:%M', time.localtime(time.time() + 60 * (cfg.run.time_budget + 0.5)))}")
    t0 = time.perf_counter()
    trained = train(cfg, progress=progress, log=log)
    train_s = time.perf_counter() - t0
    run_dir = Path(trained["run_dir"])
    best = run_dir / "best.safetensors"

    if have_test:
        data, split = test_data, "test"
    else:
        log(f"no Fashion-MNIST test files at {test_data} (apt-get install dataset-fashion-mnist); "
            "evaluating on the embedded held-out validation split instead")
        data, split = "embedded", "val"
    tta = "flip" if cfg.run.tta_flip else "none"  # the test split is read as validation was
    result = evaluate_weights(str(best), data, split, tta=tta, out=str(run_dir / "eval"), progress=progress)
    log(f"{split} set ({result['samples']} images of {data}{', flip TTA' if tta == 'flip' else ''}): "
        f"top-1 {result['top1']:.2%}, top-5 {result['top5']:.2%}")

    # a few real image files, classified through the same path as 'resnet50 predict'
    ds = build_dataset(data, split)
    sample_dir = output_dir(run_dir / "samples")
    files = []
    for i in range(0, len(ds), max(1, len(ds) // samples))[:samples]:
        img, label = ds[i]
        path = sample_dir / f"{i:05d}_{ds.classes[label].replace('/', '-').replace(' ', '_')}.png"
        img.save(path)
        files.append(path)
    loaded = load_model(best)
    preds = predict_files(files, loaded, create_backend("eager", loaded), k=3)
    for p in preds:
        top = p.top[0]
        log(f"  {Path(p.file).name:<28} -> {top['label']} ({top['probability']:.1%})")
    if not files:
        raise UserError("the evaluation split is empty")
    summary = {
        "run_dir": str(run_dir), "train_seconds": train_s, "epochs": trained.get("epoch"),
        "best_val_top1": trained["best_val_top1"], "eval_data": data, "eval_split": split,
        "eval_top1": result["top1"], "eval_top5": result["top5"], "eval_tta": tta,
        "predictions": [p.to_dict() for p in preds],
    }
    write_json(run_dir / "demo.json", summary)
    return summary
