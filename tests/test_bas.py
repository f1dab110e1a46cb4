"""resnet50.localize.bas: erasing by a map on hand-checked pixels, the C4-onto-C3 alignment of the generator's
input, training that moves the generator and never the classifier, and ``resnet50 localize bas`` end to end on a
tiny classifier (with its bad inputs)."""

import json
import shutil

import pytest
import torch

from resnet50 import create_model, weights
from resnet50.cli import main
from resnet50.data import FASHION_MNIST_CLASSES, Preprocessing
from resnet50.detect.coco import CocoDataset
from resnet50.localize.bas import GENERATOR_FORMAT, ForegroundGenerator, bas_losses, erase, train_generator
from resnet50.scenes import write_scenes


def test_erase_blends_towards_black_inside_the_map_and_keeps_the_rest():
    x = torch.full((1, 1, 32, 32), 2.0)
    m = torch.zeros(1, 4, 4)
    m[0, 1, 1] = 1.0  # one cell at stride 8: centred on pixel (8, 8), falling linearly to 0 at pixels 0 and 16
    fill = torch.tensor([-1.0])
    bg, fg = erase(x, m, fill)
    assert bg[0, 0, 8, 8] == -1.0 and fg[0, 0, 8, 8] == 2.0  # fully erased / fully kept at the cell's centre
    assert bg[0, 0, 8, 12] == pytest.approx(0.5 * 2.0 + 0.5 * -1.0)  # half-way to the next cell: half of each
    assert bg[0, 0, 24, 24] == 2.0 and fg[0, 0, 24, 24] == -1.0  # outside the map: the image / black
    assert torch.allclose(bg + fg, x + fill.reshape(1, -1, 1, 1))  # the two images are complements


def test_generator_places_each_c4_cell_on_the_c3_cell_at_its_centre():
    gen = ForegroundGenerator(c3=1, c4=1, num_classes=2, width=4)
    c4 = torch.zeros(1, 1, 4, 4)
    c4[0, 0, 2, 1] = 1.0  # C4 cell (row 2, col 1) = C3 cell (4, 2)
    seen = {}
    gen.body.register_forward_pre_hook(lambda mod, inp: seen.setdefault("x", inp[0]))
    maps = gen(torch.zeros(1, 1, 8, 8), c4)
    up = seen["x"][0, 1]
    assert up[4, 2] == 1.0 and up[4, 3] == 0.5 and up[3, 2] == 0.5 and up[5, 1] == 0.25
    maps = maps.detach()
    assert maps.shape == (1, 2, 8, 8) and 0 <= float(maps.min()) <= float(maps.max()) <= 1


def test_training_moves_the_generator_and_never_the_classifier():
    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=3, in_chans=1).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gen = ForegroundGenerator(net.feature_channels[1], net.feature_channels[2], 3, width=16)
    x, y = torch.randn(4, 1, 64, 64), torch.tensor([0, 1, 2, 0])
    fill = torch.tensor([-0.8])
    start = sum(bas_losses(net, gen, x, y, fill, 1.0).values()).item()
    history = train_generator(net, gen, iter([(x, y)] * 30), fill, 30, 1e-2, 1.0, every=10)
    assert [h["step"] for h in history] == [10, 20, 30]
    assert sum(bas_losses(net, gen, x, y, fill, 1.0).values()).item() < start
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # to the bit, BatchNorm included


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bas")
    for name, split, n, seed, clutter in (("train", "train", 12, 0, False), ("held", "train", 6, 5, True),
                                          ("val", "val", 5, 1, True), ("plain", "val", 4, 2, False)):
        write_scenes(root / name, split, "single", n, size=96, seed=seed, clutter=clutter)
    torch.manual_seed(0)
    weights.save(root / "cls.safetensors", create_model("resnet18", num_classes=10, in_chans=1),
                 list(FASHION_MNIST_CLASSES), Preprocessing(64, 64, (0.286,), (0.353,)))
    return root


