"""torch.hub entry points: one per architecture of ``resnet50.list_models()``.

    torch.hub.load("<owner>/<repo>", "resnet50", weights="IMAGENET1K_V2")        # from GitHub
    torch.hub.load("/path/to/clone", "resnet50", source="local", weights=None, variant="v1", num_classes=10)

``weights``: None (random), "DEFAULT" / True (the architecture's default published weights), torchvision's enum
names "IMAGENET1K_V1" / "IMAGENET1K_V2" (also as "ResNet50_Weights.IMAGENET1K_V2" or torchvision's enum itself), a
published name ("tv:resnet50.v2", "timm:resnet50.a1_in1k", "keras:resnet50") or a local weights file.
``pretrained=True`` / ``False``, the spelling of tutorials and torchvision before 0.13, means ``weights="DEFAULT"`` /
``None`` (with a warning naming what loads); an architecture without published weights refuses it in one line. Other
keywords are ResNetConfig fields and ``resnet50.create_model``'s (``features_only``, ``out_indices``,
``checkpoint_path``).
"""

import sys
import warnings
from pathlib import Path

dependencies = ["torch", "numpy", "safetensors", "tqdm", "PIL"]

# torch.hub imports this file from a checkout (GitHub download or source="local"), where the package is not
# necessarily installed: its source folder goes on the path.
_SRC = str(Path(__file__).resolve().parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from resnet50 import create_model, list_models
from resnet50.errors import UserError
from resnet50.published import default_for

_TORCHVISION = {"IMAGENET1K_V1": "v1", "IMAGENET1K_V2": "v2"}
_UNSET = object()


def _torchvision_enum(arch: str, weights):
    """torchvision's ``ResNet50_Weights.IMAGENET1K_V2`` (the enum, or its text) -> "IMAGENET1K_V2"."""
    text = f"{type(weights).__name__}.{weights.name}" if type(weights).__name__.endswith("_Weights") else weights
    if not isinstance(text, str) or "_Weights." not in text:
        return weights
    family, _, name = text.partition(".")
    if family.removesuffix("_Weights").lower() != arch:
        raise UserError(f"{family}.{name} are weights for {family.removesuffix('_Weights').lower()}, not {arch}")
    return name


def _entry(arch: str):
    def entry(weights=None, pretrained=_UNSET, **kwargs):
        if pretrained is not _UNSET:  # torchvision < 0.13 and the tutorials written for it
            if weights is not None:
                raise UserError(f"{arch}: pass weights= or pretrained=, not both (weights={weights!r})")
            if pretrained not in (True, False, None):
                raise UserError(f"{arch}: pretrained is True or False, got {pretrained!r}; name weights with weights=")
            if pretrained:
                entry_ = default_for(arch)  # one line when the architecture has no published weights
                warnings.warn(f"pretrained=True is torchvision's old spelling of weights='DEFAULT': loading "
                              f"{entry_.name}", UserWarning, stacklevel=2)
                weights = True
        weights = _torchvision_enum(arch, weights)
        if weights in _TORCHVISION:
            weights = f"tv:{arch}.{_TORCHVISION[weights]}"
        elif weights == "DEFAULT":
            weights = True
        return create_model(arch, pretrained=weights, **kwargs)

    entry.__name__ = entry.__qualname__ = arch
    entry.__doc__ = (f"{arch} (resnet50 toolkit). weights: None, 'DEFAULT', 'IMAGENET1K_V1'/'IMAGENET1K_V2', a "
                     "published name such as 'tv:resnet50.v2', or a weights file; pretrained=True/False: torchvision's "
                     "old spelling of 'DEFAULT'/None; other keywords: ResNetConfig "
                     "fields (variant, num_classes, in_chans, ...) and create_model's (features_only, out_indices, "
                     "checkpoint_path).")
    return entry


for _arch in list_models():
    globals()[_arch] = _entry(_arch)
