"""How big the pictures this package draws are: small images are enlarged so labels stay legible, by one bounded
rule (``cam.upscale_factor``) for CAM overlays and detection boxes alike, so that a strip image cannot become a
picture of gigabytes (a 1500 x 3 image was drawn 192,000 x 384)."""

import numpy as np
import pytest
from PIL import Image

from resnet50.cam import MAX_PICTURE_SIDE, draw_overlay, upscale_factor
from resnet50.detect.predict import PALETTE, draw_detections


@pytest.mark.parametrize("size, factor", [
    ((64, 48), 8),  # 48 -> 384
    ((28, 28), 14),  # 392 x 392
    ((400, 500), 1),  # already large enough
    ((8000, 6000), 1),  # a large photo is never shrunk
    ((1500, 3), 2),  # would be 128 (192,000 px wide): bounded by 4096 // 1500
    ((3, 1500), 2),
    ((5000, 3), 1),  # longer than the bound already: drawn as it is
    ((1, 1), 384),
])
def test_upscale_factor_reaches_min_side_within_the_bound(size, factor):
    assert upscale_factor(*size) == factor
    w, h = size
    assert max(w, h) * factor <= max(MAX_PICTURE_SIDE, w, h)


def test_detection_pictures_of_strips_are_bounded():
    strip = np.full((3, 1500, 3), 80, np.uint8)
    det = [{"label": "cat", "class_index": 0, "score": 0.9, "box": [100.0, 0.0, 400.0, 3.0]}]
    pic = draw_detections(strip, det)
    assert pic.size == (3000, 6) and pic.mode == "RGB"
    a = np.asarray(pic)
    assert tuple(a[5, 200]) == tuple(int(PALETTE[0][i:i + 2], 16) for i in (1, 3, 5))  # the box, scaled by 2
    assert draw_detections(strip.transpose(1, 0, 2).copy(), []).size == (6, 3000)
    assert draw_detections(np.zeros((48, 64), np.uint8), []).size == (512, 384)  # small images still enlarged


def test_cam_overlays_of_strips_are_bounded():
    pic = draw_overlay(Image.new("RGB", (1500, 3), (90, 90, 90)), np.ones((3, 1500), np.float32), box=None,
                       label="Bag")
    assert pic.size == (3000, 6) and pic.mode == "RGB"
