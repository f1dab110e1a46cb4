import json
import subprocess
import sys

import pytest

from resnet50 import create_model
from resnet50.summary import format_report, summarize

# MACs of conv + fc layers at 224 px, as torchvision publishes them (GFLOPS column, which counts MACs).
MACS_224 = {"resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089, "resnet101": 7.801, "resnet152": 11.514}


@pytest.mark.parametrize("name,gmacs", MACS_224.items())
def test_macs_match_published(name, gmacs):
    assert summarize(create_model(name), 224)["macs"] / 1e9 == pytest.approx(gmacs, abs=0.0006)


def test_resnet50_v1_and_v15_macs_and_table():
    r = summarize(create_model("resnet50", variant="v1"), 224)
    assert r["macs"] == 3_857_973_248  # the paper's "3.8 x 10^9"
    assert r["macs_by_variant"]["v1.5"] == 4_089_184_256
    assert r["flops"] == 2 * r["macs"]
    assert r["layers"]["breakdown"] == [1, 9, 12, 18, 9, 1] and r["layers"]["weighted"] == 50
    assert r["layers"]["block_convolutions"] == 48 and r["layers"]["projection_shortcuts"] == 4
    assert r["params"] == 25_557_032
    # the stem conv by hand: 112*112 outputs x 64 channels x 3*7*7 MACs each
    assert r["stages"][0]["macs"] == 112 * 112 * 64 * 3 * 49


def test_shapes_at_300px():
    r = summarize(create_model("resnet50"), 300)
    shapes = {s["name"]: s["output"] for s in r["stages"]}
    assert shapes["conv1"] == (64, 150, 150) and shapes["maxpool"] == (64, 75, 75)
    assert [shapes[f"layer{i}"] for i in range(1, 5)] == [(256, 75, 75), (512, 38, 38), (1024, 19, 19), (2048, 10, 10)]
    assert shapes["fc"] == (1000,)
    text = format_report(r)
    assert "1 + 9 + 12 + 18 + 9 + 1 = 50" in text and "25,557,032" in text


@pytest.mark.parametrize("n", [3, 5, 9])
def test_cifar_layer_count_is_6n_plus_2(n):
    r = summarize(create_model(f"resnet{6 * n + 2}_cifar"), 32)
    assert r["layers"]["weighted"] == 6 * n + 2
    assert r["layers"]["projection_shortcuts"] == 0


def test_cli_summary_json_and_errors():
    out = subprocess.run([sys.executable, "-m", "resnet50", "summary", "--variant", "v1", "--size", "300", "--json"],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    assert r["macs_by_variant"]["v1"] < r["macs_by_variant"]["v1.5"]
    assert r["input"] == [3, 300, 300]
    for args, msg in ((["--arch", "resnet51"], "did you mean 'resnet50'"), (["--size", "16"], "32 px minimum")):
        bad = subprocess.run([sys.executable, "-m", "resnet50", "summary", *args], capture_output=True, text=True)
        assert bad.returncode == 2 and msg in bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
