"""Batch inference on Ray Data (a local Ray with 2 CPUs): every input format gives plain ``predict``'s top-k for the
same images, unreadable images are counted error rows, embeddings are the model's pooled features."""

import io
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest
import ray  # the 'ray' extra, installed by the 'test' extra
import torch
from PIL import Image

from resnet50.batch_predict import batch_predict
from resnet50.data.discover import expand_inputs
from resnet50.data.transforms import preprocess
from resnet50.errors import UserError
from resnet50.infer import create_backend, load_model
from resnet50.predict import predict_files

K = 3


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (30 + i, 44, 3), dtype=np.uint8)).save(d / f"img{i:02d}.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return d


@pytest.fixture(scope="module")
def reference(images, rgb_checkpoint):
    """Plain predict on the same files: {absolute path: (indices, scores)} or {path: error}."""
    loaded = load_model(rgb_checkpoint)
    files = [p.resolve() for p in expand_inputs([images])]
    return {r.file: r.error if r.error else ([p["index"] for p in r.top], [p["probability"] for p in r.top])
            for r in predict_files(files, loaded, create_backend("eager", loaded, 1), k=K, batch_size=5)}


def rows(out) -> dict:
    t = pyarrow.dataset.dataset(str(out), format="parquet").to_table().to_pylist()
    return {r["path"]: r for r in t}


def assert_matches(got: dict, want: dict, rename=lambda p: p) -> None:
    assert {rename(p) for p in want} == set(got)
    for path, ref in want.items():
        r = got[rename(path)]
        if isinstance(ref, str):
            assert r["error"] == ref and r["indices"] is None
            continue
        assert r["error"] is None and r["indices"] == ref[0], path
        assert r["classes"] == [["red", "green", "blue"][i] for i in ref[0]]
        assert r["scores"] == pytest.approx(ref[1], abs=1e-5)


def test_a_folder_with_a_corrupt_file_and_embeddings(local_ray, images, rgb_checkpoint, reference, tmp_path):
    res = batch_predict([str(images)], str(rgb_checkpoint), tmp_path / "out", k=K, batch_size=4, actors=2,
                        cpus_per_actor=0.5, embeddings=True)
    assert (res.rows, res.errors, res.input_format, res.backend) == (13, 1, "images", "eager")
    got = rows(tmp_path / "out")
    assert_matches(got, reference)
    assert "cannot identify image file" in got[str((images / "corrupt.png").resolve())]["error"]
    # the embedding is the model's pooled last stage (512-d for ResNet-18) of the same preprocessed image
    loaded = load_model(rgb_checkpoint)
    path = str((images / "img03.png").resolve())
    x = torch.from_numpy(preprocess(path, loaded))[None]
    with torch.inference_mode():
        want = loaded.model.forward_embedding(x)[0].numpy()
    assert np.allclose(np.array(got[path]["embedding"]), want, atol=1e-5) and want.shape == (512,)
    assert got[str((images / "corrupt.png").resolve())]["embedding"] is None


def test_a_list_file_and_parquet_of_paths_and_of_bytes(local_ray, images, rgb_checkpoint, reference, tmp_path):
    files = sorted(reference)
    (tmp_path / "list.txt").write_text("# images\n" + "\n".join(files) + "\n\n")
    res = batch_predict([str(tmp_path / "list.txt")], str(rgb_checkpoint), tmp_path / "from_list", k=K)
    assert (res.rows, res.errors, res.input_format) == (13, 1, "list")
    assert_matches(rows(tmp_path / "from_list"), reference)

    table = pa.table({"key": [f"k{i}" for i in range(len(files))], "path": files,
                      "image": [open(f, "rb").read() for f in files]})
    pq.write_table(table, tmp_path / "images.parquet")
    res = batch_predict([str(tmp_path / "images.parquet")], str(rgb_checkpoint), tmp_path / "from_bytes", k=K,
                        id_column="key", batch_size=5)
    assert (res.rows, res.errors, res.input_format) == (13, 1, "parquet")
    names = {f: f"k{i}" for i, f in enumerate(files)}
    bytes_rows = rows(tmp_path / "from_bytes")
    assert_matches({k: v for k, v in bytes_rows.items() if v["error"] is None},
                   {f: r for f, r in reference.items() if not isinstance(r, str)}, names.get)
    assert bytes_rows[names[str((images / "corrupt.png").resolve())]]["error"].startswith("cannot identify")
    res = batch_predict([str(tmp_path / "images.parquet")], str(rgb_checkpoint), tmp_path / "from_paths", k=K,
                        column="path")
    assert (res.rows, res.errors) == (13, 1)
    assert_matches(rows(tmp_path / "from_paths"), reference)


def test_webdataset_shards(local_ray, images, rgb_checkpoint, reference, tmp_path):
    shard = tmp_path / "shard-000000.tar"
    good = sorted(p for p, r in reference.items() if not isinstance(r, str))
    with tarfile.open(shard, "w") as tar:
        for i, f in enumerate(good):
            for ext, data in (("png", open(f, "rb").read()), ("cls", b"0")):
                info = tarfile.TarInfo(f"s{i:02d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    res = batch_predict([str(shard)], str(rgb_checkpoint), tmp_path / "out", k=K)
    assert (res.rows, res.errors, res.input_format) == (12, 0, "webdataset")
    assert_matches(rows(tmp_path / "out"), {f: reference[f] for f in good},
                   {f: f"{shard}#s{i:02d}" for i, f in enumerate(good)}.get)


def test_bad_options_are_refused_before_any_work(images, rgb_checkpoint, tmp_path):
    for kw, msg in ((dict(actors=0), "--actors must be >= 1"), (dict(input_format="parquet"), "neither a Parquet"),
                    (dict(embeddings=True, backend="onnx"), "--backend eager")):
        with pytest.raises(UserError, match=msg):
            batch_predict([str(images)], str(rgb_checkpoint), tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()
    (tmp_path / "exists").mkdir()
    out = subprocess.run([sys.executable, "-m", "resnet50", "batch-predict", str(images), "--weights",
                          str(rgb_checkpoint), "--out", str(tmp_path / "exists")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and "exists; give a new folder" in out.stderr and "Traceback" not in out.stderr


def test_parquet_that_pipelines_produce(local_ray, images, rgb_checkpoint, reference, tmp_path):
    """A null path (a failed join) or null bytes are that row's error; two schemas in one folder and zero rows are
    one line about the input, before Ray runs anything."""
    files = sorted(p for p, r in reference.items() if not isinstance(r, str))[:4]
    pq.write_table(pa.table({"path": files[:2] + [None, ""] + files[2:]}), tmp_path / "null_path.parquet")
    res = batch_predict([str(tmp_path / "null_path.parquet")], str(rgb_checkpoint), tmp_path / "o_null", k=K)
    assert (res.rows, res.errors) == (6, 2)
    t = pyarrow.dataset.dataset(str(tmp_path / "o_null"), format="parquet").to_table().to_pylist()
    bad = [r for r in t if r["error"]]
    assert [(r["path"], r["error"]) for r in bad] == [(None, "no image path (a null or empty 'path')"),
                                                      ("", "no image path (a null or empty 'path')")]
    assert_matches({r["path"]: r for r in t if not r["error"]}, {f: reference[f] for f in files})

    data = [open(f, "rb").read() for f in files[:2]]
    pq.write_table(pa.table({"key": ["a", None, "c"], "image": pa.array([data[0], data[1], None], pa.binary())}),
                   tmp_path / "null_bytes.parquet")
    res = batch_predict([str(tmp_path / "null_bytes.parquet")], str(rgb_checkpoint), tmp_path / "o_bytes", k=K)
    got = sorted(pyarrow.dataset.dataset(str(tmp_path / "o_bytes"), format="parquet").to_table().to_pylist(),
                 key=lambda r: (r["path"] is None, r["path"] or ""))
    assert (res.rows, res.errors) == (3, 1)
    assert [(r["path"], r["error"]) for r in got] == [("a", None), ("c", "null in the image column 'image'"),
                                                      (None, None)]
    assert got[2]["indices"] == reference[files[1]][0]  # a row without a name is still predicted


def test_parquet_input_errors_are_one_line(images, rgb_checkpoint, tmp_path):
    two = tmp_path / "two_schemas"
    two.mkdir()
    pq.write_table(pa.table({"path": ["x.png"]}), two / "a.parquet")
    pq.write_table(pa.table({"file": ["y.png"]}), two / "b.parquet")
    pq.write_table(pa.table({"path": pa.array([], pa.string())}), tmp_path / "zero.parquet")
    (tmp_path / "typed").mkdir()
    pq.write_table(pa.table({"path": ["x.png"]}), tmp_path / "typed" / "a.parquet")
    pq.write_table(pa.table({"path": [1]}), tmp_path / "typed" / "b.parquet")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.parquet").write_bytes(b"not parquet at all")
    for source, words in ((two, "b.parquet has no column 'path' (its columns: file), unlike a.parquet: the folder "
                                "mixes two schemas"),
                          (tmp_path / "zero.parquet", "holds no rows (1 file(s), 0 rows); nothing to predict"),
                          (tmp_path / "typed", "b.parquet has 'path' as int64, unlike a.parquet"),
                          (tmp_path / "junk", "a.parquet is not a readable Parquet file")):
        out = subprocess.run([sys.executable, "-m", "resnet50", "batch-predict", str(source), "--weights",
                              str(rgb_checkpoint), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and words in out.stderr, out.stderr
        assert not (tmp_path / "o").exists()


def test_an_actor_pool_that_leaves_no_cpu_for_reading_is_refused(local_ray, images, rgb_checkpoint, tmp_path):
    """Ray Data's reading tasks need a CPU beside the actors: --actors N on N CPUs used to wait for ever."""
    with pytest.raises(UserError, match=r"--actors 2 x --cpus-per-actor 1 = 2 CPU\(s\) leave less than the 1 CPU "
                                        r"that reading the inputs needs, of this Ray's 2 .* use --actors 1"):
        batch_predict([str(images)], str(rgb_checkpoint), tmp_path / "o", actors=2)  # the fixture's Ray: 2 CPUs
    with pytest.raises(UserError, match=r"needs 2 GPUs; this Ray has 0"):
        batch_predict([str(images)], str(rgb_checkpoint), tmp_path / "o", actors=2, cpus_per_actor=0.5,
                      gpus_per_actor=1)
    assert not (tmp_path / "o").exists()
    out = subprocess.run([sys.executable, "-m", "resnet50", "batch-predict", str(images), "--weights",
                          str(rgb_checkpoint), "--out", str(tmp_path / "o"), "--actors", "1", "--num-cpus", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "use --num-cpus 2 (Ray's CPUs are logical)" in \
        out.stderr, out.stderr