def test_bas_command_end_to_end(tiny, capsys):
    out = tiny / "out"
    code = main(["localize", "bas", "--weights", str(tiny / "cls.safetensors"), "--train", str(tiny / "train"),
                 "--held-out", str(tiny / "held"), "--val", str(tiny / "val"), str(tiny / "plain"), "--out", str(out),
                 "--image-size", "64", "--steps", "3", "--batch-size", "4", "--amp", "off", "--no-progress", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["held_out_images"] == 6 and r["train_images"] == 12 and str(r["threshold"]) in r["held_out_gt_known"]
    assert [f["images"] for f in r["val"].values()] == [5, 4]
    for f in r["val"].values():
        assert 0 <= f["top1_loc"] <= f["top1_cls"] <= 1 and 0 <= f["gt_known_loc"] <= 1
    pseudo = CocoDataset(r["pseudo_boxes"], in_chans=1)
    assert len(pseudo) == 12 and all(len(im.boxes) == 1 for im in pseudo.images)
    assert "BAS" in json.loads((out / "pseudo" / "instances.json").read_text())["info"]["description"]
    assert (out / "maps.png").stat().st_size > 0 and (out / "generator.safetensors").stat().st_size > 0
    saved = json.loads((out / "bas.json").read_text())
    assert saved["val"] == r["val"] and len(saved["history"]) == 1
    assert (out / "offsets.png").stat().st_size > 0
    assert set(r["val"][str(tiny / "val")]["offsets"]) >= {"median_x", "median_y", "within_8px"}


def test_a_saved_generator_scores_the_same(tiny, capsys):
    """--generator skips training and scores the earlier run's generator: the same threshold and figures."""
    base = ["localize", "bas", "--weights", str(tiny / "cls.safetensors"), "--train", str(tiny / "train"),
            "--held-out", str(tiny / "held"), "--val", str(tiny / "val"), "--image-size", "64", "--amp", "off",
            "--no-progress", "--json"]
    assert main([*base, "--out", str(tiny / "first"), "--steps", "2", "--batch-size", "4"]) == 0
    first = json.loads(capsys.readouterr().out)
    saved = str(tiny / "first" / "generator.safetensors")
    assert main([*base, "--out", str(tiny / "again"), "--generator", saved]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["threshold"] == first["threshold"] and again["steps"] == 2 and again["area_weight"] == 1.5
    assert again["val"] == first["val"] and again["pseudo_box_iou50"] == first["pseudo_box_iou50"]


@pytest.mark.parametrize("change, message", [
    (["--steps", "0"], "steps >= 1"),
    (["--batch-size", "64"], "fewer than one batch"),
    (["--weights", "OTHER"], "classifies 3 classes"),
    (["--generator", "CLS"], "not a BAS generator"),
    (["--generator", "CLS", "--lr", "0.1"], "--generator scores a trained generator, so --steps, --batch-size, --lr"),
    (["--generator", "GEN", "--image-size", "96"], "was trained at 64 px, not 96"),
    (["--image-size", "16"], "--image-size must be >= 32 px"),
    (["--lr", "nan"], "a finite lr > 0"),
    (["--held-out", "REORDERED"], "are not"),
    (["--train", "UNREADABLE"], "no batch of 2 or more readable images"),
])
def test_bas_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, capsys, change, message):
    weights.save(tmp_path / "c3.safetensors", create_model("resnet18", num_classes=3, in_chans=1), ["a", "b", "c"],
                 Preprocessing(64, 64, (0.286,), (0.353,)))
    # a generator trained at 64 px (its file says so); held-out scenes whose categories are in another order; training
    # scenes whose image files cannot be decoded (the command must not loop for ever looking for a batch)
    gen = ForegroundGenerator(128, 256, 10)  # resnet18's C3 and C4 channels
    weights.write_safetensors(tmp_path / "gen.safetensors", gen, {"format": GENERATOR_FORMAT, "image_size": "64",
                                                                  "area_weight": "1.5", "steps": "2"})
    shutil.copytree(tiny / "held", tmp_path / "reordered")
    coco = json.loads((tmp_path / "reordered" / "instances.json").read_text())
    names = [c["name"] for c in coco["categories"]]
    for c, name in zip(coco["categories"], reversed(names)):
        c["name"] = name
    (tmp_path / "reordered" / "instances.json").write_text(json.dumps(coco))
    shutil.copytree(tiny / "train", tmp_path / "unreadable")
    for f in (tmp_path / "unreadable").rglob("*.png"):
        f.write_bytes(b"not a png")
    special = {"OTHER": tmp_path / "c3.safetensors", "CLS": tiny / "cls.safetensors", "GEN": tmp_path / "gen.safetensors",
               "REORDERED": tmp_path / "reordered", "UNREADABLE": tmp_path / "unreadable"}
    args = {"--weights": str(tiny / "cls.safetensors"), "--train": str(tiny / "train"),
            "--held-out": str(tiny / "held"), "--val": str(tiny / "val"), "--out": str(tmp_path / "o"),
            "--image-size": "64", "--steps": "2", "--batch-size": "4"}
    if "--generator" in change and "--lr" not in change:
        del args["--steps"], args["--batch-size"]
    for k, v in zip(change[::2], change[1::2]):
        args[k] = str(special.get(v, v))
    code = main(["localize", "bas", *[t for kv in args.items() for t in kv], "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
