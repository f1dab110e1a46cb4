"""Interpretation of an evaluation (``resnet50 evaluate --report DIR``), after fastai's ClassificationInterpretation:
the confusion matrix as a picture, the top losses as a grid of images, per-class precision, recall, F1 and support,
and the misclassified samples as CSV.

The evaluation pass keeps, per sample, only its dataset index, true class, predicted class, the predicted class's
probability and the loss (:class:`Predictions`, about 30 bytes a sample); no decoded image is held. The ``k``
top-loss images are read again from the dataset for the grid. Samples carry their index through the loader by
:class:`Indexed` and :func:`collate_indexed`.

Per-class numbers are computed from the confusion matrix and are scikit-learn's ``classification_report(y_true,
y_pred, labels=range(K), output_dict=True, zero_division=0)`` (a test checks it to 1e-9): precision = tp / predicted,
recall = tp / true, F1 = 2 tp / (true + predicted); a ratio whose denominator is zero is 0.

Files written under DIR (each atomically): ``confusion_matrix.png`` (counts and row-normalised), ``top_losses.png``,
``classification_report.json`` (scikit-learn's layout), ``classification_report.csv``, ``misclassified.csv`` (path,
actual, predicted, probability of the prediction, loss; the highest loss first).
"""

from __future__ import annotations

import copy
import csv
import io
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from .data import ImageDecodeError, Skipped
from .errors import UserError
from .files import output_dir, pyplot, save_figure, write_json, write_text

REPORT_FILES = {
    "confusion_matrix": "confusion_matrix.png",
    "top_losses": "top_losses.png",
    "classification_report_json": "classification_report.json",
    "classification_report_csv": "classification_report.csv",
    "misclassified": "misclassified.csv",
}


# --- carrying each sample's index through the loader ------------------------------------------------------------

class IndexedBatch(NamedTuple):
    images: Tensor
    labels: Tensor
    skipped: tuple[Skipped, ...]
    indices: Tensor  # int64 (B,): each sample's index in the dataset


class Indexed(Dataset):
    """A map-style dataset whose samples are ``(image, label, index)``; batch it with :func:`collate_indexed`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        x, y = self.dataset[index]
        return x, y, index

    def __repr__(self) -> str:
        return repr(self.dataset)


def collate_indexed(items: list[Any]) -> IndexedBatch:
    good = [item for item in items if not isinstance(item, Skipped)]
    skipped = tuple(item for item in items if isinstance(item, Skipped))
    if not good:
        none = torch.empty(0, dtype=torch.int64)
        return IndexedBatch(torch.empty(0), none, skipped, none)
    return IndexedBatch(torch.stack([x for x, _, _ in good]), torch.tensor([int(y) for _, y, _ in good]), skipped,
                        torch.tensor([i for _, _, i in good], dtype=torch.int64))


def check_indexable(dataset: Dataset, flag: str) -> None:
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise UserError(f"{flag} needs an indexable dataset (class folders, IDX, CIFAR); WebDataset shards stream "
                        "without an index: evaluate an image folder or the IDX/CIFAR files instead")


def sample_name(dataset: Dataset, index: int, data: str, split: str) -> str:
    """A sample's file path (image folders), else ``DATA:SPLIT:INDEX`` (IDX and CIFAR arrays have no files)."""
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return str(samples[index][0])
    return f"{data}:{split}:{index}"


# --- what the evaluation pass keeps -------------------------------------------------------------------------------

