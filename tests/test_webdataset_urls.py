"""WebDataset shards from URLs: a real HTTP server on 127.0.0.1 (http.server in a thread) serving tar shards, read
through fsspec (aiohttp) and through urllib; ``pipe:`` commands; connections dropped mid-shard; rank and worker
splitting and exact resume over HTTP. Every sample is identified by its pixel value, and counted exactly."""

import functools
import io
import socket
import tarfile
import threading
import time
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet50.data import build_loader, webdataset
from resnet50.data.decode import ImageDecodeError, Skipped
from resnet50.data.webdataset import WebDataset, read_shard
from resnet50.errors import UserError

SHARDS, PER_SHARD = 4, 6


def write_shards(root: Path) -> Path:
    """SHARDS shards of PER_SHARD samples; sample n is a 4 x 4 gray PNG of value 10 n, label n % 3."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(SHARDS):
        with tarfile.open(root / f"shard-{s:06d}.tar", "w") as tar:
            for i in range(PER_SHARD):
                n = s * PER_SHARD + i
                buf = io.BytesIO()
                Image.new("L", (4, 4), 10 * n).save(buf, "PNG")
                for name, payload in ((f"{n:04d}.png", buf.getvalue()), (f"{n:04d}.cls", str(n % 3).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


class ShardHandler(SimpleHTTPRequestHandler):
    """Serves the folder; ``server.drops[path]`` GETs of a path send the full Content-Length, then half the bytes,
    then close the connection (-1: every GET)."""

    def do_GET(self):
        self.server.gets[self.path] += 1
        left = self.server.drops.get(self.path, 0)
        if not left:
            return super().do_GET()
        self.server.drops[self.path] = left - 1 if left > 0 else left
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture
def http(shard_dir):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(ShardHandler, directory=str(shard_dir)))
    server.gets, server.drops = Counter(), {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(params=["fsspec", "urllib"])
def client(request, monkeypatch):
    """Read http:// through fsspec (aiohttp) and through urllib, the fallback without aiohttp."""
    monkeypatch.setattr(webdataset, "_http_via_fsspec", lambda: request.param == "fsspec")
    monkeypatch.setattr(webdataset, "RETRY_DELAY_S", 0.0)
    return request.param


def pattern(url: str) -> str:
    return f"{url}/shard-{{000000..{SHARDS - 1:06d}}}.tar"


def value(img) -> int:
    return int(np.asarray(img)[0, 0]) // 10


def keys(samples) -> list[int]:
    return [int(s.key) for s in samples]


def test_http_shards_give_every_sample_once(http, client):
    ds = WebDataset(pattern(http.url), in_chans=1)
    assert ds.classes == ["a", "b", "c"]  # from the classes.txt beside the shards, over HTTP
    assert len(ds.shards) == SHARDS and ds.shards[1] == f"{http.url}/shard-000001.tar"
    got = [(value(img), label) for img, label in ds]
    assert got == [(n, n % 3) for n in range(SHARDS * PER_SHARD)]


def test_connection_dropped_mid_shard_is_retried_without_loss_or_repeat(http, client):
    http.drops["/shard-000001.tar"] = 2  # the first two GETs break off half-way
    ds = WebDataset(pattern(http.url), in_chans=1, classes=["a", "b", "c"])
    samples = list(ds.raw_samples())
    assert not [s for s in samples if isinstance(s, Skipped)]
    assert keys(samples) == list(range(SHARDS * PER_SHARD))
    assert http.gets["/shard-000001.tar"] == 3 and http.gets["/shard-000002.tar"] == 1


def test_a_shard_that_keeps_failing_ends_with_a_clear_error(http, client):
    http.drops["/shard-000001.tar"] = -1
    ds = WebDataset(pattern(http.url), in_chans=1, classes=["a", "b", "c"])
    samples = list(ds.raw_samples())
    skipped = [s for s in samples if isinstance(s, Skipped)]
    assert len(skipped) == 1 and skipped[0].path == f"{http.url}/shard-000001.tar"
    given = int(skipped[0].reason.split("after ")[1].split(" samples")[0])
    assert "in 4 attempts" in skipped[0].reason and 0 <= given < PER_SHARD
    # the samples of the broken shard given before the failure come once each, the rest are reported lost (aiohttp
    # raises as soon as the connection drops, before handing over what it had: fsspec gives none of them)
    assert keys(s for s in samples if not isinstance(s, Skipped)) == \
        list(range(PER_SHARD + given)) + list(range(2 * PER_SHARD, SHARDS * PER_SHARD))
    assert http.gets["/shard-000001.tar"] == 1 + webdataset.READ_RETRIES
    with pytest.raises(ImageDecodeError, match="unreadable tar shard after"):
        list(ds)


def test_missing_url_is_reported(http, client):
    (skipped,) = list(read_shard(f"{http.url}/shard-000099.tar", retries=1))
    assert isinstance(skipped, Skipped) and "404" in skipped.reason and "in 2 attempts" in skipped.reason


def test_pipe_shards(shard_dir, monkeypatch):
    monkeypatch.setattr(webdataset, "RETRY_DELAY_S", 0.0)
    ds = WebDataset([f"pipe:cat {shard_dir}/shard-00000{i}.tar" for i in range(SHARDS)], in_chans=1,
                    classes=["a", "b", "c"])
    assert [value(img) for img, _ in ds] == list(range(SHARDS * PER_SHARD))
    (skipped,) = list(read_shard(f"pipe:cat {shard_dir}/absent.tar", retries=0))
    assert "exited with status 1" in skipped.reason and "absent.tar" in skipped.reason
    # a command cut short: its exit status is seen even though tar stopped at a clean 512-byte boundary
    cut = f"pipe:head -c 2048 {shard_dir}/shard-000000.tar; exit 3"
    samples = list(read_shard(cut, retries=0))
    assert isinstance(samples[-1], Skipped) and "status 3" in samples[-1].reason


