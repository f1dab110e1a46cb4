"""Where a dataset's labels meet a model's classes: the one mapping, by name.

A dataset numbers its classes its own way (an ImageFolder sorts its folder names, so "Ankle boot" comes first); a
model numbers them in the order it was trained with (Fashion-MNIST's own order puts "T-shirt/top" first). Matching
by position would silently scramble every per-class figure. Every command that compares a model's outputs with
dataset labels (evaluate, quantize, fine-tuning from ``--init-weights``) maps them here:

- by name, when every dataset class is one of the model's classes; a folder cannot hold "/" and people write
  "Ankle_boot" for "Ankle boot", so names also match after folding case, spaces, "_", "-" and "/" together
  ("T-shirt-top" is "T-shirt/top"), when that leaves no two classes alike;
- by index, when the dataset's class names are the integers 0..K-1 (folders named by class index);
- by position, when the model has no class names (only when the counts agree, else an error);
- otherwise a one-line error that lists both sets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import torch

from .errors import UserError


@lru_cache(maxsize=1)
def imagenet_synsets_and_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(WordNet IDs, display names) of the 1000 ImageNet-1k classes in index order; the name is the first lemma."""
    text = resources.files("resnet50").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(r[0] for r in rows), tuple(r[1].split(",")[0].strip() for r in rows)


def model_class_keys(classes: Sequence[str] | None, num_classes: int) -> list[str] | None:
    """The names a model's outputs are matched by: its own class names, else the ImageNet synset IDs (the folder
    names of ImageNet's train/ and val/) for 1000-class weights, else None."""
    if classes:
        return list(classes)
    return list(imagenet_synsets_and_names()[0]) if num_classes == 1000 else None


def _few(names: Sequence[str], n: int = 12) -> str:
    shown = ", ".join(repr(x) for x in list(names)[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


def class_mapping(dataset_classes: Sequence[str], model_classes: Sequence[str] | None,
                  num_model_classes: int, where: str = "the dataset") -> list[int]:
    """``mapping[i]`` is the model's output index for the dataset's label ``i``.

    Raises UserError when the dataset names classes the model does not have, or when counts disagree and no names
    say how to match them."""
    data = [str(c) for c in dataset_classes]
    names = [str(c) for c in model_classes] if model_classes else None
    if names is not None and len(names) != num_model_classes:
        raise UserError(f"the model has {num_model_classes} outputs but {len(names)} class names; fix its metadata")
    if names is None and len(data) != num_model_classes:
        raise UserError(f"the model has {num_model_classes} classes, the dataset {len(data)} ({where}), and no class "
                        "names to match them by; evaluate on the dataset the model was trained for")
    index = {n: i for i, n in enumerate(names or ())}
    folded: dict[str, int] = {}
    for n, i in index.items():
        folded[fold(n)] = -1 if fold(n) in folded else i  # -1: two classes fold alike, so folding cannot decide
    mapping = []
    for c in data:  # a name wins over an index: a class may be called "3"
        if c in index:
            mapping.append(index[c])
        elif folded.get(fold(c), -1) >= 0:
            mapping.append(folded[fold(c)])
        elif c.isdigit() and int(c) < num_model_classes:
            mapping.append(int(c))
        elif names is None:
            return list(range(len(data)))  # unnamed model, unnamed-by-index data of the same size: by position
        else:
            unknown = [x for x in data if x not in index and folded.get(fold(x), -1) < 0
                       and not (x.isdigit() and int(x) < num_model_classes)]
            raise UserError(f"{where} has classes the model does not know: {_few(unknown)}; the model's classes "
                            f"are {_few(names)}; name the class folders after them (or by index "
                            f"0..{num_model_classes - 1})")
    return mapping


def fold(name: str) -> str:
    """A class name as a folder may spell it: lower case, runs of spaces, "_", "-", "/" and "\\" as one "-"."""
    return re.sub(r"[\s_/\\-]+", "-", name.strip().lower())


def remap(labels, mapping: Sequence[int]):
    """Dataset labels (a tensor or array of ints) as model class indices."""
    table = torch.as_tensor(list(mapping), dtype=torch.int64)
    return table[torch.as_tensor(labels, dtype=torch.int64)]
