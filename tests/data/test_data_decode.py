"""Decoding: every mode reaches RGB or L with the right pixel values; broken files raise ImageDecodeError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from resnet50.data import ImageDecodeError, decode_image
from resnet50.errors import UserError


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})])
def test_lossless_formats_round_trip_exactly(fmt, kw):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    img = decode_image(encode(Image.fromarray(array), fmt, **kw))
    assert img.mode == "RGB" and img.size == (9, 7)
    np.testing.assert_array_equal(pixels(img), array)


def test_jpeg_decodes_close_to_source():
    img = decode_image(encode(Image.new("RGB", (16, 16), (200, 40, 90)), "JPEG", quality=95))
    assert img.mode == "RGB"
    assert np.abs(pixels(img).astype(int) - [200, 40, 90]).max() <= 3


def test_gray_is_replicated_to_rgb_and_kept_for_one_channel():
    gray = encode(Image.new("L", (4, 4), 100), "PNG")
    assert pixels(decode_image(gray, in_chans=3))[0, 0].tolist() == [100, 100, 100]
    one = decode_image(gray, in_chans=1)
    assert one.mode == "L" and pixels(one)[0, 0] == 100


def test_rgb_to_gray_uses_601_luma():
    img = decode_image(encode(Image.new("RGB", (2, 2), (255, 0, 0)), "PNG"), in_chans=1)
    assert img.mode == "L" and pixels(img)[0, 0] == 76  # 0.299 * 255 = 76.2


def test_cmyk_converts_to_rgb():
    cyan_free_red = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    assert pixels(decode_image(encode(cyan_free_red, "TIFF")))[1, 1].tolist() == [255, 0, 0]
    jpeg = decode_image(encode(cyan_free_red, "JPEG", quality=100))
    assert np.abs(pixels(jpeg)[1, 1].astype(int) - [255, 0, 0]).max() <= 3


def test_palette_with_transparency_composites_on_white():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, index 1 red
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    out = decode_image(encode(img, "PNG", transparency=0))
    assert pixels(out)[0].tolist() == [[255, 255, 255], [255, 0, 0]]  # transparent black -> white
    opaque = decode_image(encode(img, "PNG"))
    assert pixels(opaque)[0].tolist() == [[0, 0, 0], [255, 0, 0]]


def test_rgba_composites_on_white():
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black: white
    img.putpixel((1, 0), (255, 0, 0, 255))  # opaque red: red
    img.putpixel((2, 0), (0, 0, 255, 128))  # half blue over white: 255 * 127/255 = 127 in R and G
    out = pixels(decode_image(encode(img, "PNG"))).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]
    assert np.abs(out[0, 2] - [127, 127, 255]).max() <= 1
    gray = pixels(decode_image(encode(img, "PNG"), in_chans=1))
    assert gray[0, 0] == 255 and gray[0, 1] == 76


def test_gray_alpha_composites_on_white():
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (50, 0))
    img.putpixel((1, 0), (50, 255))
    assert pixels(decode_image(encode(img, "PNG"), in_chans=1))[0].tolist() == [255, 50]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_gray_is_scaled_not_clipped(fmt):
    wide = np.array([[0, 257, 65535, 1000, 32896]], dtype=np.uint16)
    data = encode(Image.fromarray(wide), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    # x / 257 rounded: Pillow's own convert("L") would clip 257 and 1000 to 255.
    assert pixels(decode_image(data, in_chans=1))[0].tolist() == [0, 1, 255, 4, 128]
    assert pixels(decode_image(data, in_chans=3))[0, 3].tolist() == [4, 4, 4]


def test_32_bit_int_mode_reads_as_16_bit():
    img = Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32), "I")
    assert pixels(decode_image(encode(img, "TIFF"), in_chans=1))[0].tolist() == [0, 255, 255, 0]


def test_draft_decodes_large_jpeg_at_reduced_scale_but_never_below_the_target():
    data = encode(Image.new("RGB", (1000, 800), (10, 200, 30)), "JPEG")
    assert decode_image(data).size == (1000, 800)
    assert decode_image(data, draft_size=256).size == (500, 400)  # 1/2: 1/4 would give 200 < 256
    assert decode_image(data, draft_size=100).size == (125, 100)  # 1/8
    assert decode_image(data, draft_size=900).size == (1000, 800)  # no scale covers 900: decoded whole
    gray = decode_image(data, in_chans=1, draft_size=256)
    assert gray.mode == "L" and gray.size == (500, 400)


def test_draft_is_ignored_for_non_jpeg():
    assert decode_image(encode(Image.new("RGB", (400, 300)), "PNG"), draft_size=64).size == (400, 300)


def test_decompression_bomb_is_refused_before_decoding():
    data = encode(Image.new("L", (200, 100)), "PNG")
    with pytest.raises(ImageDecodeError, match="20000 pixels exceeds max_pixels=10000"):
        decode_image(data, max_pixels=10_000, name="bomb.png")
    assert decode_image(data, max_pixels=20_000).size == (200, 100)


def test_truncated_and_garbage_files_raise_decode_errors_naming_the_file(tmp_path):
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="cut.jpg") as info:
        decode_image(bad)
    assert info.value.path == str(bad) and "truncated" in info.value.reason
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="junk.png"):
        decode_image(junk)
    with pytest.raises(ImageDecodeError, match="missing.jpg"):
        decode_image(tmp_path / "missing.jpg")
    assert issubclass(ImageDecodeError, UserError)


def test_in_chans_must_be_one_or_three():
    with pytest.raises(UserError, match="in_chans"):
        decode_image(encode(Image.new("L", (2, 2)), "PNG"), in_chans=2)