def test_fsspec_protocols(shard_dir):
    ds = WebDataset(f"file://{shard_dir}/shard-*.tar", in_chans=1, classes=["a", "b", "c"])
    assert len(ds.shards) == SHARDS and [value(img) for img, _ in ds] == list(range(SHARDS * PER_SHARD))
    with pytest.raises(UserError, match=r"^cannot read nosuchproto:// shards: .*nosuchproto") as e:
        WebDataset("nosuchproto://bucket/shard-0.tar", classes=["a"])
    assert "\n" not in str(e.value)


def to_value(img) -> torch.Tensor:
    return torch.tensor(float(value(img)))


def test_split_by_rank_and_worker_over_http(http, client, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setattr(webdataset, "_rank_world", lambda r=rank: (r, 2))
        ds = WebDataset(pattern(http.url), to_value, in_chans=1, classes=["a", "b", "c"])
        loader = build_loader(ds, 4, train=False, workers=2, distributed=False)
        seen.append(sorted(int(v) for images, _, _ in loader for v in images))
    assert len(seen[0]) == len(seen[1]) == SHARDS * PER_SHARD // 2
    assert sorted(seen[0] + seen[1]) == list(range(SHARDS * PER_SHARD))


def test_resume_mid_epoch_over_http(http, client):
    def loader():
        ds = WebDataset(pattern(http.url), to_value, in_chans=1, classes=["a", "b", "c"], shuffle=True,
                        shuffle_buffer=5, seed=3)
        return build_loader(ds, 4, train=True, workers=0, seed=3)
    whole = [images.tolist() for images, _, _ in loader()]
    first = loader()
    it = iter(first)
    head = [next(it)[0].tolist() for _ in range(2)]
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert head + [images.tolist() for images, _, _ in resumed] == whole
    assert sorted(v for b in whole for v in b) == list(range(SHARDS * PER_SHARD))  # drop_last: 24 = 6 x 4


@pytest.fixture
def half_missing(shard_dir, tmp_path):
    """A folder with shard 0 of shard_dir and its classes.txt, and no shard 1."""
    (tmp_path / "shard-000000.tar").write_bytes((shard_dir / "shard-000000.tar").read_bytes())
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    return tmp_path


@pytest.mark.parametrize("source", ["local", "file", "pipe", "http"])
def test_a_missing_shard_is_an_error_whatever_the_source(half_missing, source, monkeypatch, http, capsys):
    """One rule for every source: the set is refused before anything is read, in one line naming the shard (a
    local pattern always was; file://, pipe: and http used to read the other half and report one skip, rc 0)."""
    monkeypatch.setattr(webdataset, "RETRY_DELAY_S", 0.0)
    root = half_missing
    spec = {"local": f"{root}/shard-{{000000..000001}}.tar", "file": f"file://{root}/shard-{{000000..000001}}.tar",
            "pipe": f"pipe:cat {root}/shard-{{000000..000001}}.tar",
            "http": f"{http.url}/shard-{{000000,000009}}.tar"}[source]  # the server holds shards 0..3, not 9
    reason = {"local": "", "file": "(not found)", "pipe": "(the command exited with status 1: cat: ",
              "http": "(not found (HTTP 404))"}[source]
    with pytest.raises(UserError, match=r"^1 of 2 shards do not exist") as e:
        WebDataset(spec, in_chans=1)
    message = str(e.value)
    assert "\n" not in message and "shard-00000" in message and reason in message and repr(spec) in message
    if source == "http":
        assert sum(http.gets.values()) == 0  # checked with HEAD requests: nothing downloaded


def test_the_check_reads_only_a_pipe_commands_first_block_and_knows_a_tar(shard_dir, monkeypatch):
    monkeypatch.setattr(webdataset, "RETRY_DELAY_S", 0.0)
    with pytest.raises(UserError, match=r"the command's output is not a tar shard \(it starts with b'hello"):
        webdataset.expand_urls("pipe:echo hello world")
    with pytest.raises(UserError, match=r"the command wrote nothing"):
        webdataset.expand_urls("pipe:true")
    big = f"pipe:cat {shard_dir}/shard-000000.tar; sleep 30"  # the check stops the command after its first block
    start = time.monotonic()
    assert webdataset.expand_urls(big) == [big] and time.monotonic() - start < 10
    gz = f"pipe:gzip -c {shard_dir}/shard-000001.tar"
    ds = WebDataset(gz, in_chans=1, classes=["a", "b", "c"])
    assert [value(img) for img, _ in ds] == list(range(PER_SHARD, 2 * PER_SHARD))


def test_evaluate_refuses_a_missing_file_url_shard_in_one_line(half_missing, tmp_path, capsys):
    from resnet50 import create_model
    from resnet50.cli import main
    from resnet50.weights import Preprocessing, save

    save(tmp_path / "m.safetensors", create_model("resnet20_cifar", num_classes=3, in_chans=1), ["a", "b", "c"],
         Preprocessing(4, 4, (0.5,), (0.25,)))
    rc = main(["evaluate", "--weights", str(tmp_path / "m.safetensors"), "--data",
               f"file://{half_missing}/shard-{{000000..000001}}.tar", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "shard-000001.tar (not found)" in err
