"""Evaluation: top-1, top-5, loss, per-class accuracy and the confusion matrix, with centre crop, flip TTA or the
paper's 10-crop (four corners and centre, and their mirrors; the softmax scores are averaged, as in He et al.).
With a report (``resnet50.report``): per-class precision, recall and F1, the confusion matrix and the top losses as
pictures, the misclassified samples; with ``knn``: the k-nearest-neighbour top-1 on frozen features
(``resnet50.embed``), the train split as the gallery."""

from __future__ import annotations

import copy
import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from .data import MAX_PIXELS, build_dataset, build_loader, eval_transform
from .embed import VOTES, extract, knn_predict, load_classifier, weights_file
from .errors import UserError
from .files import output_dir, pyplot, save_figure, write_json
from .labels import class_mapping, model_class_keys, remap
from .report import Indexed, Predictions, check_indexable, check_report_dir, collate_indexed, write_report
from .tensorboard import Board

TTA_MODES = ("none", "flip", "ten-crop")


def predict_scores(model: nn.Module, images: Tensor, tta: str = "none") -> Tensor:
    """Class probabilities (B, K) for a batch: (B, C, H, W), or (B, 10, C, H, W) from a ten-crop transform."""
    if images.dim() == 5:  # ten-crop: average the softmax of the 10 views
        b, v = images.shape[:2]
        probs = model(images.flatten(0, 1)).float().softmax(1)
        return probs.view(b, v, -1).mean(1)
    probs = model(images).float().softmax(1)
    if tta == "flip":
        probs = (probs + model(images.flip(-1)).float().softmax(1)) / 2
    return probs


class Metrics:
    """Running top-1/top-5/loss and the confusion matrix, from class probabilities."""

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.loss_sum, self.top5_hits, self.n = 0.0, 0, 0

    def update(self, probs: Tensor, labels: Tensor) -> None:
        probs, labels = probs.detach().float().cpu(), labels.cpu()
        self.loss_sum += float(-torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12)).sum())
        top = probs.topk(min(5, self.k), dim=1).indices
        self.top5_hits += int((top == labels[:, None]).any(1).sum())
        self.confusion += torch.bincount(labels * self.k + top[:, 0], minlength=self.k * self.k).view(self.k, self.k)
        self.n += labels.shape[0]

    def all_reduce(self) -> None:
        packed = torch.cat([self.confusion.flatten().double(),
                            torch.tensor([self.loss_sum, self.top5_hits, self.n], dtype=torch.float64)])
        dist.all_reduce(packed)
        k2 = self.k * self.k
        self.confusion = packed[:k2].round().long().view(self.k, self.k)
        self.loss_sum, self.top5_hits, self.n = float(packed[k2]), int(packed[k2 + 1]), int(packed[k2 + 2])

    def result(self, classes: list[str] | None = None) -> dict:
        if self.n == 0:
            raise UserError("no samples were evaluated: the dataset is empty or every file was unreadable")
        per_class_n = self.confusion.sum(1)
        correct = self.confusion.diag()
        names = classes or [str(i) for i in range(self.k)]
        return {
            "top1": float(correct.sum()) / self.n,
            "top5": self.top5_hits / self.n,
            "loss": self.loss_sum / self.n,
            "samples": self.n,
            "per_class_accuracy": {names[i]: (float(correct[i] / per_class_n[i]) if per_class_n[i] else None)
                                   for i in range(self.k)},
            "confusion_matrix": self.confusion.tolist(),
            "classes": names,
        }


