"""Data for training and evaluation: formats, decoding, transforms, loaders and the embedded default dataset.

This package knows nothing of the model, the training loop or the CLI. The whole path from files to batches::

    from resnet50.data import build_dataset, build_loader, build_transform, default_transform_config

    train_set = build_dataset("embedded", "train")           # or a folder, IDX / CIFAR files, .tar shards
    cfg = default_transform_config(train_set)                # or a named config: IMAGENET, CIFAR10, FASHION_MNIST
    train_set.transform = build_transform(cfg, train=True)
    loader = build_loader(train_set, batch_size=128, train=True, workers=2, seed=0)
    for images, labels, skipped in loader:                   # (B, C, H, W) float, (B,) int64, Skipped records
        ...

``formats`` says which layouts are read and how splits are chosen, ``decode`` how images become RGB or gray,
``transforms`` the pipelines, ``loader`` the batch format, skipped files and resuming.
"""

from .decode import MAX_PIXELS, ImageDecodeError, Skipped, decode_image, to_mode
from .formats import (
    EMBEDDED,
    FASHION_MNIST_CLASSES,
    SPLITS,
    ArrayDataset,
    CifarDataset,
    IdxDataset,
    ImageFolder,
    build_dataset,
    detect_format,
    embedded_dataset,
    holdout_split,
    load_pickle,
    read_idx,
)
from .loader import Batch, Loader, ResumableSampler, build_loader, collate
from .transforms import (
    CIFAR10,
    CIFAR100,
    FASHION_MNIST,
    IMAGENET,
    CenterCrop,
    Compose,
    Normalize,
    Preprocessing,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    TenCrop,
    ToTensor,
    TransformConfig,
    build_transform,
    default_transform_config,
    eval_transform,
    hflip,
    preprocess,
)
from .webdataset import WebDataset, expand_braces, expand_urls

__all__ = [
    "CIFAR10", "CIFAR100", "EMBEDDED", "FASHION_MNIST", "FASHION_MNIST_CLASSES", "IMAGENET", "MAX_PIXELS",
    "SPLITS", "ArrayDataset", "Batch", "CenterCrop", "CifarDataset", "Compose", "IdxDataset",
    "ImageDecodeError", "ImageFolder", "Loader", "Normalize", "Preprocessing", "RandomCrop", "RandomHorizontalFlip",
    "RandomResizedCrop", "Resize", "ResumableSampler", "Skipped", "TenCrop", "ToTensor", "TransformConfig",
    "WebDataset", "build_dataset", "build_loader", "build_transform", "collate", "decode_image",
    "default_transform_config", "detect_format", "eval_transform", "embedded_dataset", "expand_braces", "expand_urls", "hflip",
    "holdout_split", "load_pickle", "preprocess", "read_idx", "to_mode",
]
