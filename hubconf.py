"""torch.hub entry points: one per architecture of ``resnet50.list_models()``.

    torch.hub.load("<owner>/<repo>", "resnet50", weights="IMAGENET1K_V2")        # from GitHub
    torch.hub.load("/path/to/clone", "resnet50", source="local", weights=None, variant="v1", num_classes=10)

``weights``: None (random), "DEFAULT" / True (the architecture's default published weights), torchvision's enum
names "IMAGENET1K_V1" / "IMAGENET1K_V2", a published name ("tv:resnet50.v2", "timm:resnet50.a1_in1k",
"keras:resnet50") or a local weights file. Other keywords are ResNetConfig fields and ``resnet50.create_model``'s
(``features_only``, ``out_indices``, ``checkpoint_path``).
"""

import sys
from pathlib import Path

dependencies = ["torch", "numpy", "safetensors", "tqdm", "PIL"]

# torch.hub imports this file from a checkout (GitHub download or source="local"), where the package is not
# necessarily installed: its source folder goes on the path.
_SRC = str(Path(__file__).resolve().parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from resnet50 import create_model, list_models

_TORCHVISION = {"IMAGENET1K_V1": "v1", "IMAGENET1K_V2": "v2"}


def _entry(arch: str):
    def entry(weights=None, **kwargs):
        if weights in _TORCHVISION:
            weights = f"tv:{arch}.{_TORCHVISION[weights]}"
        elif weights == "DEFAULT":
            weights = True
        return create_model(arch, pretrained=weights, **kwargs)

    entry.__name__ = entry.__qualname__ = arch
    entry.__doc__ = (f"{arch} (resnet50 toolkit). weights: None, 'DEFAULT', 'IMAGENET1K_V1'/'IMAGENET1K_V2', a "
                     "published name such as 'tv:resnet50.v2', or a weights file; other keywords: ResNetConfig "
                     "fields (variant, num_classes, in_chans, ...) and create_model's (features_only, out_indices, "
                     "checkpoint_path).")
    return entry


for _arch in list_models():
    globals()[_arch] = _entry(_arch)
