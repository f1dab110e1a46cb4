"""benchmarks/gpu.py, the prepared GPU measurement, runs its every code path on CPU at toy sizes."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_smoke_mode_runs_on_cpu(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path / "gpu.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert json.loads(out.stdout) == result and result["smoke"] is True
    for key in ("synthetic_eager", "real_loader"):
        r = result["train"][key]
        assert r["median_img_s"] > 0 and r["runs"] == 2 and r["min"] <= r["median_img_s"] <= r["max"]
    assert result["inference"]["eager_fp32"]["median_img_s"] > 0
