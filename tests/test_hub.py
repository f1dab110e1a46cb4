"""Model distribution faces: published weights by name (downloads from a real HTTP server on 127.0.0.1, never the
internet), torch.hub through hubconf.py, the Hugging Face Hub layout with huggingface_hub, timm's call forms."""

import hashlib
import http.server
import importlib.util
import json
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from resnet50 import create_model, list_models, published, weights
from resnet50.cli import main
from resnet50.data import Preprocessing
from resnet50.errors import UserError
from resnet50.model import FeatureListNet

ROOT = Path(__file__).parents[1]
ARCH = "resnet20_cifar"  # the stand-in: 0.27 M parameters in the torchvision layout, 1.1 MB on disk


# --- a local weights server --------------------------------------------------------------------------------------

class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if "cut" in self.path:  # the connection closes halfway through the body
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """A random-weight state dict in the torchvision layout (torch.save of state_dict()), its bytes and SHA-256."""
    torch.manual_seed(1)
    model = create_model(ARCH)
    path = tmp_path_factory.mktemp("standin") / "standin.pth"
    torch.save(model.state_dict(), path)
    data = path.read_bytes()
    return model.state_dict(), data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(standin):
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests = {}, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(monkeypatch, tmp_path, server, standin):
    """Test entries served by ``server`` (through RESNET50_WEIGHTS_MIRROR), a fresh cache under TORCH_HOME."""
    _, data, sha = standin
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(published.MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    pre = Preprocessing(36, 32, interpolation="bicubic")
    base = published.Published("test:standin.v1", ARCH, f"https://example.invalid/models/standin-{sha[:8]}.pth",
                               f"sha256:{sha[:8]}", pre, 12.5, 50.0, "BSD-3-Clause", "a test stand-in")
    entries = {
        "good": base,
        "full": replace(base, name="test:standin.full", digest=f"sha256:{sha}"),
        "bad": replace(base, name="test:standin.bad", url="https://example.invalid/models/standin-bad.pth",
                       digest="sha256:0123abcd"),
        "cut": replace(base, name="test:standin.cut", url="https://example.invalid/models/standin-cut.pth"),
    }
    for e in entries.values():
        monkeypatch.setitem(published.PUBLISHED, e.name, e)
        server.files[e.filename] = data
    monkeypatch.setitem(published.DEFAULTS, ARCH, base.name)
    return entries


def _cache(tmp_path) -> list[str]:
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- published weights by name -----------------------------------------------------------------------------------

def test_the_registry_entries_are_complete_and_consistent():
    tv = [e for e in published.PUBLISHED.values() if e.name.startswith("tv:")]
    assert {e.arch for e in tv} == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
    assert {e.name for e in tv if e.name.endswith(".v2")} == {"tv:resnet50.v2", "tv:resnet101.v2", "tv:resnet152.v2"}
    for e in published.PUBLISHED.values():
        algo, hexa = e.digest.split(":")
        assert e.arch in list_models() and e.url.startswith("https://") and e.license and e.origin
        assert algo in ("sha256", "md5") and int(hexa, 16) >= 0 and len(hexa) in (8, 32, 64)
        if len(hexa) == 8:  # the prefix torch.hub checks is the one in the file name
            assert e.filename.endswith(f"-{hexa}.pth")
        assert 60 < e.top1 < 85 and e.top1 < e.top5 < 100
    assert published.get("tv:resnet50.v2").preprocessing == Preprocessing(232, 224)  # torchvision's V2 transforms
    assert published.get("tv:resnet50.v1").preprocessing == Preprocessing(256, 224)
    assert published.get("timm:resnet50.a1_in1k").preprocessing.interpolation == "bicubic"
    assert published.get("keras:resnet50").variant == "v1" and published.get("keras:resnet50").filename == \
        "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    assert {a: published.default_for(a).name for a in ("resnet18", "resnet50")} == {
        "resnet18": "tv:resnet18.v1", "resnet50": "tv:resnet50.v2"}
    with pytest.raises(UserError, match="did you mean 'tv:resnet50.v2'"):
        published.get("tv:resnet50.V2")


