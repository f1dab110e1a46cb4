"""resnet50 benchmark --loadgen: MLCommons' LoadGen (mlperf_loadgen) drives a backend on a tiny model for about a
second; its verdict and percentiles are read back from its own logs and set beside ours."""

import json
import re
import sys

import pytest

from resnet50.bench import loadgen_benchmark, loadgen_settings, parse_loadgen_log
from resnet50.cli import main
from resnet50.errors import UserError

TINY = dict(arch="resnet20_cifar", num_classes=3, size=32, backend="eager", threads=2, samples=16)


def consistent(report: dict) -> dict:
    v = report["loadgen"]
    assert v["result"] in ("VALID", "INVALID")
    assert (v["result"] == "VALID") == all(v["checks"].values()), v["checks"]
    assert {"min_duration", "min_queries", "early_stopping"} <= set(v["checks"])
    assert v["errors"] == 0 and v["loadgen_version"]
    lat = v["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    ours = report["ours"]["latency_ms"]
    # the same intervals, timed by LoadGen (issue to completion) and by us (issue callback to completion)
    assert ours["p50"] == pytest.approx(lat["p50"], rel=0.25, abs=2.0)
    return v


def test_single_stream_is_valid_and_reports_its_settings():
    r = loadgen_benchmark("SingleStream", duration_s=1.0, **TINY)
    v = consistent(r)
    assert r["settings"]["min_duration_ms"] == v["effective"]["min_duration_ms"] == 1000
    assert r["settings"]["min_query_count"] == v["effective"]["min_query_count"] == 64
    assert r["settings"]["expected_latency_ms"] == pytest.approx(r["calibration"]["batch1_fastest_ms"] / 2, rel=1e-3)
    assert v["result"] == "VALID", v  # the expectation errs fast, so the run outlasts the minimum duration
    assert r["ours"]["samples"] == r["ours"]["batches"] == v["query_count"] >= 64  # one sample per query


def test_offline_sends_one_query_sized_from_the_calibration():
    r = loadgen_benchmark("Offline", duration_s=0.5, max_batch=8, **TINY)
    v = consistent(r)
    assert v["query_count"] == 1 and r["settings"]["min_query_count"] == 1
    assert r["settings"]["expected_qps"] == pytest.approx(2 * r["calibration"]["batch_img_s"], rel=1e-3)
    # LoadGen sends 1.1 x expected QPS x duration samples, all in the one query; we batch them by 8 at most
    assert r["ours"]["samples"] == v["effective"]["samples_per_query"]
    assert r["ours"]["samples"] == pytest.approx(1.1 * 0.5 * r["settings"]["expected_qps"], abs=1)
    assert r["ours"]["batches"] >= r["ours"]["samples"] / 8


def test_server_reports_its_target_and_the_bound_check():
    r = loadgen_benchmark("Server", duration_s=0.5, max_batch=8, target_qps=250, target_latency_ms=2000, **TINY)
    v = consistent(r)
    s = r["settings"]
    assert (s["target_qps"], s["target_latency_ms"], s["min_query_count"]) == (250, 2000, 500)
    assert v["effective"]["target_qps"] == 250 and v["effective"]["target_latency_ns"] == 2_000_000_000
    assert "perf_constraints" in v["checks"] and r["ours"]["samples"] == v["query_count"] >= 500


def test_cli_json_and_kept_logs(tmp_path, capsys):
    rc = main(["benchmark", "--loadgen", "Offline", "--arch", "resnet20_cifar", "--num-classes", "3", "--size", "32",
               "--backend", "eager", "--batch", "4", "--loadgen-duration", "0.3", "--loadgen-out", str(tmp_path),
               "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    summary = (tmp_path / "mlperf_log_summary.txt").read_text()
    assert re.search(r"Result is : (\w+)", summary).group(1) == report["loadgen"]["result"]
    assert report["loadgen"]["logs"] == str(tmp_path) and report["calibration"]["max_batch"] == 4
    assert report["versions"]["mlcommons-loadgen"] and report["scenario"] == "Offline"


def test_parse_log_lines(tmp_path):
    lines = [{"key": "result_validity", "value": "INVALID"}, {"key": "result_min_duration_met", "value": False},
             {"key": "result_min_queries_met", "value": True}, {"key": "early_stopping_met", "value": True},
             {"key": "result_90.00_percentile_latency_ns", "value": 2_500_000}, {"key": "num_errors", "value": 0}]
    detail = tmp_path / "mlperf_log_detail.txt"
    detail.write_text("".join(f":::MLLOG {json.dumps(x)}\n" for x in lines) + "not a log line\n")
    v = parse_loadgen_log(detail)
    assert v["result"] == "INVALID" and v["latency_ms"] == {"p90": 2.5}
    assert v["checks"] == {"min_duration": False, "min_queries": True, "early_stopping": True}
    detail.write_text(":::MLLOG " + json.dumps(lines[1]) + "\n")
    with pytest.raises(UserError, match="LoadGen wrote no result"):
        parse_loadgen_log(detail)


def test_errors_are_one_line(capsys, monkeypatch):
    rc = main(["benchmark", "--loadgen", "Server", "--arch", "resnet20_cifar", "--backend", "eager,onnx"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--loadgen drives one backend" in err
    with pytest.raises(UserError, match="--loadgen-duration must be > 0"):
        loadgen_settings("Offline", {"batch1_latency_ms": 1, "batch1_fastest_ms": 1, "batch_img_s": 1}, 0)
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"pip install mlcommons-loadgen \(or the extra: pip install "
                                        r"'resnet50\[loadgen\]'\)") as e:
        loadgen_benchmark("Offline", **TINY)
    assert "\n" not in str(e.value)