@torch.inference_mode()
def evaluate(model: nn.Module, loader, num_classes: int, *, tta: str = "none", device: torch.device | str = "cpu",
             channels_last: bool = True, autocast_dtype: torch.dtype | None = None, classes: list[str] | None = None,
             progress: bool = True, label_map: list[int] | None = None, records: Predictions | None = None) -> dict:
    """Metrics of ``model`` over ``loader`` (batches of images, labels, skipped records). ``label_map`` turns the
    dataset's labels into the model's class indices (``labels.class_mapping``); None: they are the same.
    ``records``: also keep each sample's prediction and loss there; the loader's batches then carry the samples'
    dataset indices (``report.Indexed`` and ``report.collate_indexed``)."""
    if tta not in TTA_MODES:
        raise UserError(f"unknown test-time augmentation {tta!r}; use one of {', '.join(TTA_MODES)}")
    device = torch.device(device)
    model.eval()
    metrics = Metrics(num_classes)
    skipped = []
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    start = time.perf_counter()
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False):
        images, labels, bad = batch[:3]
        skipped.extend(bad)
        if labels.numel() == 0:
            continue
        images = images.to(device, non_blocking=True)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with amp:
            probs = predict_scores(model, images, tta)
        labels = remap(labels, label_map) if label_map is not None else labels
        metrics.update(probs, labels)
        if records is not None:
            records.update(batch.indices, probs, labels)
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # each rank saw its own share
        metrics.all_reduce()
    out = metrics.result(classes)
    out["tta"] = tta
    out["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    out["seconds"] = time.perf_counter() - start
    return out


def save_confusion(result: dict, out_dir: str | Path) -> list[Path]:
    """Write confusion.json and confusion.png (rows: true class, columns: predicted) into ``out_dir``."""
    out_dir = output_dir(out_dir)
    write_json(out_dir / "confusion.json", {"classes": result["classes"], "matrix": result["confusion_matrix"]})
    plt = pyplot()
    cm = torch.tensor(result["confusion_matrix"], dtype=torch.float)
    norm = cm / cm.sum(1, keepdim=True).clamp_min(1)
    k = len(result["classes"])
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * k + 2), max(4, 0.6 * k + 1)))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), result["classes"], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), result["classes"], fontsize=8)
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"top-1 {result['top1']:.2%} on {result['samples']} images")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, out_dir / "confusion.png", dpi=110)
    return [out_dir / "confusion.json", out_dir / "confusion.png"]