class Predictions:
    """Per-sample results of an evaluation pass, in the order seen: dataset index, true class, predicted class,
    the predicted class's probability and the loss (-log of the true class's probability, as ``Metrics``)."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, ...]] = []

    def update(self, indices: Tensor, probs: Tensor, labels: Tensor) -> None:
        probs, labels = probs.detach().float().cpu(), labels.cpu()
        top_p, pred = probs.max(1)
        loss = -torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12))[:, 0]
        self._parts.append((indices.cpu().numpy().astype(np.int64), labels.numpy().astype(np.int64),
                            pred.numpy().astype(np.int64), top_p.numpy().astype(np.float64),
                            loss.double().numpy()))

    def _column(self, i: int, dtype) -> np.ndarray:
        return np.concatenate([p[i] for p in self._parts]) if self._parts else np.zeros(0, dtype)

    @property
    def indices(self) -> np.ndarray:
        return self._column(0, np.int64)

    @property
    def labels(self) -> np.ndarray:
        return self._column(1, np.int64)

    @property
    def preds(self) -> np.ndarray:
        return self._column(2, np.int64)

    @property
    def probs(self) -> np.ndarray:
        return self._column(3, np.float64)

    @property
    def losses(self) -> np.ndarray:
        return self._column(4, np.float64)

    def __len__(self) -> int:
        return sum(len(p[0]) for p in self._parts)

    def top_losses(self, k: int) -> np.ndarray:
        """Positions (into these arrays) of the ``k`` largest losses, largest first; ties in order seen."""
        return np.argsort(-self.losses, kind="stable")[:k]


# --- the numbers ------------------------------------------------------------------------------------------------

def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(len(num), dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_report(confusion, classes: list[str]) -> dict:
    """Per-class precision, recall, F1 and support, their macro and support-weighted means and the accuracy, from
    a confusion matrix (rows true, columns predicted), in scikit-learn's ``output_dict`` layout."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"confusion matrix {cm.shape} does not fit {len(classes)} classes")
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    out: dict[str, Any] = {}
    for i, name in enumerate(classes):
        out[str(name)] = {"precision": float(precision[i]), "recall": float(recall[i]), "f1-score": float(f1[i]),
                          "support": int(support[i])}
    total = int(support.sum())
    out["accuracy"] = float(tp.sum() / total) if total else 0.0
    out["macro avg"] = {"precision": float(precision.mean()), "recall": float(recall.mean()),
                        "f1-score": float(f1.mean()), "support": total}
    w = support / total if total else np.zeros(len(classes))
    out["weighted avg"] = {"precision": float(precision @ w), "recall": float(recall @ w), "f1-score": float(f1 @ w),
                           "support": total}
    return out


def report_csv(report: dict) -> str:
    """The report as CSV: a row per class, then the macro and weighted means and the accuracy (in the F1 column,
    as scikit-learn's text report puts it)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "precision", "recall", "f1", "support"])
    total = report["macro avg"]["support"]
    for name, row in report.items():
        if name == "accuracy":
            continue
        w.writerow([name, repr(row["precision"]), repr(row["recall"]), repr(row["f1-score"]), row["support"]])
    w.writerow(["accuracy", "", "", repr(report["accuracy"]), total])
    return buf.getvalue()


def misclassified_csv(preds: Predictions, names: list[str], classes: list[str]) -> str:
    """One row per misclassified sample, the highest loss first: path, actual, predicted, the predicted class's
    probability, loss. ``names``: each position's sample name (:func:`sample_name`)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "actual", "predicted", "probability", "loss"])
    labels, pred, prob, loss = preds.labels, preds.preds, preds.probs, preds.losses
    for j in preds.top_losses(len(preds)):
        if labels[j] != pred[j]:
            w.writerow([names[j], classes[labels[j]], classes[pred[j]], f"{prob[j]:.6f}", f"{loss[j]:.6f}"])
    return buf.getvalue()


# --- the pictures -----------------------------------------------------------------------------------------------

def _short(name: str, n: int = 24) -> str:
    """``name`` cut to ``n`` characters in the middle, so that names differing at either end stay apart."""
    if len(name) <= n:
        return name
    head = (n - 1) // 2
    return name[:head] + "\u2026" + name[len(name) - (n - 1 - head):]


def plot_confusion(confusion, classes: list[str], title: str):
    """A figure of two panels: the counts and the row-normalised matrix (each row sums to 1: the recall on the
    diagonal). Class names on both axes up to 60 classes, each cell written up to 30."""
    plt = pyplot()
    cm = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(max(4.0, 0.42 * k + 2.0), 24.0)  # inches per panel: about 0.42 in per class
    cell_font = max(4.5, min(10.0, 95.0 / max(k, 1)))
    tick_font = max(5.0, min(10.0, 110.0 / max(k, 1)))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 2.0, side + 1.2), layout="constrained")
    labels = [_short(str(c)) for c in classes]
    panels = ((cm, "counts", "Blues", cm.max() or 1, lambda v: f"{v:d}"),
              (norm, "row-normalised (each true class sums to 1)", "Blues", 1.0, lambda v: f"{v:.2f}"))
    for ax, (mat, name, cmap, vmax, fmt) in zip(axes, panels):
        im = ax.imshow(mat, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if k <= 60:
            if k <= 8:  # slanted names read best; with more, upright ones keep clear of each other
                ax.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_font)
            else:
                ax.set_xticks(range(k), labels, rotation=90, fontsize=tick_font)
            ax.set_yticks(range(k), labels, fontsize=tick_font)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if k <= 30:
            for i in range(k):
                for j in range(k):
                    if cm[i, j] == 0:
                        continue
                    dark = mat[i, j] / vmax > 0.55
                    ax.text(j, i, fmt(mat[i, j].item()), ha="center", va="center", fontsize=cell_font,
                            color="white" if dark else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title, fontsize=13)
    return fig


