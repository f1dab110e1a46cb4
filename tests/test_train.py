"""The training loop end to end on tiny data: a step lowers the loss, run folders, NaN handling, SIGKILL + exact
resume, DDP with two processes against one, the evaluation metrics."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnet50 import create_model, weights
from resnet50.evaluate import Metrics, predict_scores
from resnet50.train import TrainingDiverged, train

from .helpers import TINY, make_idx_dataset, tiny_cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_idx_dataset(tmp_path_factory.mktemp("idx"), n_train=160)


def test_amp_auto_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch):
    import resnet50.cpu
    import resnet50.engine

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for flags, want in (({"avx2", "avx512f"}, None), ({"avx512f", "avx512_bf16"}, torch.bfloat16),
                        ({"amx_bf16"}, torch.bfloat16), (set(), None)):
        monkeypatch.setattr(resnet50.cpu, "cpu_info", lambda f=flags: ("some cpu", frozenset(f)))
        assert resnet50.engine.autocast_dtype("auto", cpu) is want, flags
        assert resnet50.engine.autocast_dtype("auto", cuda) is torch.bfloat16
        assert resnet50.engine.autocast_dtype("off", cpu) is None
        assert resnet50.engine.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert resnet50.cpu.has_vnni() is False  # the last flags: none


def test_one_step_lowers_the_loss():
    torch.manual_seed(0)
    from resnet50.optim import build_optimizer, loss_fn, soft_targets
    from resnet50.recipes import OptimSpec

    m = create_model("resnet50", num_classes=4, in_chans=1, zero_init_residual=True)
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8) % 4
    o = OptimSpec(lr=0.005)
    opt = build_optimizer(m, o, 0.005)
    t = soft_targets(y, 4, 0.0)
    m.train()
    before = loss_fn(m(x), t, o)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn(m(x), t, o)
    assert after.item() < before.item()


def test_training_writes_a_complete_run_folder(data, tmp_path):
    res = train(tiny_cfg(data, tmp_path, "run", epochs=3), progress=False, log=lambda *a: None)
    run = Path(res["run_dir"])
    for f in ("config.json", "metrics.jsonl", "curves.png", "last.pt", "best.safetensors", "final.safetensors"):
        assert (run / f).stat().st_size > 0, f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["train_images"] == 144 and 0 <= rows[0]["data_share"] <= 1  # 160 - 10 % held out
    assert rows[2]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_top1"] > 0.5  # four textures: well above chance (0.25) after 27 steps
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 0.064
    ck = weights.load(run / "best.safetensors")
    assert ck.classes == [str(i) for i in range(4)] and ck.config.in_chans == 1
    assert (ck.preprocessing.resize, ck.preprocessing.crop) == (28, 32)  # 28 px centred on a 32 px canvas


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    import resnet50.train as tr

    real, calls = tr.loss_fn, {"n": 0}

    def poisoned(logits, targets, o):
        calls["n"] += 1
        loss = real(logits, targets, o)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(tr, "loss_fn", poisoned)
    with pytest.raises(TrainingDiverged, match="the loss became nan at step 3"):
        train(tiny_cfg(data, tmp_path, "nan", checkpoint_every=1), progress=False, log=lambda *a: None)
    state = torch.load(tmp_path / "nan" / "last.pt", weights_only=True)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _cli_train(data, out, name, *extra):
    return [sys.executable, "-m", "resnet50", "train", "--no-progress", "--data", str(data), "--out", str(out),
            "--name", name, "--deterministic", "true", "--epochs", "3", *[str(a) for k, v in TINY.items()
            if k not in ("epochs",) for a in (f"--{k}", v)], *extra]


def test_sigkill_then_resume_is_exact(data, tmp_path):
    ref = subprocess.run(_cli_train(data, tmp_path, "ref"), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = subprocess.Popen(_cli_train(data, tmp_path, "killed", "--checkpoint_every", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a mid-epoch checkpoint of the second epoch exists
        if last.exists():
            try:
                st = torch.load(last, weights_only=True)
                if st["step"] >= 12:
                    break
            except Exception:
                pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    st = torch.load(last, weights_only=True)  # the checkpoint survived the kill whole
    assert st["step"] < 27, "the run finished before it could be killed"
    res = subprocess.run([sys.executable, "-m", "resnet50", "train", "--no-progress", "--resume", str(last.parent)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]

    a = weights.load(tmp_path / "ref" / "final.safetensors").model.state_dict()
    b = weights.load(tmp_path / "killed" / "final.safetensors").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(ra, rb, strict=True):
        for k in ("train_loss", "train_top1", "val_loss", "val_top1", "step", "lr"):
            assert x[k] == y[k], k


def test_resume_refuses_a_contradicting_config(data, tmp_path):
    train(tiny_cfg(data, tmp_path, "r", epochs=1), progress=False, log=lambda *a: None)
    bad = subprocess.run([sys.executable, "-m", "resnet50", "train", "--resume", str(tmp_path / "r"),
                          "--arch", "resnet32_cifar"], capture_output=True, text=True)
    assert bad.returncode == 2 and "model.arch" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "resnet50", "train", "--resume", str(tmp_path / "nothing")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no checkpoint" in bad.stderr


def test_bad_data_is_a_clear_error_before_training(tmp_path):
    out = subprocess.run([sys.executable, "-m", "resnet50", "train", "--data", str(tmp_path / "missing")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # a refused run leaves no run folder behind
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "resnet50", "train", "--data", str(tmp_path / "empty")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_ddp_two_processes_match_one(data, tmp_path):
    common = ["--no-progress", "--data", str(data), "--out", str(tmp_path), "--deterministic", "true",
              *[str(a) for k, v in TINY.items() for a in (f"--{k}", v)]]
    single = subprocess.run([sys.executable, "-m", "resnet50", "train", "--name", "one", *common],
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "resnet50", "train", "--name", "two", *common], capture_output=True, text=True, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    ra = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(ra) == len(rb) == 2
    for a, b in zip(ra, rb):
        # the same global batch of the same samples per step (8 per process), averaged gradients; BN statistics
        # are per process (SyncBN is GPU-only), so the runs agree closely but not bit for bit
        assert (a["step"], a["train_images"]) == (b["step"], b["train_images"]) == (a["epoch"] * 9, 144)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.03)
        assert abs(b["val_top1"] - a["val_top1"]) <= 0.15
    assert (tmp_path / "two" / "final.safetensors").exists() and not (tmp_path / "two" / "rank1").exists()


def test_metrics_against_hand_computed_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 1, 1, 2])
    m = Metrics(3)
    m.update(probs, labels)
    r = m.result(["a", "b", "c"])
    assert r["top1"] == 0.5  # samples 0 and 3 right
    assert r["top5"] == 1.0
    assert r["loss"] == pytest.approx(-(torch.tensor([0.7, 0.3, 0.4, 0.6]).log().mean().item()))
    assert r["confusion_matrix"] == [[1, 0, 0], [1, 0, 1], [0, 0, 1]]
    assert r["per_class_accuracy"] == {"a": 1.0, "b": 0.0, "c": 1.0}


def test_ten_crop_and_flip_average_softmax_scores():
    class Fixed(torch.nn.Module):  # logits = mean pixel of each channel: views are told apart
        def forward(self, x):
            return x.mean((2, 3))

    x = torch.randn(2, 10, 3, 4, 4)
    got = predict_scores(Fixed(), x)
    want = torch.stack([Fixed()(x[:, v]).softmax(1) for v in range(10)], 1).mean(1)
    assert torch.allclose(got, want)
    img = torch.randn(2, 3, 4, 4)
    img[..., 0] += 5  # make the mirror image differ
    flip = predict_scores(Fixed(), img, "flip")
    assert torch.allclose(flip, Fixed()(img).softmax(1))  # means are flip-invariant
