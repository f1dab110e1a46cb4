"""The scene rule of resnet50.scenes, checked against a second implementation written from its docstring alone."""

import json

import numpy as np
import pytest
from PIL import Image

from resnet50.data import FASHION_MNIST_CLASSES, IdxDataset, embedded_dataset
from resnet50.errors import UserError
from resnet50.scenes import generate_scenes, iou, make_scene, read_scenes, write_scenes

from .helpers import make_idx_dataset


def reference_scene(rng, images, labels, kind, size=128):
    """The rule as the docstring states it, written independently of the module (no shared helper)."""
    canvas = np.zeros((size, size), np.uint8)
    n = 1 if kind == "single" else int(rng.integers(1, 5))
    placed = []
    for _ in range(n):
        while True:
            i = int(rng.integers(0, len(images)))
            side = round(28 * float(rng.uniform(1.0, 3.0)))
            x = int(rng.integers(0, size - side + 1))
            y = int(rng.integers(0, size - side + 1))
            item = np.array(Image.fromarray(images[i]).resize((side, side), Image.Resampling.BILINEAR))
            rows = np.flatnonzero(item.max(axis=1) >= 26)
            cols = np.flatnonzero(item.max(axis=0) >= 26)
            if len(rows) == 0:
                continue
            box = [x + cols[0], y + rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            if kind == "multi" and any(_iou_ref(box, b) > 0.3 for _, b, _, _, _ in placed):
                continue
            placed.append((int(labels[i]), [int(v) for v in box], item, x, y))
            break
    for _, _, item, x, y in placed:
        canvas[y:y + item.shape[0], x:x + item.shape[1]] = np.maximum(canvas[y:y + item.shape[0], x:x + item.shape[1]],
                                                                      item)
    return canvas, [(label, box) for label, box, _, _, _ in placed]


def _iou_ref(a, b):
    ax0, ay0, ax1, ay1 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx0, by0, bx1, by1 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def val():
    ds = embedded_dataset("val")
    return ds.images, ds.targets


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_scenes_equal_the_rule_recomputed_independently(val, kind):
    images, labels = val
    for seed in range(25):
        ours = make_scene(np.random.default_rng(seed), images, labels, kind)
        theirs = reference_scene(np.random.Generator(np.random.PCG64(seed)), images, labels, kind)
        assert ours[1] == theirs[1], seed
        np.testing.assert_array_equal(ours[0], theirs[0])


def test_a_scene_consumes_exactly_the_rules_draws(val):
    images, labels = val
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(5):
        make_scene(a, images, labels, "multi")
        reference_scene(b, images, labels, "multi")
    assert a.integers(0, 2**62) == b.integers(0, 2**62)  # the streams are at the same place


def test_single_scene_box_is_tight_around_pixels_ge_26(val):
    images, labels = val
    rng = np.random.default_rng(3)
    for _ in range(40):
        canvas, items = make_scene(rng, images, labels, "single")
        assert len(items) == 1
        label, (x, y, w, h) = items[0]
        assert 0 <= label < 10 and 1 <= w <= 84 and 1 <= h <= 84
        assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
        ys, xs = np.nonzero(canvas >= 26)  # one item: the canvas is that item
        assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == [x, y, w, h]


def test_multi_scenes_counts_and_overlaps(val):
    images, labels = val
    canvases, items = generate_scenes("val", "multi", count=300, seed=11)
    counts = np.bincount([len(s) for s in items], minlength=5)
    assert counts[0] == 0 and all(c > 40 for c in counts[1:])  # 1 to 4 items, each count common (about 75 each)
    assert counts.sum() == 300
    for scene in items:
        boxes = [b for _, b in scene]
        for i in range(len(boxes)):
            assert all(v >= 0 for v in boxes[i]) and boxes[i][0] + boxes[i][2] <= 128 and boxes[i][1] + boxes[i][3] <= 128
            for j in range(i):
                assert iou(boxes[i], boxes[j]) <= 0.3
    assert max(_iou_ref(s[0][1], s[1][1]) for s in items if len(s) > 1) > 0.05  # boxes do overlap sometimes


def test_generate_scenes_is_deterministic_and_seeded():
    a, items_a = generate_scenes("val", "multi", count=8, size=100, seed=5)
    b, items_b = generate_scenes("val", "multi", count=8, size=100, seed=5)
    c, items_c = generate_scenes("val", "multi", count=8, size=100, seed=6)
    assert a.shape == (8, 100, 100) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert items_a == items_b and items_a != items_c


def test_a_hidden_set_takes_its_items_from_another_idx_folder_by_the_same_rule(tmp_path):
    idx = make_idx_dataset(tmp_path / "idx", n_train=8, n_test=12, classes=4)  # t10k: 12 items of 4 classes
    canvases, items = generate_scenes("test", "single", count=20, seed=3, clutter=False, items_from=idx)
    t10k = IdxDataset(idx, "test")
    rng = np.random.Generator(np.random.PCG64(3))
    for canvas, scene in zip(canvases, items):
        theirs = reference_scene(rng, t10k.images, t10k.targets, "single")
        np.testing.assert_array_equal(canvas, theirs[0])
        assert scene == theirs[1] and scene[0][0] < 4
    coco = json.loads(write_scenes(tmp_path / "s", "test", count=2, items_from=idx).read_text())
    assert coco["info"]["items_from"] == str(idx) and "test split of" in coco["info"]["description"]
    with pytest.raises(UserError):
        generate_scenes("test", count=2, items_from=tmp_path / "nowhere")


def test_write_scenes_coco_json(tmp_path):
    path = write_scenes(tmp_path / "s", split="val", kind="multi", count=6, size=128, seed=2)
    assert path == tmp_path / "s" / "instances.json"
    coco = json.loads(path.read_text())
    canvases, items = generate_scenes("val", "multi", count=6, seed=2)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    assert [c["name"] for c in coco["categories"]] == list(FASHION_MNIST_CLASSES)
    assert [im["id"] for im in coco["images"]] == list(range(1, 7))
    anns = coco["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    assert len(anns) == sum(len(s) for s in items)
    k = 0
    for im, canvas, scene in zip(coco["images"], canvases, items):
        assert (im["width"], im["height"]) == (128, 128)
        with Image.open(path.parent / im["file_name"]) as png:
            assert png.mode == "L"
            np.testing.assert_array_equal(np.asarray(png), canvas)
        for label, box in scene:
            a = anns[k]
            assert (a["image_id"], a["category_id"], a["bbox"]) == (im["id"], label + 1, box)
            assert a["area"] == box[2] * box[3] and a["iscrowd"] == 0
            k += 1
    assert not list((tmp_path / "s").glob(".*.tmp")) and not list((tmp_path / "s" / "images").glob(".*.tmp"))


def test_write_scenes_is_byte_identical_on_rewrite(tmp_path):
    a = write_scenes(tmp_path / "a", "val", "single", count=3, seed=9)
    b = write_scenes(tmp_path / "b", "val", "single", count=3, seed=9)
    assert a.read_bytes() != b"" and json.loads(a.read_text())["images"] == json.loads(b.read_text())["images"]
    assert json.loads(a.read_text())["annotations"] == json.loads(b.read_text())["annotations"]
    for name in ("000001.png", "000002.png", "000003.png"):
        assert (a.parent / "images" / name).read_bytes() == (b.parent / "images" / name).read_bytes()


def test_read_scenes_round_trip(tmp_path):
    write_scenes(tmp_path, "val", "multi", count=4, seed=1)
    s = read_scenes(tmp_path)
    canvases, items = generate_scenes("val", "multi", count=4, seed=1)
    np.testing.assert_array_equal(s.images, canvases)
    assert s.labels == [[label for label, _ in scene] for scene in items]
    assert s.boxes == [[box for _, box in scene] for scene in items]
    assert s.classes == list(FASHION_MNIST_CLASSES) and s.image_ids == [1, 2, 3, 4]


def test_pycocotools_reads_the_json(tmp_path):
    coco_mod = pytest.importorskip("pycocotools.coco")
    path = write_scenes(tmp_path, "val", "multi", count=5, seed=4)
    coco = coco_mod.COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4, 5]
    assert coco.loadCats(2)[0]["name"] == "Trouser"
    assert len(coco.getAnnIds()) == len(json.loads(path.read_text())["annotations"])


def test_training_split_is_the_embedded_training_data():
    train = embedded_dataset("train")
    rng = np.random.default_rng(0)
    i = int(rng.integers(0, len(train.images)))  # the first draw of seed 0 is the first item's index
    _, items = generate_scenes("train", "single", count=1, seed=0)
    assert items[0][0][0] == train.targets[i]


def test_bad_arguments(val):
    images, labels = val
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="84 px"):
        make_scene(rng, images, labels, "single", size=80)
    with pytest.raises(UserError, match="kind"):
        make_scene(rng, images, labels, "many")
    with pytest.raises(UserError, match="28, 28"):
        make_scene(rng, images[:, :20], labels, "single")
    with pytest.raises(UserError, match="count"):
        generate_scenes("val", "single", count=0)
    with pytest.raises(UserError, match="instances.json"):
        read_scenes("/nonexistent/scenes")