def test_models_lists_the_published_weights(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["models", "--published", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows.keys() == published.PUBLISHED.keys() and not any(r["cached"] for r in rows.values())
    assert (rows["tv:resnet50.v2"]["top1"], rows["tv:resnet50.v2"]["preprocessing"]["resize"]) == (80.858, 232)


def test_a_matching_download_loads_once_and_keeps_the_metadata(registry, server, standin, tmp_path):
    sd, _, _ = standin
    ckpt = weights.load("test:standin.v1")
    assert all(torch.equal(ckpt.model.state_dict()[k], v) for k, v in sd.items())
    assert ckpt.arch == ARCH and ckpt.preprocessing == registry["good"].preprocessing
    assert ckpt.source.startswith("test:standin.v1: a test stand-in") and ckpt.weights_id
    assert _cache(tmp_path) == [registry["good"].filename]  # the final name only: no temporary file left
    full = weights.load("test:standin.full")  # the same file checked by its full SHA-256: already cached
    assert server.requests == [f"/{registry['good'].filename}"] and full.arch == ARCH
    weights.load("test:standin.v1")
    assert len(server.requests) == 1  # cached: fetched once


def test_a_hash_mismatch_is_refused_and_nothing_is_cached(registry, tmp_path):
    with pytest.raises(UserError, match=r"does not match its published SHA256 prefix 0123abcd") as e:
        weights.load("test:standin.bad")
    assert "\n" not in str(e.value) and _cache(tmp_path) == []


def test_an_interrupted_download_leaves_no_partial_file(registry, server, tmp_path):
    with pytest.raises(UserError, match="could not download test:standin.cut .*connection closed") as e:
        weights.load("test:standin.cut")
    assert "\n" not in str(e.value) and _cache(tmp_path) == [] and server.requests == ["/standin-cut.pth"]


def test_offline_a_cached_file_is_used_and_a_missing_one_says_what_to_fetch(registry, monkeypatch, tmp_path):
    weights.load("test:standin.v1")
    monkeypatch.setenv(published.MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}")
    assert weights.load("test:standin.v1").arch == ARCH  # no network needed
    entry = registry["cut"]
    with pytest.raises(UserError) as e:
        weights.load(entry.name)
    msg = str(e.value)
    assert "\n" not in msg and f"fetch {entry.url} elsewhere and put it at " in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / entry.filename) in msg
    cached = tmp_path / "torch" / "hub" / "checkpoints" / registry["good"].filename
    data = cached.read_bytes()
    cached.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # damaged in the cache
    with pytest.raises(UserError, match="does not match the published SHA256 prefix .* delete it"):
        weights.load("test:standin.v1")


def test_every_command_takes_a_published_name(registry, tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    assert main(["predict", str(img), "--weights", "test:standin.v1", "--backend", "eager", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["arch"] == ARCH and len(out["results"][0]["predictions"]) == 5
    # options that contradict the published file are refused, as for any file
    with pytest.raises(UserError, match="test:standin.v1 holds a model with variant='v1.5'; --variant v1"):
        weights.load("test:standin.v1", variant="v1")


def test_a_path_spelt_like_a_name_is_a_path(tmp_path, monkeypatch, standin):
    monkeypatch.chdir(tmp_path)
    Path("a:b.pth").write_bytes(standin[1])
    assert not published.is_published_name("a:b.pth") and published.is_published_name("tv:resnet50.v2")
    assert weights.load("a:b.pth").arch == ARCH


# --- timm's call forms -------------------------------------------------------------------------------------------

def test_create_model_pretrained_true_name_and_path(registry, standin, tmp_path):
    sd, data, _ = standin
    by_default = create_model(ARCH, pretrained=True)
    by_name = create_model(ARCH, pretrained="test:standin.v1")
    path = tmp_path / "w.pth"
    path.write_bytes(data)
    by_path = create_model(ARCH, pretrained=path)
    for m in (by_default, by_name, by_path):
        assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    assert by_name.pretrained_cfg["input_size"] == (3, 32, 32) and by_name.pretrained_cfg["interpolation"] == "bicubic"
    assert by_name.pretrained_cfg["crop_pct"] == pytest.approx(32 / 36)
    new_head = create_model(ARCH, pretrained=path, num_classes=4)  # timm: pretrained body, new classifier
    assert new_head.fc.weight.shape == (4, 64) and torch.equal(new_head.conv1.weight, sd["conv1.weight"])
    with pytest.raises(UserError, match="no published weights for 'resnet56_cifar'"):
        create_model("resnet56_cifar", pretrained=True)


def test_checkpoint_path_loads_strictly_after_creation(tmp_path, standin):
    sd, data, _ = standin
    path = tmp_path / "w.pth"
    path.write_bytes(data)
    m = create_model(ARCH, checkpoint_path=path)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(UserError, match="does not fit the model"):
        create_model("resnet32_cifar", checkpoint_path=path)


def test_features_only_returns_timms_list_with_its_feature_info():
    with torch.device("meta"):
        net = create_model("resnet50", features_only=True)
        feats = net(torch.empty(2, 3, 224, 224))
        assert isinstance(net, FeatureListNet) and isinstance(feats, list)
        assert [tuple(f.shape) for f in feats] == [(2, 64, 112, 112), (2, 256, 56, 56), (2, 512, 28, 28),
                                                   (2, 1024, 14, 14), (2, 2048, 7, 7)]
        assert net.feature_info.channels() == [64, 256, 512, 1024, 2048]
        assert net.feature_info.reduction() == [2, 4, 8, 16, 32]
        assert net.feature_info.module_name() == ["relu", "layer1", "layer2", "layer3", "layer4"]
        assert "fc.weight" not in net.state_dict() and "layer1.0.conv1.weight" in net.state_dict()
        last2 = create_model("resnet50", features_only=True, out_indices=(-2, -1))
        assert [f.shape[1] for f in last2(torch.empty(1, 3, 64, 64))] == [1024, 2048]
        three = create_model("resnet18", features_only=True, out_indices=(1, 2, 3))
        assert not hasattr(three, "layer4") and three.feature_info.channels() == [64, 128, 256]
        assert create_model("resnet20_cifar", features_only=True, out_indices=2).feature_info.reduction() == [2, 4]
    with pytest.raises(UserError, match="indices 0..4"):
        create_model("resnet18", features_only=True, out_indices=(5,))
    with pytest.raises(UserError, match="features_only=True"):
        create_model("resnet18", out_indices=(1,))


def test_forward_features_and_forward_head_have_timms_meaning():
    m = create_model("resnet18", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, 512, 2, 2) and torch.equal(f, m.forward_pyramid(x)["C5"])
        pooled = m.forward_head(f, pre_logits=True)
        assert pooled.shape == (2, 512) and torch.allclose(pooled, f.mean((2, 3)))
        assert torch.allclose(m.forward_head(f), m(x)) and torch.allclose(m.fc(pooled), m(x))


# --- torch.hub ---------------------------------------------------------------------------------------------------

def test_torch_hub_loads_every_architecture_from_the_repo_root():
    params = {"resnet18": 11_689_512, "resnet50": 25_557_032, "resnet152": 60_192_808}
    with torch.device("meta"):
        for name in list_models():
            m = torch.hub.load(str(ROOT), name, source="local", weights=None)
            assert type(m).__name__ == "ResNet" and m.cfg == create_model(name).cfg, name
            if name in params:
                assert sum(p.numel() for p in m.parameters()) == params[name]
        m = torch.hub.load(str(ROOT), "resnet50", source="local", weights=None, variant="v1", num_classes=10)
    assert m.cfg.variant == "v1" and m.fc.weight.shape == (10, 2048)


def test_torch_hub_weights_by_name_and_torchvision_enum(registry, standin):
    m = torch.hub.load(str(ROOT), ARCH, source="local", weights="test:standin.v1")
    assert torch.equal(m.conv1.weight, standin[0]["conv1.weight"])
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    assert {n for n in list_models()} <= set(dir(hub)) and hub.dependencies[0] == "torch"
    with pytest.raises(UserError, match="unknown published weights 'tv:resnet20_cifar.v2'"):
        torch.hub.load(str(ROOT), ARCH, source="local", weights="IMAGENET1K_V2")


def test_torch_hub_accepts_the_tutorials_pretrained_spelling(registry, standin):
    """pretrained=True / False (torchvision < 0.13, and the tutorials): the architecture's published default / random;
    refused in one line where there is no published default; never a TypeError."""
    with pytest.warns(UserWarning, match="old spelling of weights='DEFAULT': loading test:standin.v1"):
        m = torch.hub.load(str(ROOT), ARCH, source="local", pretrained=True)
    assert torch.equal(m.conv1.weight, standin[0]["conv1.weight"]) and m.pretrained_cfg["source"]
    m = torch.hub.load(str(ROOT), ARCH, source="local", pretrained=True, num_classes=10)
    assert m.fc.weight.shape == (10, 64) and torch.equal(m.conv1.weight, standin[0]["conv1.weight"])
    m = torch.hub.load(str(ROOT), ARCH, source="local", pretrained=False, num_classes=7)
    assert m.fc.weight.shape == (7, 64) and not torch.equal(m.conv1.weight, standin[0]["conv1.weight"])
    with pytest.raises(UserError, match="no published weights for 'plain20_cifar'; pretrained=True works for") as e:
        torch.hub.load(str(ROOT), "plain20_cifar", source="local", pretrained=True)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="pass weights= or pretrained=, not both"):
        torch.hub.load(str(ROOT), ARCH, source="local", pretrained=True, weights="test:standin.v1")
    with pytest.raises(UserError, match="pretrained is True or False, got 'test:standin.v1'"):
        torch.hub.load(str(ROOT), ARCH, source="local", pretrained="test:standin.v1")


def test_torch_hub_takes_torchvisions_weights_enum_text(monkeypatch, registry, standin):
    monkeypatch.setitem(published.PUBLISHED, "tv:resnet20_cifar.v1", registry["good"])
    m = torch.hub.load(str(ROOT), ARCH, source="local", weights="Resnet20_Cifar_Weights.IMAGENET1K_V1")
    assert torch.equal(m.conv1.weight, standin[0]["conv1.weight"])
    with pytest.raises(UserError, match="ResNet50_Weights.IMAGENET1K_V2 are weights for resnet50, not resnet20_cifar"):
        torch.hub.load(str(ROOT), ARCH, source="local", weights="ResNet50_Weights.IMAGENET1K_V2")


# --- Hugging Face ------------------------------------------------------------------------------------------------

def test_our_checkpoints_pass_hugging_faces_loader_and_old_ones_still_load(tmp_path, rgb_checkpoint):
    from huggingface_hub import load_state_dict_from_file

    sd = load_state_dict_from_file(rgb_checkpoint)  # refuses any "format" but "pt"/"mlx" with OSError
    meta, ours = weights.read_safetensors(rgb_checkpoint)
    assert meta["format"] == "pt" and meta["schema"] == weights.SCHEMA and sd.keys() == ours.keys()
    old = tmp_path / "old.safetensors"  # written before the schema key: the schema in "format"
    save_file(ours, str(old), metadata={**{k: v for k, v in meta.items() if k != "schema"}, "format": weights.SCHEMA})
    with pytest.raises(OSError):
        load_state_dict_from_file(old)
    ckpt = weights.load(old)
    assert ckpt.classes == ["red", "green", "blue"] and ckpt.preprocessing == Preprocessing(36, 32)


def test_save_pretrained_and_from_pretrained_in_the_hub_layout(tmp_path, rgb_checkpoint):
    from resnet50.hf import ResNetHub, from_pretrained, save_pretrained

    folder = save_pretrained(rgb_checkpoint, tmp_path / "hub")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["arch"], config["classes"], config["layers"], config["variant"]) == (
        "resnet18", ["red", "green", "blue"], [2, 2, 2, 2], "v1.5")
    model = ResNetHub.from_pretrained(folder)
    src = weights.load(rgb_checkpoint).model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src(x)) and not model.training
    ckpt = from_pretrained(folder)
    assert ckpt.classes == ["red", "green", "blue"] and ckpt.preprocessing == Preprocessing(36, 32)
    assert weights.load(folder).classes == ["red", "green", "blue"]  # --weights FOLDER reads the Hub layout
    config["layers"] = [3, 4, 6, 3]  # the weights no longer fit: refused (the mixin alone would load non-strictly)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="does not fit the model"):
        ResNetHub.from_pretrained(folder)


def test_without_the_hf_extra_the_error_names_it(monkeypatch, tmp_path, rgb_checkpoint):
    from resnet50 import hf

    monkeypatch.setattr(hf, "PyTorchModelHubMixin", None)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(UserError, match=r"pip install 'resnet50\[hf\]'") as e:
        hf.save_pretrained(rgb_checkpoint, tmp_path / "hub")
    assert "\n" not in str(e.value)


def test_evaluate_reads_a_hub_folder_as_the_checkpoint_it_holds(tmp_path, rgb_checkpoint):
    from PIL import Image

    from resnet50.evaluate import evaluate_weights
    from resnet50.hf import save_pretrained

    rng = np.random.default_rng(0)
    for k, name in enumerate(["red", "green", "blue"]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 60, (36, 36, 3), dtype=np.uint8)
            pixels[..., k] = 200
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    folder = save_pretrained(rgb_checkpoint, tmp_path / "hub")
    from_folder = evaluate_weights(str(folder), str(tmp_path / "data"), "test", progress=False)
    from_file = evaluate_weights(str(rgb_checkpoint), str(tmp_path / "data"), "test", progress=False)
    assert from_folder["samples"] == from_file["samples"] == 12
    assert (from_folder["top1"], from_folder["loss"]) == (from_file["top1"], from_file["loss"])
