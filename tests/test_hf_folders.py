"""resnet50.hf on Hub-layout folders the toolkit did not write: only pytorch_model.bin, transformers'
ResNetForImageClassification / ResNetModel, timm's, an override of num_classes, and offline loading of a repo that
is partly or not at all in the huggingface_hub cache. One-line errors name what the folder (or cache) holds."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from resnet50 import create_model
from resnet50.data import Preprocessing
from resnet50.errors import UserError
from resnet50.model import ResNet, ResNetConfig

pytest.importorskip("huggingface_hub")
from resnet50.hf import ResNetHub, read_folder, save_pretrained  # noqa: E402


def _randomise(model):
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model.eval()


def _same_outputs(a, b, size=64):
    x = torch.randn(2, a.cfg.in_chans, size, size)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def _as_transformers(model, folder, classes=None, model_class="ResNetForImageClassification"):
    """model as transformers' save_pretrained writes a ResNet: modeling_resnet.py's names and config.json."""
    cfg, names = model.cfg, {}
    names["conv1"], names["bn1"] = "embedder.embedder.convolution", "embedder.embedder.normalization"
    convs = 3 if cfg.block == "bottleneck" else 2
    for s, n in enumerate(cfg.layers):
        for b in range(n):
            base = f"encoder.stages.{s}.layers.{b}"
            for j in range(convs):
                names[f"layer{s + 1}.{b}.conv{j + 1}"] = f"{base}.layer.{j}.convolution"
                names[f"layer{s + 1}.{b}.bn{j + 1}"] = f"{base}.layer.{j}.normalization"
            names[f"layer{s + 1}.{b}.downsample.0"] = f"{base}.shortcut.convolution"
            names[f"layer{s + 1}.{b}.downsample.1"] = f"{base}.shortcut.normalization"
    prefix = "resnet." if model_class == "ResNetForImageClassification" else ""
    sd = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        sd[f"classifier.1.{leaf}" if module == "fc" else f"{prefix}{names[module]}.{leaf}"] = value.clone()
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    expansion = 4 if cfg.block == "bottleneck" else 1
    config = {"architectures": [model_class], "model_type": "resnet", "depths": list(cfg.layers),
              "hidden_sizes": [w * expansion for w in cfg.widths], "embedding_size": cfg.stem_width,
              "layer_type": cfg.block, "hidden_act": "relu", "downsample_in_first_stage": False,
              "downsample_in_bottleneck": cfg.variant == "v1", "num_channels": cfg.in_chans,
              "id2label": {str(i): c for i, c in enumerate(classes or [f"LABEL_{i}" for i in range(cfg.num_classes)])}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_folder_with_only_pytorch_model_bin_loads_by_its_tensors(tmp_path):
    model = _randomise(create_model("resnet18", num_classes=3))
    (tmp_path / "only_bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "only_bin" / "pytorch_model.bin")
    loaded = ResNetHub.from_pretrained(tmp_path / "only_bin")
    assert loaded.arch == "resnet18" and loaded.fc.weight.shape == (3, 512) and _same_outputs(model, loaded)
    assert read_folder(tmp_path / "only_bin").source == "state dict pytorch_model.bin"


@pytest.mark.parametrize("cfg", [
    ResNetConfig(block="basic", layers=(2, 2, 2, 2), num_classes=3),
    ResNetConfig(block="bottleneck", layers=(1, 2, 1, 1), widths=(8, 16, 32, 64), stem_width=8, num_classes=4),
    ResNetConfig(block="bottleneck", layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8, num_classes=4,
                 variant="v1"),
], ids=["basic", "bottleneck-v1.5", "bottleneck-v1"])
def test_a_transformers_resnet_folder_loads_as_the_same_network(tmp_path, cfg):
    model = _randomise(ResNet(cfg))
    classes = ["red", "green", "blue", "grey"][:cfg.num_classes]
    folder = _as_transformers(model, tmp_path / "tf", classes)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "ConvNextImageProcessor", "crop_pct": 0.875, "size": {"shortest_edge": 224},
         "resample": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    loaded = ResNetHub.from_pretrained(folder)
    assert loaded.cfg.variant == cfg.variant and loaded.cfg.layers == cfg.layers and loaded.classes == classes
    assert loaded.preprocessing == Preprocessing(256, 224, interpolation="bicubic")
    assert _same_outputs(model, loaded)


def test_a_transformers_backbone_and_default_labels(tmp_path):
    model = _randomise(create_model("resnet18", num_classes=0))
    ckpt = read_folder(_as_transformers(model, tmp_path / "tf", model_class="ResNetModel"))
    assert ckpt.model.cfg.num_classes == 0 and ckpt.classes is None and ckpt.preprocessing == Preprocessing()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ckpt.model.eval()(x), model(x))
    labelled = _randomise(create_model("resnet18", num_classes=3))
    assert read_folder(_as_transformers(labelled, tmp_path / "tf3")).classes is None  # LABEL_0.. are no names


def test_num_classes_replaces_the_head_and_other_options_must_agree(tmp_path, rgb_checkpoint):
    folder = save_pretrained(rgb_checkpoint, tmp_path / "ours")
    base = ResNetHub.from_pretrained(folder)
    ten = ResNetHub.from_pretrained(folder, num_classes=10)
    assert ten.fc.weight.shape == (10, 512) and ten.classes is None
    assert "classifier replaced by a new, untrained 10-class one" in ten.source
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in ten.state_dict().items() if not k.startswith("fc."))
    assert ResNetHub.from_pretrained(folder, num_classes=3).classes == ["red", "green", "blue"]
    with pytest.raises(UserError, match="holds a model with in_chans=3; --in-chans 1 contradicts it") as e:
        ResNetHub.from_pretrained(folder, in_chans=1)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown option\\(s\\) colour"):
        ResNetHub.from_pretrained(folder, colour="red")


@pytest.mark.parametrize("files, words", [
    ({}, "holds nothing: no weights file; a Hub-layout folder needs model.safetensors or pytorch_model.bin"),
    ({"config.json": "{}", "README.md": "# x"}, "holds README.md, config.json: no weights file"),
    ({"config.json": "{}", "model.safetensors.index.json": "{}"}, "sharded weights (model.safetensors.index.json)"),
    ({"config.json": json.dumps({"model_type": "vit", "architectures": ["ViTForImageClassification"]}),
      "pytorch_model.bin": None}, "holds a transformers ViTForImageClassification (model_type 'vit'), not a ResNet"),
    ({"config.json": json.dumps({"hidden": 3}), "pytorch_model.bin": None},
     "config.json is neither this toolkit's, transformers' nor timm's (its keys: hidden)"),
])
def test_what_cannot_load_is_one_line_naming_what_the_folder_holds(tmp_path, files, words):
    folder = tmp_path / "f"
    folder.mkdir()
    for name, text in files.items():
        if text is None:
            torch.save(create_model("resnet18", num_classes=3).state_dict(), folder / name)
        else:
            (folder / name).write_text(text)
    with pytest.raises(UserError, match=re.escape(words)) as e:
        ResNetHub.from_pretrained(folder)
    assert "\n" not in str(e.value)


def test_a_timm_folder_loads_with_its_pretrained_cfg(tmp_path):
    model = _randomise(create_model("resnet18", num_classes=3))
    folder = tmp_path / "timm"
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "resnet18", "num_classes": 3, "num_features": 512, "label_names": ["a", "b", "c"],
        "pretrained_cfg": {"input_size": [3, 224, 224], "crop_pct": 0.95, "interpolation": "bicubic",
                           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}))
    loaded = ResNetHub.from_pretrained(folder)
    assert loaded.classes == ["a", "b", "c"] and loaded.preprocessing == Preprocessing(235, 224, interpolation="bicubic")
    assert _same_outputs(model, loaded)


# --- a Hub repo, offline --------------------------------------------------------------------------------------

def _cache_repo(cache, repo, files):
    """A huggingface_hub cache entry for ``repo`` at one commit, holding ``files`` (name -> path to copy)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, src in files.items():
        (snap / name).write_bytes(src.read_bytes())
    return snap


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_offline_loading_names_the_repo_and_offline_mode(tmp_path, rgb_checkpoint, offline):
    ours = save_pretrained(rgb_checkpoint, tmp_path / "ours")
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as e:
        ResNetHub.from_pretrained("someone/never-fetched", cache_dir=cache)
    assert str(e.value) == ("Hub repo someone/never-fetched: it is not in the local cache and offline mode "
                            "(HF_HUB_OFFLINE=1) forbids downloading model.safetensors / pytorch_model.bin; fetch it "
                            "once online (hf download someone/never-fetched) or unset HF_HUB_OFFLINE")
    _cache_repo(cache, "someone/partial", {"config.json": ours / "config.json"})
    with pytest.raises(UserError, match=re.escape("Hub repo someone/partial: the cache holds only config.json and "
                                                  "offline mode (HF_HUB_OFFLINE=1) forbids downloading")):
        ResNetHub.from_pretrained("someone/partial", cache_dir=cache)
    _cache_repo(cache, "someone/whole", {n: ours / n for n in ("config.json", "model.safetensors")})
    loaded = ResNetHub.from_pretrained("someone/whole", cache_dir=cache)
    assert loaded.classes == ["red", "green", "blue"] and _same_outputs(loaded, ResNetHub.from_pretrained(ours))


def test_local_files_only_is_named_as_such(tmp_path):
    with pytest.raises(UserError, match=re.escape("it is not in the local cache and local_files_only=True forbids")):
        ResNetHub.from_pretrained("someone/never-fetched", cache_dir=tmp_path, local_files_only=True)