def test_iou_known_boxes():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [0, 0, 5, 5]) == pytest.approx(0.25)
    assert iou([0, 0, 10, 10], [10, 0, 10, 10]) == 0.0  # touching edges share no area
    assert iou([0, 0, 10, 10], [30, 30, 4, 4]) == 0.0
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_cluttered_scenes_follow_the_rule_with_fixed_seeds():
    from PIL import Image as PILImage

    from resnet50.data import embedded_dataset
    from resnet50.scenes import clutter_background

    ds = embedded_dataset("val")
    ours, items = make_scene(np.random.default_rng(5), ds.images, ds.targets, "single", 128, clutter=True)
    # the rule, written again from the docstring: background first, then the item by the plain rule
    rng = np.random.default_rng(5)
    grid = rng.integers(0, 97, (8, 8))
    bg = np.asarray(PILImage.fromarray(grid.astype(np.uint8)).resize((128, 128), PILImage.Resampling.BILINEAR))
    bg = np.clip(bg.astype(np.int64) + rng.integers(0, 25, (128, 128)), 0, 255).astype(np.uint8)
    plain, plain_items = make_scene(rng, ds.images, ds.targets, "single", 128)
    assert items == plain_items  # the same item and box as a plain scene drawn after the background
    assert np.array_equal(ours, np.maximum(bg, plain))
    assert 0 <= bg.min() and bg.max() <= 96 + 24 and bg.std() > 10  # a real clutter, never white
    assert np.array_equal(clutter_background(np.random.default_rng(5), 128), bg)
    # whole sets: cluttered canvases are brighter everywhere, one box per single scene
    canvases, boxes = generate_scenes("val", "single", count=20, seed=3, clutter=True)
    plain_canvases, plain_boxes = generate_scenes("val", "single", count=20, seed=3)
    assert canvases.mean() > plain_canvases.mean() + 20 and len(boxes) == 20