def _thumbnail(img, size: int = 256) -> np.ndarray:
    img = img.copy()
    img.thumbnail((size, size))
    return np.asarray(img)


def plot_top_losses(images: list, rows: list[dict], title: str):
    """A grid of images (PIL, or None for one that could not be read again) titled with each row's predicted
    class, actual class, loss and the predicted class's probability, as fastai's ``plot_top_losses``; wrong
    predictions in red."""
    plt = pyplot()
    n = len(images)
    cols = min(n, 4 if n <= 16 else 6)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.7 * cols, 3.2 * nrows + 0.6), layout="constrained",
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, row in zip(axes.flat, images, rows):
        if img is None:
            ax.text(0.5, 0.5, "unreadable now", ha="center", va="center", transform=ax.transAxes, color="0.4")
        else:
            a = _thumbnail(img)
            ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        wrong = row["actual"] != row["predicted"]
        ax.set_title(f"pred: {_short(row['predicted'])}\ntrue: {_short(row['actual'])}\n"
                     f"loss {row['loss']:.2f} \u00b7 p {row['probability']:.2f}", fontsize=9, loc="center",
                     color="#b2182b" if wrong else "#1a7837")
    fig.suptitle(title, fontsize=12)
    return fig


def read_images(dataset: Dataset, indices: list[int]) -> list:
    """The dataset's images at ``indices`` again, decoded but untransformed (None for one unreadable now)."""
    raw = copy.copy(dataset)
    raw.transform = None
    out = []
    for i in indices:
        try:
            out.append(raw[int(i)][0])
        except ImageDecodeError:
            out.append(None)
    return out


# --- the report -------------------------------------------------------------------------------------------------

def check_report_dir(path: str | os.PathLike, flag: str = "--report") -> Path:
    """Refuse, before any work and without creating anything, a report folder that cannot be: a file, or under one."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise UserError(f"{flag} {path}: {p} is a file, not a folder; choose another {flag}")
    return path


def write_report(out_dir: str | os.PathLike, result: dict, preds: Predictions, dataset: Dataset, *, data: str,
                 split: str, top_k: int = 16) -> dict:
    """Write the report's files into ``out_dir`` for an evaluation ``result`` (``evaluate.evaluate``'s, with its
    ``classes`` and ``confusion_matrix``) and its per-sample ``preds`` over ``dataset``. Returns ``{"dir",
    "files": {name: path}, "classification": the per-class numbers, "misclassified": count}``."""
    if top_k < 1:
        raise UserError(f"--top-losses must be >= 1, got {top_k}")
    out = output_dir(out_dir, "--report")
    classes = [str(c) for c in result["classes"]]
    report = classification_report(result["confusion_matrix"], classes)
    files = {key: out / name for key, name in REPORT_FILES.items()}
    write_json(files["classification_report_json"], report)
    write_text(files["classification_report_csv"], report_csv(report))
    names = [sample_name(dataset, int(i), data, split) for i in preds.indices]
    write_text(files["misclassified"], misclassified_csv(preds, names, classes))
    n, wrong = len(preds), int((preds.labels != preds.preds).sum())
    title = (f"{_short(Path(data).name or data, 40)} ({split}): top-1 {report['accuracy']:.2%} on {n} images\n"
             f"{wrong} misclassified, macro F1 {report['macro avg']['f1-score']:.3f}")
    save_figure(plot_confusion(result["confusion_matrix"], classes, title), files["confusion_matrix"], dpi=110)
    top = preds.top_losses(top_k)
    rows = [{"path": names[j], "actual": classes[preds.labels[j]], "predicted": classes[preds.preds[j]],
             "loss": float(preds.losses[j]), "probability": float(preds.probs[j])} for j in top]
    images = read_images(dataset, [int(preds.indices[j]) for j in top])
    save_figure(plot_top_losses(images, rows, f"top {len(rows)} losses\npredicted / actual / loss / probability of "
                                "the prediction"), files["top_losses"], dpi=110)
    return {"dir": str(out), "files": {k: str(v) for k, v in files.items()}, "classification": report,
            "misclassified": wrong, "top_losses": rows}
