"""TensorBoard event files for train, evaluate and the experiments (optional: ``pip install 'resnet50[tensorboard]'``).

Opt-in, never by default: ``--tensorboard`` on ``train``, ``evaluate`` and ``experiment`` (``tensorboard=True`` in
the library). Without the flag nothing is written, whether or not TensorBoard is installed; with it and without the
package, a one-line error naming the extra. Written through ``torch.utils.tensorboard.SummaryWriter``; view with
``tensorboard --logdir runs``.

Where: ``<run folder>/tensorboard`` for a training run (each net of an experiment is a run), ``<--out>/tensorboard``
for evaluate. What, with step = the epoch (metrics.jsonl's ``epoch``) and values exactly metrics.jsonl's:

    train/loss  train_loss        val/loss  val_loss          lr                lr
    train/top1  train_top1        val/top1  val_top1          speed/img_s       img_s
                                  val/top5  val_top5          speed/data_share  data_share (time waiting for data)

and for a detector ``train/cls_loss``, ``train/box_loss``, ``val/map``, ``val/map50``, ``val/map75``,

and the image ``curves`` (the run's curves.png) each epoch. Evaluate writes ``eval/top1``, ``eval/top5``,
``eval/loss`` at step 0 and the image ``confusion_matrix`` (its confusion.png). A resumed run purges the events of
the epochs it redoes (SummaryWriter's ``purge_step``), so each epoch is in the log once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import require

TRAIN_SCALARS = {"train_loss": "train/loss", "train_top1": "train/top1", "val_loss": "val/loss",
                 "val_top1": "val/top1", "val_top5": "val/top5", "lr": "lr", "img_s": "speed/img_s",
                 "data_share": "speed/data_share"}
# a detection run's rows: the two loss terms and pycocotools' figures (written only where a row has them)
DETECT_SCALARS = {"train_cls_loss": "train/cls_loss", "train_box_loss": "train/box_loss", "val_map": "val/map",
                  "val_map50": "val/map50", "val_map75": "val/map75"}
EVAL_SCALARS = {"top1": "eval/top1", "top5": "eval/top5", "loss": "eval/loss"}


class Board:
    """A SummaryWriter on ``log_dir`` (created); ``purge_step``: drop earlier events at this step and later."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        require("tensorboard", "--tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def image(self, tag: str, png: Path, step: int) -> None:
        with Image.open(png) as im:
            self.writer.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")

    def epoch(self, row: dict, curves: Path | None = None) -> None:
        """One metrics.jsonl row: its scalars at step ``row["epoch"]``, and the curves image."""
        step = int(row["epoch"])
        for key, tag in {**TRAIN_SCALARS, **DETECT_SCALARS}.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), step)
        if curves is not None and curves.is_file():
            self.image("curves", curves, step)
        self.writer.flush()

    def evaluation(self, result: dict, confusion: Path | None = None) -> None:
        for key, tag in EVAL_SCALARS.items():
            self.writer.add_scalar(tag, float(result[key]), 0)
        if confusion is not None and confusion.is_file():
            self.image("confusion_matrix", confusion, 0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
