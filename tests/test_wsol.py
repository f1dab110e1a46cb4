"""resnet50.localize.wsol: DDT's component on planted descriptors, boxes from maps by both rules, the heat-offset
measure on a hand-checked map, Choe et al.'s threshold choice, pseudo boxes written in the images' own pixels, and
``resnet50 localize wsol`` end to end on a tiny classifier (with its bad inputs)."""

import json

import pytest
import torch

from resnet50 import create_model, weights
from resnet50.cli import main
from resnet50.data import Preprocessing
from resnet50.detect.coco import CocoDataset, make_batch
from resnet50.errors import UserError
from resnet50.localize.wsol import DDT, choose_threshold, heat_offsets, map_boxes, write_pseudo_boxes
from resnet50.scenes import write_scenes


def planted(n: int, c: int = 16, seed: int = 0):
    """Descriptors of n 16 x 16 maps: per image a background vector of its own (images differ, as plain and
    cluttered scenes do) plus noise, and a 3 x 3 object block at a known place that adds 4 * u."""
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(c)
    u[3] = 1.0
    feats = 0.02 * torch.randn(n, c, 16, 16, generator=g) + 3 * torch.randn(n, c, 1, 1, generator=g)
    where = []
    for i in range(n):
        y, x = torch.randint(1, 13, (2,), generator=g).tolist()
        feats[i, :, y:y + 3, x:x + 3] += 4 * u[:, None, None]
        where.append((y, x))
    return feats, u, where


def test_ddt_finds_the_planted_object_direction_with_the_object_positive():
    feats, u, where = planted(24)
    ddt = DDT.from_descriptors([(feats[:12], torch.zeros(12, dtype=torch.int64)),
                                (feats[12:], torch.zeros(12, dtype=torch.int64))], groups=1)
    assert abs(float(ddt.direction[0] @ u)) > 0.99  # the component is the object's direction ...
    maps = ddt.project(feats, torch.zeros(24, dtype=torch.int64))
    for m, (y, x) in zip(maps, where):  # ... signed so that exactly the object's cells are positive
        expected = torch.zeros(16, 16, dtype=torch.bool)
        expected[y:y + 3, x:x + 3] = True
        assert torch.equal(m > 0, expected)
    with pytest.raises(UserError, match="no image of class"):
        DDT.from_descriptors([(feats, torch.zeros(24, dtype=torch.int64))], groups=2)


def test_boxes_from_maps_by_both_rules():
    m = torch.full((1, 16, 16), -1.0)
    m[0, 4:7, 8:10] = 1.0  # cells (rows 4-6, cols 8-9) positive
    m[0, 12, 1] = 0.3  # a weaker, separate positive cell
    # upsampled at stride 8 (cell i on pixel 8i, linear in between): value > 0 on pixels 8*4-3 .. 8*6+3 in y
    # (the crossing from -1 to 1 halfway between cells) and 8*8-3 .. 8*9+3 in x; the box ends one past the last
    assert map_boxes(m, 128).tolist() == [[61, 29, 76, 52]]
    # 50 % of the maximum: the weak cell (0.3) falls away, the strong region shrinks to where it is >= 0.5
    assert map_boxes(m, 128, 0.5).tolist() == [[62, 30, 75, 51]]
    assert map_boxes(torch.full((1, 16, 16), -1.0), 128, 0.5).tolist() == [[0, 0, 128, 128]]  # nothing: whole image


def test_heat_offset_of_a_single_cell_is_hand_checked():
    m = torch.zeros(1, 16, 16)
    m[0, 5, 7] = 1.0  # a bump centred on pixel (x 56, y 40): its mass centroid is that pixel's centre (56.5, 40.5)
    gt = torch.tensor([[40.0, 30.0, 60.0, 50.0]])  # box centre (50, 40)
    assert heat_offsets(m, gt, 128).tolist() == [[6.5, 0.5]]
    assert torch.isnan(heat_offsets(-m, gt, 128)).all()  # no positive mass: no centroid


