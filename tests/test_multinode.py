"""Multi-node training with torchrun: two "nodes" on this machine (one process each, c10d rendezvous on
127.0.0.1, gloo) train exactly as one node with two processes does, in deterministic mode.

The rendezvous store is hosted by the test, as a cluster's store outside the training nodes would be: when one
node's torchrun hosts it, that node can finish and close the store while the other node's torchrun is still
polling it, which then exits 1 after its worker succeeded (pytorch/pytorch#118891; it failed CI once)."""

import json
import os
import socket
import subprocess
import sys

from datetime import timedelta

import torch
from torch.distributed import TCPStore

from resnet50 import weights

from .helpers import TINY, kill_leftovers, make_idx_dataset

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(data, out, name) -> list[str]:
    return ["-m", "resnet50", "train", "--no-progress", "--data", str(data), "--out", str(out), "--name", name,
            "--deterministic", "true", *[str(a) for k, v in TINY.items() for a in (f"--{k}", v)]]


def rows(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_nodes_train_exactly_as_one_node_with_two_processes(tmp_path):
    data = make_idx_dataset(tmp_path / "idx", n_train=160)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([*TORCHRUN, "--standalone", "--nproc-per-node", "2", *train_args(data, tmp_path, "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    # what each node of a cluster runs, with the first node's address as the rendezvous endpoint
    port = free_port()
    store = TCPStore("127.0.0.1", port, is_master=True, multi_tenant=True, timeout=timedelta(seconds=60))
    nodes = [subprocess.Popen([*TORCHRUN, "--nnodes", "2", "--node-rank", str(r), "--nproc-per-node", "1",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "t",
                               "--rdzv-conf", "is_host=false", "--local-addr", "127.0.0.1",
                               *train_args(data, tmp_path, "two")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in (0, 1)]
    try:
        outs = [n.communicate(timeout=300) for n in nodes]
    finally:
        for n in nodes:
            n.kill()
        kill_leftovers(str(tmp_path))
        del store
    for n, (_, err) in zip(nodes, outs):
        assert n.returncode == 0, err[-3000:]

    a, b = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [9, 18]  # 144 images / batch 16, two epochs
    for x, y in zip(a, b):
        for k in ("train_loss", "train_top1", "train_images", "val_loss", "val_top1", "lr"):
            assert x[k] == y[k], k
    wa = weights.load(tmp_path / "one" / "final.safetensors").model.state_dict()
    wb = weights.load(tmp_path / "two" / "final.safetensors").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
