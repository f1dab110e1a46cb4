"""resnet50.detect.coco: pycocotools on a hand-checked case, bad COCO files, counted skips and repairs, letterboxing."""

import json
import numpy as np
import pytest
from PIL import Image

from resnet50 import UserError
from resnet50.detect.coco import CocoDataset, coco_evaluate, letterbox, make_batch

from ..helpers import write_coco


def test_coco_evaluation_on_a_hand_checked_case():
    gt = {"images": [{"id": 1, "width": 50, "height": 50}, {"id": 2, "width": 50, "height": 50}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                           "iscrowd": 0}],
          "categories": [{"id": 1, "name": "square"}]}
    # image 1: exact (IoU 1); image 2: IoU 0.72 (a hit at thresholds .50-.70, a miss at .75-.95)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 7.2], "score": 0.8}]
    r = coco_evaluate(gt, dets)
    # at .50-.70 both hit: AP 1. At .75-.95 the first hit (recall .5, precision 1) then a false positive: of the
    # 101 recall points 0, .01, ..., 1 the 51 up to .5 have precision 1, the rest 0: AP 51/101.
    assert r["map50"] == pytest.approx(1.0)
    assert r["map"] == pytest.approx((5 * 1.0 + 5 * 51 / 101) / 10)
    assert r["per_class"] == {"square": pytest.approx(r["map"])}
    assert coco_evaluate(gt, [])["map"] == 0.0
    # the same boxes with a wrong label: per class AP 0 for both categories; labels ignored, the figures above
    gt2 = dict(gt, categories=gt["categories"] + [{"id": 2, "name": "disc"}])
    wrong = [dict(d, category_id=2) for d in dets]
    r2 = coco_evaluate(gt2, wrong)
    assert r2["map50"] == 0.0 and r2["per_class"] == {"square": 0.0, "disc": None}
    agnostic = coco_evaluate(gt2, wrong, use_cats=False)
    assert agnostic["map50"] == pytest.approx(1.0) and agnostic["map"] == pytest.approx(r["map"])
    assert agnostic["per_class"] == {}


def test_bad_coco_inputs_are_one_line_errors(tmp_path):
    ok_image = {"id": 1, "file_name": "a.png", "width": 20, "height": 20}
    cases = {
        "not json": ("{nope", r"instances.json is not a COCO instances JSON \(not JSON"),
        "not coco": ('{"info": {}}', r"needs 'images', 'annotations' and 'categories'"),
        "unknown category": ({"images": [ok_image], "annotations": [
            {"id": 7, "image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5]}]},
            r"instances.json: annotation 7 has category_id 99, which is not in 'categories'"),
        "unknown image": ({"images": [ok_image], "annotations": [
            {"id": 8, "image_id": 5, "category_id": 1, "bbox": [0, 0, 5, 5]}]}, r"annotation 8 has image_id 5"),
        "bad bbox": ({"images": [ok_image], "annotations": [
            {"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5]}]}, r"annotation 9 needs 'bbox' as 4"),
        "bad image entry": ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": []},
                            r"images\[0\] needs an integer 'id'"),
        "duplicate image": ({"images": [ok_image, ok_image], "annotations": []}, r"image id 1 appears twice"),
    }
    for name, (content, pattern) in cases.items():
        root = tmp_path / name.replace(" ", "_")
        root.mkdir()
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "a.png")
        if isinstance(content, dict):
            content = json.dumps({**content, "categories": [{"id": 1, "name": "square"}]})
        (root / "instances.json").write_text(content)
        with pytest.raises(UserError, match=pattern) as e:
            CocoDataset(root)
        assert "\n" not in str(e.value) and str(root / "instances.json") in str(e.value)


def test_coco_skips_and_repairs_are_counted(tmp_path):
    images = [{"id": i, "file_name": f"images/{i}.png", "width": 40, "height": 30} for i in (1, 2, 3)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5, 5, 0, 10]},  # zero area: skipped
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [35, 20, 20, 20]},  # partly outside: clipped
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [50, 50, 5, 5]},  # wholly outside: skipped
            {"id": 5, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]}]  # its image is missing
    root = write_coco(tmp_path / "d", images, anns)
    (root / "images" / "3.png").unlink()
    ds = CocoDataset(root)
    s = ds.stats
    assert (s.images, s.boxes, s.zero_area_boxes, s.outside_boxes, s.clipped_boxes, s.missing_images,
            s.images_without_boxes) == (2, 2, 1, 1, 1, 1, 1)
    assert "annotation 2" in s.examples["zero_area_boxes"] and "3.png" in s.examples["missing_images"]
    assert ds.images[0].boxes.tolist() == [[5, 5, 15, 15], [35, 20, 40, 30]]
    assert [a["image_id"] for a in ds.ground_truth()["annotations"]] == [1, 1]
    (root / "images" / "2.png").write_bytes(b"not a png")
    batch = make_batch(ds, [0, 1], 64)
    assert batch.image_ids == [1] and len(batch.skipped) == 1 and "2.png" in batch.skipped[0].path
    for i in (1, 2):
        (root / "images" / f"{i}.png").unlink()
    with pytest.raises(UserError, match="none of its 3 image files exist"):
        CocoDataset(root)


def test_letterbox_and_flip():
    pixels = np.zeros((30, 60), np.uint8)
    pixels[:, :10] = 255
    x, scale = letterbox(pixels, 64)
    assert scale == pytest.approx(64 / 60) and x.shape == (1, 64, 64)
    assert x[0, 40:].abs().sum() == 0  # padding below
    assert x[0, 5, 2] > 0.9 and x[0, 5, 60] < 0.1
