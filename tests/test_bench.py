"""resnet50.bench: the report's schema and the arithmetic that ties its figures together, on a tiny config."""

import json

import pytest
import torch

from resnet50 import create_model
from resnet50 import bench
from resnet50.bench import SCHEMA, benchmark, latency_stats, matmul_peak
from resnet50.cli import main
from resnet50.summary import summarize


@pytest.fixture(scope="module")
def report(onnx_cache):
    return benchmark(arch="resnet20_cifar", num_classes=3, size=32, backends=["eager", "onnx", "onnx-int8"],
                     batches=[1, 4], warmup=1, runs=5, peak_n=512)


def test_schema_and_model_facts(report):
    assert report["schema"] == SCHEMA
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["onnxruntime"]
    assert report["hardware"]["physical_cores"] >= 1 and report["hardware"]["cpu"]
    flops = summarize(create_model("resnet20_cifar", num_classes=3), 32)["flops"]
    assert report["model"]["flops_per_image"] == flops and report["model"]["size"] == 32
    assert report["default_backend"] == "onnx"
    assert [(r["backend"], r["batch"]) for r in report["results"]] == [
        (b, n) for b in ("eager", "onnx", "onnx-int8") for n in (1, 4)]


def test_figures_are_consistent(report):
    peak = report["peak"]
    assert peak["gflops"] == max(v for k, v in peak.items() if k.endswith("_gflops") and k != "gflops" and v) > 0
    assert report["limit_img_s"] == pytest.approx(peak["gflops"] * 1e9 / report["model"]["flops_per_image"])
    for r in report["results"]:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["throughput_img_s"] == pytest.approx(r["batch"] * 1e3 / lat["p50"])
        assert r["batch"] * 1e3 / lat["max"] <= r["throughput_img_s"] <= r["best_img_s"]
        assert r["best_img_s"] == pytest.approx(r["batch"] * 1e3 / lat["min"])
        assert r["pct_of_limit"] == pytest.approx(100 * r["throughput_img_s"] / report["limit_img_s"])
        assert r["scenario"] == ("SingleStream" if r["batch"] == 1 else "Offline") and r["runs"] == 5
        assert r["precision"] == ("int8" if r["backend"] == "onnx-int8" else "fp32")
    thr = {(r["backend"], r["batch"]): r["throughput_img_s"] for r in report["results"]}
    for b in ("1", "4"):
        c = report["comparisons"][b]
        best = max(("eager", "onnx"), key=lambda k: thr[(k, int(b))])
        assert c["best_fp32"] == best and c["default_vs_onnx"] == pytest.approx(1.0)
        assert c["int8_vs_best_fp32"] == pytest.approx(thr[("onnx-int8", int(b))] / thr[(best, int(b))])


def test_interleaving_in_turns(monkeypatch):
    """Every (backend, batch) gets `warmup` untimed calls, then `turn` timed ones, round after round, `runs` timed in
    all (the last turn shorter): a backend is timed only after it has run a few calls since another one ran."""
    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __call__(self, x):
            calls.append((self.name, len(x)))

    monkeypatch.setattr(bench, "create_backend", lambda name, loaded, threads: Recorder(name))
    loaded = bench.load_model(None, "resnet20_cifar", 32, num_classes=3)
    times, setup = bench.time_backends(loaded, ["eager", "onnx"], [1, 2], warmup=2, runs=7, threads=1, int8=None,
                                       progress=False, turn=3)
    assert {k: len(v) for k, v in times.items()} == {(n, b): 7 for n in ("eager", "onnx") for b in (1, 2)}
    first_calls = [("eager", 1), ("eager", 2), ("onnx", 1), ("onnx", 2)]
    rounds = [(2 + 3) * [k] for k in first_calls] * 2 + [(2 + 1) * [k] for k in first_calls]
    assert calls == first_calls + [c for r in rounds for c in r]
    assert set(setup) == {"eager", "onnx"}


def test_latency_stats_percentiles():
    s = latency_stats([0.001 * i for i in range(1, 101)])
    assert (s["min"], s["max"]) == pytest.approx((1.0, 100.0))
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)


def test_matmul_peak_measures_torch():
    p = matmul_peak(n=256, repeats=3, shapes=((64, 576, 32),))
    assert p["torch_mm_gflops"] > 0 and p["n"] == 256 and p["gflops"] >= p["torch_mm_gflops"]
    assert list(p["per_shape"]) == ["256x256x256", "64x576x32"]
    # an engine's rate is its fastest shape
    assert p["torch_mm_gflops"] == max(r["torch_mm_gflops"] for r in p["per_shape"].values())


def test_cli_json_and_errors(capsys):
    rc = main(["benchmark", "--arch", "resnet20_cifar", "--size", "32", "--backend", "eager", "--batch", "2",
               "--runs", "3", "--warmup", "0", "--peak-size", "256", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and [(x["backend"], x["batch"], x["runs"]) for x in r["results"]] == [("eager", 2, 3)]
    rc = main(["benchmark", "--arch", "resnet20_cifar", "--backend", "eager,tvm"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "unknown backend 'tvm'" in err
    rc = main(["benchmark", "--arch", "resnet20_cifar", "--batch", "1,x"])
    assert rc == 2 and "comma-separated list" in capsys.readouterr().err


def test_comparisons_group_backends_by_precision():
    from resnet50.bench import comparisons, precision

    assert [precision(b) for b in ("onnx", "eager-bf16", "openvino-int8")] == ["fp32", "bf16", "int8"]
    rows = [{"backend": b, "batch": 1, "throughput_img_s": v} for b, v in
            (("onnx", 50.0), ("eager", 30.0), ("eager-bf16", 45.0), ("openvino-bf16", 65.0), ("onnx-int8", 140.0))]
    c = comparisons(rows, "onnx")["1"]
    assert (c["best_fp32"], c["best_bf16"], c["best_int8"]) == ("onnx", "openvino-bf16", "onnx-int8")
    assert c["bf16_vs_best_fp32"] == pytest.approx(1.3) and c["int8_vs_best_fp32"] == pytest.approx(2.8)
    assert c["default_vs_onnx"] == 1.0
