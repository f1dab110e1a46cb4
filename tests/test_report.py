"""evaluate --report: per-class numbers against scikit-learn, the misclassified CSV and the top losses against the
model by hand, pictures without overlapping text, and the bad inputs."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from resnet50 import create_model, report, weights
from resnet50.data import TransformConfig, build_dataset, build_transform
from resnet50.evaluate import evaluate_weights
from resnet50.files import pyplot

from .helpers import make_idx_dataset

sklearn_metrics = pytest.importorskip("sklearn.metrics")

CLASSES = ["horizontal stripes", "vertical stripes", "checks", "diagonal"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    data = make_idx_dataset(root / "idx")
    torch.manual_seed(1)
    m = create_model("resnet20_cifar", num_classes=4, in_chans=1).eval()
    for mod in m.modules():  # varied BN statistics so that predictions differ between images and classes
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
    weights.save(root / "m.safetensors", m, CLASSES, weights.Preprocessing(resize=28, crop=32, mean=(0.3,), std=(0.3,)))
    return root, data, m


def by_hand(data, m):
    """Probabilities (N, 4) and labels of the test split, through the same transform and model."""
    ds = build_dataset(data, "test", in_chans=1)
    ds.transform = build_transform(TransformConfig(image_size=32, crop_pct=32 / 28, mean=(0.3,), std=(0.3,),
                                                   in_chans=1), train=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        return m(x).double().softmax(1).numpy(), y.numpy()


def assert_same_report(ours: dict, theirs: dict):
    assert set(ours) == set(theirs)
    for key, row in theirs.items():
        if isinstance(row, dict):
            assert set(ours[key]) == set(row), key
            for field, value in row.items():
                assert abs(ours[key][field] - value) <= 1e-9, (key, field, ours[key][field], value)
        else:
            assert abs(ours[key] - row) <= 1e-9, key


def test_classification_report_equals_scikit_learn_on_awkward_cases():
    rng = np.random.default_rng(0)
    names = [f"class {i}" for i in range(12)]
    y_true = rng.integers(0, 12, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 12, 500))
    y_pred[y_pred == 3] = 4  # class 3 is never predicted: precision undefined, 0
    keep = (y_true != 5) & (y_pred != 5)  # class 5 appears nowhere: every ratio undefined
    y_true, y_pred = y_true[keep], y_pred[keep]
    y_true[y_true == 7] = 8  # class 7 has no samples but is predicted: recall undefined, precision 0
    cm = np.zeros((12, 12), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    assert cm[:, 3].sum() == 0 and cm[5].sum() == cm[:, 5].sum() == 0 and cm[7].sum() == 0 < cm[:, 7].sum()
    theirs = sklearn_metrics.classification_report(y_true, y_pred, labels=range(12), target_names=names,
                                                   output_dict=True, zero_division=0)
    assert_same_report(report.classification_report(cm, names), theirs)
    # the CSV carries the same numbers, exactly (repr of the floats)
    rows = list(csv.DictReader(io.StringIO(report.report_csv(report.classification_report(cm, names)))))
    assert [r["class"] for r in rows] == names + ["macro avg", "weighted avg", "accuracy"]
    assert float(rows[0]["f1"]) == theirs["class 0"]["f1-score"]
    assert int(rows[0]["support"]) == theirs["class 0"]["support"]
    assert float(rows[-1]["f1"]) == theirs["accuracy"]


def test_report_cli_numbers_equal_scikit_learn_and_the_model(setup, tmp_path):
    root, data, m = setup
    out = subprocess.run([sys.executable, "-m", "resnet50", "evaluate", "--weights", str(root / "m.safetensors"),
                          "--data", str(data), "--json", "--no-progress", "--report", str(tmp_path / "r"),
                          "--top-losses", "5"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    probs, y = by_hand(data, m)
    pred = probs.argmax(1)
    assert 0 < (pred != y).sum() < len(y), "the test needs both right and wrong predictions"
    theirs = sklearn_metrics.classification_report(y, pred, labels=range(4), target_names=CLASSES, output_dict=True,
                                                   zero_division=0)
    rep = r["report"]
    assert_same_report(rep["classification"], theirs)
    assert_same_report(json.loads((tmp_path / "r" / "classification_report.json").read_text()), theirs)
    for key in ("confusion_matrix", "top_losses"):
        assert open(rep["files"][key], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # misclassified.csv: every wrong prediction once, the highest loss first, loss = -log p(actual)
    rows = list(csv.DictReader(open(rep["files"]["misclassified"])))
    loss = -np.log(probs[np.arange(len(y)), y])
    wrong = np.flatnonzero(pred != y)
    assert rep["misclassified"] == len(rows) == len(wrong)
    assert [row["path"] for row in rows] == [f"{data}:test:{i}" for i in wrong[np.argsort(-loss[wrong], kind="stable")]]
    for row in rows:
        i = int(row["path"].rsplit(":", 1)[1])
        assert (row["actual"], row["predicted"]) == (CLASSES[y[i]], CLASSES[pred[i]])
        assert float(row["loss"]) == pytest.approx(loss[i], abs=1e-5)
        assert float(row["probability"]) == pytest.approx(probs[i].max(), abs=1e-5)
    # the grid's samples: the five largest losses, right or wrong
    top = np.argsort(-loss, kind="stable")[:5]
    assert [t["path"] for t in rep["top_losses"]] == [f"{data}:test:{i}" for i in top]


def test_report_rereads_only_the_top_loss_images(setup, tmp_path, monkeypatch):
    root, data, m = setup
    reread = []
    real = report.read_images
    monkeypatch.setattr(report, "read_images", lambda ds, idx: reread.append(list(idx)) or real(ds, idx))
    r = evaluate_weights(str(root / "m.safetensors"), str(data), "test", report=str(tmp_path / "r"), top_losses=3,
                         progress=False)
    probs, y = by_hand(data, m)
    loss = -np.log(probs[np.arange(len(y)), y])
    assert reread == [list(np.argsort(-loss, kind="stable")[:3])]
    assert [t["loss"] for t in r["report"]["top_losses"]] == pytest.approx(sorted(loss, reverse=True)[:3], abs=1e-5)


def _texts_overlap(fig) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts of ``fig`` whose drawn boxes intersect."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hidden = {id(t) for ax in fig.axes if not ax.axison for t in ax.get_xticklabels() + ax.get_yticklabels()}
    texts = [t for t in fig.findobj(lambda o: hasattr(o, "get_text") and hasattr(o, "get_window_extent"))
             if t.get_visible() and t.get_text().strip() and id(t) not in hidden]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]


def test_pictures_have_no_overlapping_text_for_many_classes_with_long_names():
    names = [f"a rather long class name {i}" for i in range(14)]
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 40, (14, 14)) + np.diag(rng.integers(100, 300, 14))
    fig = report.plot_confusion(cm, names, "some data (test): top-1 80.00% on 3000 images\n600 misclassified")
    # cell numbers sit in their own cells; tick labels, titles and axis labels must not touch one another
    cells = {str(v) for v in cm.flatten()} | {f"{v:.2f}" for v in (cm / cm.sum(1, keepdims=True)).flatten()}
    clashes = [(a, b) for a, b in _texts_overlap(fig) if not (a in cells and b in cells)]
    assert not clashes, clashes[:5]
    pyplot().close(fig)
    from PIL import Image
    images = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)) for _ in range(7)] + [None]
    rows = [{"actual": names[i], "predicted": names[-1 - i], "loss": 3.1, "probability": 0.93} for i in range(8)]
    fig = report.plot_top_losses(images, rows, "top 8 losses\npredicted / actual / loss / probability")
    assert not _texts_overlap(fig)
    pyplot().close(fig)


def test_report_bad_inputs_write_nothing(setup, tmp_path):
    root, data, _ = setup
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    for args, msg in ((["--report", str(a_file)], "is a file, not a folder"),
                      (["--report", str(a_file / "sub")], "is a file, not a folder"),
                      (["--report", str(tmp_path / "r"), "--top-losses", "0"], "--top-losses must be >= 1")):
        out = subprocess.run([sys.executable, "-m", "resnet50", "evaluate", "--weights", str(root / "m.safetensors"),
                              "--data", str(data), "--no-progress", *args], capture_output=True, text=True)
        assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and a_file.read_text() == "x"
