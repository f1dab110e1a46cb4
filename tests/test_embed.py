"""resnet50 embed (pooled features with their paths) and evaluate --knn (k-NN on frozen features): hand-checked
k-NN cases, features against the model by hand, the three output formats, the bad inputs."""

import json
import math
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from resnet50 import create_model, embed, weights
from resnet50.data import TransformConfig, build_dataset, build_transform, preprocess
from resnet50.errors import UserError

from .helpers import make_idx_dataset


def at(*cosines):
    """Unit vectors in the plane whose cosine similarity with the query (1, 0) is each of ``cosines``."""
    return torch.tensor([[c, math.sqrt(max(0.0, 1 - c * c))] for c in cosines])


QUERY = torch.tensor([[1.0, 0.0]])


def knn(gallery, labels, k, vote="majority"):
    return int(embed.knn_predict(gallery, torch.tensor(labels), QUERY, k, 3, vote)[0])


def test_knn_uses_cosine_similarity_not_distance():
    gallery = torch.tensor([[0.1, 0.0], [1.0, 0.3]])  # class 0: the same direction but far; class 1: near, turned
    assert knn(gallery, [0, 1], 1) == 0  # cosine 1.0 against 0.958 (Euclidean distance would pick class 1)


def test_knn_majority_vote_and_dino_weighted_vote():
    # neighbours by similarity: class 0 at 1.0, class 1 at 0.9 and 0.9; class 2 at -0.5 is not among the 3
    gallery, labels = at(1.0, 0.9, 0.9, -0.5), [0, 1, 1, 2]
    assert knn(gallery, labels, 3) == 1  # two votes against one
    # DINO: exp(1.0 / 0.07) = 1.6e6 for class 0 against 2 exp(0.9 / 0.07) = 7.7e5 for class 1
    assert knn(gallery, labels, 3, "weighted") == 0
    assert knn(gallery, labels, 1) == 0


def test_knn_tie_goes_to_the_larger_similarity_sum():
    # k = 4: class 0 at 0.99 and 0.5 (sum 1.49), class 1 at 0.9 and 0.8 (sum 1.7): two votes each
    gallery, labels = at(0.99, 0.5, 0.9, 0.8, 0.1), [0, 0, 1, 1, 2]
    assert knn(gallery, labels, 4) == 1  # not the nearest neighbour's class, not the lower index
    assert knn(gallery, labels, 4, "weighted") == 0  # exp(0.99 / 0.07) outweighs the rest
    # several queries at once, row by row: the query scaled (cosine ignores length), and (0, 1), whose 4 nearest
    # are class 2 (0.995), class 0 (0.866), class 1 (0.6, 0.436): class 1 by two votes
    queries = torch.cat([QUERY, 5 * QUERY, torch.tensor([[0.0, 1.0]])])
    assert embed.knn_predict(gallery, torch.tensor(labels), queries, 4, 3).tolist() == [1, 1, 1]
    assert embed.knn_predict(gallery, torch.tensor(labels), queries, 1, 3).tolist() == [0, 0, 2]


def test_knn_refuses_bad_k():
    g = at(1.0, 0.5)
    for k, msg in ((0, "--knn must be >= 1"), (3, "exceeds the 2 gallery images")):
        with pytest.raises(UserError, match=msg):
            embed.knn_predict(g, torch.tensor([0, 1]), QUERY, k, 2)
    with pytest.raises(UserError, match="majority, weighted"):
        embed.knn_predict(g, torch.tensor([0, 1]), QUERY, 1, 2, "vote")


# --- resnet50 embed ----------------------------------------------------------------------------------------------

