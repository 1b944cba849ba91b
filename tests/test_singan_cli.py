"""`transsrgan train --model singan` flag mapping, the flow's parameter checks and the image materialisation (fast)."""

import argparse
import json

import pytest

from flows.cli import add_params, params_from_args
from flows.commands.train import run
from flows.errors import UsageError
from flows.params import SinGANParams, TrainParams


def args(**kw):
    parser = argparse.ArgumentParser()
    add_params(parser, TrainParams, SinGANParams)
    parser.add_argument("--dry-run", action="store_true")
    ns = parser.parse_args(["--model", "singan", "--preset", "tiny", "--dry-run"])
    return argparse.Namespace(**{**vars(ns), **kw})


def singan_params_from_args(ns: argparse.Namespace) -> dict:
    return params_from_args(ns, SinGANParams).model_dump()


run_singan_from_cli = run


def test_flags_map_onto_the_singan_config(capsys, tmp_path):
    from PIL import Image

    img = tmp_path / "brick.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(img)
    p = singan_params_from_args(args(data=str(img), steps=7, set=["singan.max_size=32", "singan.alpha=5"],
                                     require_standard_features=True))
    assert p["image"] == str(img) and p["iters_per_scale"] == 7 and not p["allow_random_features"]
    assert run_singan_from_cli(args(data=str(img), steps=7, set=["singan.max_size=32", "singan.alpha=5"])) == 0
    cfg = json.loads(capsys.readouterr().out)
    s = cfg["singan"]
    assert (cfg["preset"], s["image"], s["iters_per_scale"], s["max_size"], s["alpha"]) == ("tiny", str(img), 7, 32, 5)


def test_default_image_is_the_embedded_one():
    assert singan_params_from_args(args())["image"] == "skimage:hubble_deep_field"


@pytest.mark.parametrize("kw, names", [
    (dict(data="/no/such.png"), "--data (singan.image)"),
    (dict(data="skimage:nope"), "unknown bundled image"),
    (dict(steps=0), "--steps (singan.iters_per_scale)"),
    (dict(set=["singan.max_size=3"]), "singan.max_size"),
    (dict(set=["singan.bogus=1"]), "singan.bogus"),
    (dict(set=["noequals"]), "KEY=VALUE"),
    (dict(workers=2), "--workers"),
])
def test_bad_flags_are_one_line_errors_naming_the_flag(kw, names):
    with pytest.raises(UsageError, match=None) as exc:
        singan_params_from_args(args(**kw))
    assert names in str(exc.value) and "\n" not in str(exc.value)


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(UsageError, match="not a file"):
        singan_params_from_args(args(data=str(tmp_path)))


def test_materialise_puts_the_image_alone_in_a_folder(tmp_path):
    from PIL import Image

    from tasks.pipeline import materialise_image

    src = tmp_path / "My Photo.jpg"
    Image.new("RGB", (40, 30), (0, 90, 200)).save(src)
    a = materialise_image(str(src))
    assert a.read_bytes() == src.read_bytes() and [p.name for p in a.parent.iterdir()] == ["My Photo.jpg"]
    assert a.parent.name.startswith("my-photo-") and materialise_image(str(src)) == a
    with pytest.raises(FileNotFoundError, match="image: file not found"):
        materialise_image(str(tmp_path / "missing.png"))
