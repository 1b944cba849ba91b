"""SinGAN image input: RGBA composited on white, grayscale replicated (or kept with channels=1), bundled default."""

import numpy as np
import pytest
import torch
from PIL import Image

from models.singan.image import image_name, load_image


def _u8(t: torch.Tensor) -> np.ndarray:
    return ((t[0] + 1) * 127.5).round().to(torch.uint8).numpy()       # (C, H, W)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200                          # red channel
    rgba[0, 0, 3] = 0                           # fully transparent -> white
    rgba[1, 1, 3] = 255                         # opaque -> its own colour
    rgba[2, 2, 3] = 128                         # half -> halfway to white
    rgba[rgba[..., 3] == 0] = (200, 0, 0, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 4, 5)
    px = _u8(x)
    assert tuple(px[:, 0, 0]) == (255, 255, 255)
    assert tuple(px[:, 1, 1]) == (200, 0, 0)
    assert all(abs(int(a) - b) <= 2 for a, b in zip(px[:, 2, 2], (228, 127, 127), strict=True))


def test_la_and_palette_transparency_are_composited_on_white(tmp_path):
    la = Image.fromarray(np.stack([np.full((3, 3), 10, np.uint8), np.zeros((3, 3), np.uint8)], -1), "LA")
    assert tuple(_u8(load_image(la))[:, 0, 0]) == (255, 255, 255)
    p = Image.new("P", (2, 2), 0)
    p.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png")
    assert tuple(_u8(load_image(tmp_path / "p.png"))[:, 0, 0]) == (255, 255, 255)


def test_grayscale_is_replicated_to_three_channels(tmp_path):
    g = (np.arange(20, dtype=np.uint8).reshape(4, 5) * 12)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    assert x.shape == (1, 3, 4, 5)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert np.array_equal(_u8(x)[0], g)


def test_channels_1_keeps_gray_and_turns_colour_into_luminance():
    g = np.full((3, 3), 77, np.uint8)
    x = load_image(g, channels=1)
    assert x.shape == (1, 1, 3, 3) and np.all(_u8(x) == 77)
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[..., 1] = 255                           # pure green: L = 0.587 * 255 = 150
    assert np.all(np.abs(_u8(load_image(rgb, channels=1)).astype(int) - 150) <= 1)


def test_sixteen_bit_is_scaled_by_its_maximum(tmp_path):
    a = np.array([[0, 1000], [2000, 4000]], np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    px = _u8(load_image(tmp_path / "d.png"))[0]
    assert px[0, 0] == 0 and px[1, 1] == 255 and abs(int(px[1, 0]) - 128) <= 1


def test_default_image_is_bundled_offline():
    x = load_image()
    assert x.shape == (1, 3, 872, 1000) and -1 <= x.min() and x.max() <= 1
    assert image_name("skimage:hubble_deep_field") == "hubble_deep_field" and image_name("/a/b/cat.png") == "cat"


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="singan.image"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="skimage:"):
        load_image("skimage:not_a_photo")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(OSError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((3, 3), np.float32))