@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name, size in (("a.png", (40, 50)), ("b.jpg", (64, 36)), ("sub/c.png", (33, 33)), ("sub/d.png", (80, 60))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


def run(*args):
    return subprocess.run([sys.executable, "-m", "resnet50", *map(str, args)], capture_output=True, text=True)


def test_embed_cli_features_equal_the_model_by_hand(images, rgb_checkpoint, tmp_path):
    out = run("embed", images, "--weights", rgb_checkpoint, "--out", tmp_path / "f.npy", "--batch-size", 3,
              "--json", "--no-progress")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    good = [images / n for n in ("a.png", "b.jpg", "sub/c.png", "sub/d.png")]
    assert (r["count"], r["dim"]) == (4, 512)  # ResNet-18's width; 2048 for ResNet-50
    assert r["skipped"] == [{"path": str(images / "broken.png"), "reason": r["skipped"][0]["reason"]}]
    assert "broken.png" in out.stderr
    assert r["files"] == [str(tmp_path / "f.npy"), str(tmp_path / "f.paths.txt")]
    features = np.load(tmp_path / "f.npy")
    assert features.dtype == np.float32 and features.shape == (4, 512)
    assert (tmp_path / "f.paths.txt").read_text().splitlines() == [str(p) for p in good]
    ckpt = weights.load(rgb_checkpoint)
    x = torch.from_numpy(np.stack([preprocess(p, ckpt) for p in good]))
    with torch.no_grad():
        expected = ckpt.model.eval().forward_embedding(x).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_embed_npz_and_parquet_hold_the_same_rows(images, rgb_checkpoint, tmp_path):
    ckpt = embed.load_classifier(rgb_checkpoint)
    files = sorted(p for p in images.rglob("*") if p.is_file())
    emb = embed.embed_files(files, ckpt, batch_size=2)
    assert len(emb.paths) == 4 and [s.path for s in emb.skipped] == [str(images / "broken.png")]
    for name in ("f.npy", "f.npz", "f.parquet"):
        embed.save_embeddings(emb, tmp_path / name)
        back = embed.load_embeddings(tmp_path / name)
        assert back.paths == emb.paths and back.features.dtype == np.float32
        np.testing.assert_array_equal(back.features, emb.features)
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(tmp_path / "f.parquet")
    assert table.column_names == ["path", "embedding"] and len(table.column("embedding")[0]) == 512


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if it were not installed
    with pytest.raises(UserError, match=r"resnet50\[ray\]"):
        embed.check_out(tmp_path / "f.parquet")


def test_embed_bad_inputs_write_nothing(images, rgb_checkpoint, tmp_path):
    from resnet50.detect.checkpoint import save_detector
    from resnet50.detect.retinanet import DetectorConfig, RetinaNet

    detector = tmp_path / "w" / "detector.safetensors"
    detector.parent.mkdir()
    save_detector(detector, RetinaNet(DetectorConfig(arch="resnet18", num_classes=2, image_size=64)), ["a", "b"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for args, msg in (((images, "--weights", detector, "--out", out_dir / "f.npy"), "holds a detector"),
                      ((images, "--weights", rgb_checkpoint, "--out", out_dir / "f.csv"), "end the name with .npy"),
                      ((images, "--weights", rgb_checkpoint, "--out", out_dir / "no" / "f.npy"), "does not exist"),
                      ((images, "--weights", rgb_checkpoint, "--out", out_dir / "f.npy", "--device", "gpu0"),
                       "is not a torch device"),
                      ((images / "broken.png", "--weights", rgb_checkpoint, "--out", out_dir / "f.npy"),
                       "no image could be read")):
        out = run("embed", *args, "--no-progress")
        assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert [line for line in out.stderr.splitlines() if "error:" in line] == [out.stderr.splitlines()[-1]]
        assert not list(out_dir.iterdir())


# --- evaluate --knn ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("knn")
    data = make_idx_dataset(root / "idx")
    torch.manual_seed(0)
    m = create_model("resnet20_cifar", num_classes=4, in_chans=1).eval()
    weights.save(root / "m.safetensors", m, ["h", "v", "check", "diag"],
                 weights.Preprocessing(resize=28, crop=32, mean=(0.3,), std=(0.3,)))
    return root, data, m


def features_by_hand(data, split, m):
    ds = build_dataset(data, split, in_chans=1)
    ds.transform = build_transform(TransformConfig(image_size=32, crop_pct=32 / 28, mean=(0.3,), std=(0.3,),
                                                   in_chans=1), train=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        return m.forward_embedding(x).double().numpy(), np.array(ds.targets)


def test_evaluate_knn_cli_equals_a_vote_by_hand(setup):
    root, data, m = setup
    out = run("evaluate", "--weights", root / "m.safetensors", "--data", data, "--knn", 5, "--json", "--no-progress")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)["knn"]
    g, gl = features_by_hand(data, "train", m)
    q, ql = features_by_hand(data, "test", m)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    correct = 0
    for feat, label in zip(q, ql):
        sims = g @ feat
        votes, sums = defaultdict(int), defaultdict(float)
        for j in np.argsort(-sims)[:5]:
            votes[gl[j]] += 1
            sums[gl[j]] += sims[j]
        correct += max(votes, key=lambda c: (votes[c], sums[c], -c)) == label
    assert (r["k"], r["vote"], r["gallery"], r["queries"]) == (5, "majority", len(gl), 40)
    assert r["top1"] == correct / 40
    assert "5-NN on pooled features" in run("evaluate", "--weights", root / "m.safetensors", "--data", data,
                                            "--knn", 5, "--no-progress").stdout


def test_evaluate_knn_bad_inputs_write_nothing(setup, tmp_path):
    root, data, _ = setup
    for args, msg in ((("--knn", 0), "--knn must be >= 1"), (("--knn", 3, "--split", "train"), "--split val"),
                      (("--knn", 1000), "exceeds the 88 images of the train split")):
        out = run("evaluate", "--weights", root / "m.safetensors", "--data", data, "--out", tmp_path / "o",
                  "--report", tmp_path / "r", "--no-progress", *args)
        assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert not list(tmp_path.iterdir())
