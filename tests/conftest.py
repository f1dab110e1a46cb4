import os

import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """One ONNX export cache ($RESNET50_CACHE) per test module: a shared checkpoint is exported once for the module,
    never into the user's own cache."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET50_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def rgb_checkpoint(tmp_path_factory):
    """Our checkpoint of a random-weight ResNet-18 for 3 RGB classes (red, green, blue), 36 -> 32 px."""
    from resnet50 import create_model, weights
    from resnet50.data import Preprocessing

    path = tmp_path_factory.mktemp("rgb_ckpt") / "ours.safetensors"
    torch.manual_seed(0)
    weights.save(path, create_model("resnet18", num_classes=3), ["red", "green", "blue"], Preprocessing(36, 32))
    return path