def evaluate_weights(weights_path: str, data: str, split: str = "test", *, tta: str = "none", batch_size: int = 100,
                     workers: int = 0, out: str | None = None, progress: bool = True,
                     max_pixels: int = MAX_PIXELS, tensorboard: bool = False, report: str | None = None,
                     top_losses: int = 16, knn: int | None = None, knn_vote: str = "majority") -> dict:
    """Evaluate a weights file (or a run folder's best.safetensors) on a dataset with the checkpoint's own
    preprocessing. For images smaller than the crop (28 px Fashion-MNIST into 32), ten-crop first resizes the
    image to crop + 4 px so that the ten crops differ. ``tensorboard``: also write the figures and the confusion
    matrix as TensorBoard events into ``out``/tensorboard (``resnet50.tensorboard``). ``report``: a folder for the
    interpretation (``resnet50.report``, its ``top_losses`` images in the grid), its files and per-class numbers
    in the result's ``report``. ``knn``: also score a ``knn``-nearest-neighbour classifier on the pooled features
    (``resnet50.embed``), the train split as the gallery, in the result's ``knn``."""
    if tensorboard and not out:
        raise UserError("--tensorboard writes its events into the --out folder; give --out FOLDER")
    if report is not None:
        check_report_dir(report)
        if top_losses < 1:
            raise UserError(f"--top-losses must be >= 1, got {top_losses}")
    if knn is not None:
        if knn < 1:
            raise UserError(f"--knn must be >= 1 (the number of neighbours that vote), got {knn}")
        if split == "train":
            raise UserError("--knn takes the train split as the gallery, so it cannot also be the queries; "
                            "evaluate --split val or --split test")
        if knn_vote not in VOTES:
            raise UserError(f"unknown --knn-vote {knn_vote!r}; use one of {', '.join(VOTES)}")
    path = weights_file(weights_path)
    ckpt = load_classifier(path)
    cfg = ckpt.model.cfg
    pre = ckpt.preprocessing.for_channels(cfg.in_chans)
    dataset = build_dataset(data, split, in_chans=cfg.in_chans, max_pixels=max_pixels)
    if report is not None:
        check_indexable(dataset, "--report")
    # the dataset's label i is the model's class mapping[i], matched by name (labels.py)
    keys = model_class_keys(ckpt.classes, cfg.num_classes)
    mapping = class_mapping(dataset.classes, keys, cfg.num_classes, f"{data} ({split})")
    identity = mapping == list(range(cfg.num_classes))
    classes = keys or (list(dataset.classes) if identity else None)
    gallery = knn_gallery(data, dataset, split, knn, cfg.in_chans, max_pixels) if knn is not None else None
    if out:
        output_dir(out)
    board = Board(Path(out) / "tensorboard") if tensorboard else None
    plain = eval_transform(pre, cfg.in_chans)
    ten = tta == "ten-crop"
    if ten and pre.resize < pre.crop:
        pre = dataclasses.replace(pre, resize=pre.crop + 4)
    dataset.transform = eval_transform(pre, cfg.in_chans, ten_crop=ten)
    records = Predictions() if report is not None else None
    indexed = dict(collate=collate_indexed) if records is not None else {}
    loader = build_loader(Indexed(dataset) if records is not None else dataset, batch_size, train=False,
                          workers=workers, seed=0, **indexed)
    result = evaluate(ckpt.model, loader, cfg.num_classes, tta=tta, classes=classes, progress=progress,
                      label_map=mapping, records=records)
    result.update(weights=str(path), data=str(data), split=split, arch=ckpt.arch, variant=cfg.variant)
    if gallery is not None:
        result["knn"] = knn_score(ckpt.model, gallery, dataset, plain, knn, knn_vote, batch_size=batch_size,
                                  workers=workers, progress=progress)
    if report is not None:
        result["report"] = write_report(report, result, records, dataset, data=str(data), split=split,
                                        top_k=top_losses)
    if out:
        save_confusion(result, out)
        write_json(Path(out) / "metrics.json", result)
    if board is not None:
        board.evaluation(result, Path(out) / "confusion.png")
        board.close()
    return result


def knn_gallery(data: str, queries, split: str, k: int, in_chans: int, max_pixels: int):
    """The train split of ``data``, checked to be indexable, as large as ``k`` and disjoint from the queries."""
    check_indexable(queries, "--knn")
    gallery = build_dataset(data, "train", in_chans=in_chans, max_pixels=max_pixels)
    check_indexable(gallery, "--knn")
    if k > len(gallery):
        raise UserError(f"--knn {k} exceeds the {len(gallery)} images of the train split (the gallery); "
                        f"use a K of at most {len(gallery)}")
    shared = {p for p, _ in getattr(gallery, "samples", ())} & {p for p, _ in getattr(queries, "samples", ())}
    if shared:
        raise UserError(f"--knn: the train split (the gallery) and the {split} split share {len(shared)} images (a "
                        "plain folder of classes has no test split of its own); evaluate --split val")
    return gallery


def knn_score(model: nn.Module, gallery, queries, transform, k: int, vote: str = "majority", *,
              batch_size: int = 100, workers: int = 0, progress: bool = True) -> dict:
    """Top-1 of the ``k``-NN classifier (``embed.knn_predict``) on ``model``'s pooled features, ``gallery`` and
    ``queries`` datasets through ``transform``, with labels in the datasets' own classes (no model classifier)."""
    sets = []
    for name, ds in (("gallery", gallery), ("queries", queries)):
        ds = copy.copy(ds)
        ds.transform = transform
        sets.append(extract(model, build_loader(ds, batch_size, train=False, workers=workers, seed=0), progress,
                            f"k-NN {name}"))
    (g, gl), (q, ql) = sets
    num_classes = int(max(gl.max(), ql.max())) + 1
    pred = knn_predict(g, gl, q, k, num_classes, vote)
    return {"k": k, "vote": vote, "top1": float((pred == ql).double().mean()), "gallery": len(g), "queries": len(q),
            "gallery_split": "train"}
