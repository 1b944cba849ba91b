"""The data gate's offline summary page (models.data.gate_report): escaping, thumbnails, which files are opened."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from models.data import gate_report
from models.data.gate_report import ReportFile, pick_thumbnails, render_gate_report, thumbnail_uri

CHECKS = [{"suite": "files", "check": "decodes", "expectation": "expect_column_values_to_be_in_set",
           "success": False, "unexpected_count": 1, "observed_value": None, "limits": {"value_set": [True]}},
          {"suite": "dataset", "check": "min_images", "expectation": "expect_column_sum_to_be_between",
           "success": False, "unexpected_count": 0, "observed_value": 1, "limits": {"min_value": 64}}]


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _page(quarantined, accepted=(), **kw) -> str:
    args = dict(source="/data", passed=False, counts=[("files", 2)], failed=["valid images >= 64: 1"],
                checks=CHECKS, quarantined=quarantined, accepted=list(accepted), fingerprint="f" * 64,
                max_pixels=10_000, data_docs_href="data_docs/index.html")
    return render_gate_report(**{**args, **kw})


def test_user_file_names_are_escaped(tmp_path):
    hostile = ReportFile('<img src=x onerror="alert(1)">.png', str(tmp_path / "x.png"),
                         'decode-error: <script>alert(1)</script>', decoded=False)
    page = _page([hostile])
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.png" in page
    assert "FAILED" in page and "valid images &gt;= 64: 1" in page and "min_value=64" in page


def test_thumbnails_are_small_upright_pngs_within_the_pixel_limit(tmp_path):
    wide = np.tile(np.arange(400, dtype=np.uint8), (100, 1))             # 400x100 gradient
    Image.fromarray(wide).save(tmp_path / "wide.png")
    thumb = _decode(thumbnail_uri(tmp_path / "wide.png", max_pixels=40_000))
    assert thumb.size == (gate_report.THUMB_SIDE, gate_report.THUMB_SIDE // 4)
    assert thumbnail_uri(tmp_path / "wide.png", max_pixels=39_999) is None   # over the limit: never decoded
    deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15)        # 16-bit gray, scaled for display
    Image.fromarray(deep).save(tmp_path / "deep.png")                         # mode I;16
    pixels = np.asarray(_decode(thumbnail_uri(tmp_path / "deep.png", max_pixels=10_000)).convert("L"))
    assert pixels.min() < 20 and pixels.max() > 230
    (tmp_path / "text.png").write_text("not an image")
    assert thumbnail_uri(tmp_path / "text.png", max_pixels=10_000) is None


def test_only_files_the_gate_decoded_are_opened(tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(gate_report, "thumbnail_uri", lambda path, max_pixels: opened.append(str(path)))
    files = [ReportFile("link.png", str(tmp_path / "link.png"), "symlink-outside-root: ...", decoded=False),
             ReportFile("bomb.png", str(tmp_path / "bomb.png"), "too-large: ...", decoded=False),
             ReportFile("gray.png", str(tmp_path / "gray.png"), "degenerate: ...", decoded=True)]
    page = _page(files, accepted=[ReportFile("ok.png", str(tmp_path / "ok.png"), decoded=True)])
    assert opened == [str(tmp_path / "gray.png"), str(tmp_path / "ok.png")]
    assert page.count("not decoded") == 4          # the two never decoded, and the two whose thumbnail failed


@pytest.mark.parametrize("n", [1, 3, 8])
def test_thumbnails_go_round_the_reasons(n):
    files = [ReportFile(f"{code}_{i}.png", "", f"{code}: x") for code in ("aspect", "mode", "too-small")
             for i in range(4)]
    picked = pick_thumbnails(files, n)
    assert len(picked) == n
    assert [f.code for f in picked][:3] == ["aspect", "mode", "too-small"][:n]