def test_threshold_choice_takes_the_best_held_out_gt_known_and_breaks_ties_towards_20_percent():
    m = torch.full((2, 16, 16), -1.0)
    m[:, 4:7, 8:10] = 1.0
    gt = torch.tensor([[62.0, 30.0, 75.0, 51.0]] * 2)
    best, curve = choose_threshold(m, gt, 128)
    assert curve[0.05] == 1.0 and curve[0.95] == 1.0  # every threshold finds the one region here ...
    assert best == 0.2  # ... so the CAM paper's rule wins the tie
    m[:, 12, 1] = 0.3
    m[:, 11:14, 0:3] = 0.3  # a larger weak region: low thresholds now pick it as the largest component
    best, curve = choose_threshold(m, gt, 128)
    assert curve[0.05] == 0.0 and curve[best] == 1.0 and best == 0.2  # 5 % takes the weak region; 20 % does not


def test_pseudo_boxes_are_written_in_the_images_own_pixels(tmp_path):
    write_scenes(tmp_path / "s", "val", "single", 4, seed=0, clutter=True)
    ds = CocoDataset(tmp_path / "s", in_chans=1)
    b = make_batch(ds, list(range(len(ds))), 64)  # letterboxed to 64 px: scale 0.5 of the 128 px scenes
    path = write_pseudo_boxes(ds, b.image_ids, b.boxes[:, 0], b.scales, tmp_path / "p")
    back = CocoDataset(path, in_chans=1)
    assert [im.path.resolve() for im in back.images] == [im.path.resolve() for im in ds.images]
    for a, c in zip(back.images, ds.images):
        assert torch.allclose(torch.from_numpy(a.boxes), torch.from_numpy(c.boxes), atol=1e-3)
        assert a.labels.tolist() == c.labels.tolist()
    assert "no true box" in json.loads(path.read_text())["info"]["description"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsol")
    for name, split, n, seed in (("train", "train", 20, 0), ("held", "train", 6, 5), ("val", "val", 8, 1)):
        write_scenes(root / name, split, "single", n, seed=seed, clutter=name == "val")
    torch.manual_seed(0)
    from resnet50.data import FASHION_MNIST_CLASSES
    weights.save(root / "cls.safetensors", create_model("resnet18", num_classes=10, in_chans=1),
                 list(FASHION_MNIST_CLASSES), Preprocessing(64, 64, (0.286,), (0.353,)))
    return root


def test_wsol_command_end_to_end(tiny, capsys):
    out = tiny / "out"
    args = ["localize", "wsol", "--weights", str(tiny / "cls.safetensors"), "--train", str(tiny / "train"),
            "--held-out", str(tiny / "held"), "--val", str(tiny / "val"), "--out", str(out), "--image-size", "64",
            "--no-progress", "--json"]
    assert main(args) == 2  # 20 scenes leave a class without an image: per-class DDT cannot be fitted ...
    assert "no image of class(es)" in capsys.readouterr().err
    assert main(args + ["--class-agnostic"]) == 0  # ... the class-agnostic one can
    r = json.loads(capsys.readouterr().out)
    assert r["held_out_images"] == 6 and r["val_images"] == 8
    assert r["ddt"]["threshold"] in r["ddt"]["held_out_gt_known"] or str(r["ddt"]["threshold"]) in \
        r["ddt"]["held_out_gt_known"]
    for figures in (r["ddt"]["val"], r["cam"]["rule_20"], r["cam"]["choe"]):
        assert 0 <= figures["top1_loc"] <= figures["top1_cls"] <= 1 and figures["images"] == 8
    pseudo = CocoDataset(r["pseudo_boxes"], in_chans=1)
    assert len(pseudo) == 20 and all(len(im.boxes) == 1 for im in pseudo.images)
    assert (out / "offsets.png").stat().st_size > 0 and json.loads((out / "wsol.json").read_text()) == r


def test_wsol_refuses_a_classifier_of_other_classes(tiny, tmp_path, capsys):
    weights.save(tmp_path / "c3.safetensors", create_model("resnet18", num_classes=3, in_chans=1), ["a", "b", "c"],
                 Preprocessing(64, 64, (0.286,), (0.353,)))
    code = main(["localize", "wsol", "--weights", str(tmp_path / "c3.safetensors"), "--train", str(tiny / "train"),
                 "--held-out", str(tiny / "held"), "--val", str(tiny / "val"), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "classifies 3 classes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
