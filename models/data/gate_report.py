"""The data gate's offline summary: one self-contained HTML page (inline CSS, thumbnails as data URIs, no URLs).

GX Data Docs load Bootstrap, jQuery and bootstrap-table from CDNs (hard-coded in GX's templates; GX ships none of
them), so offline they render unstyled and their lists, filled by JavaScript, stay empty. This page needs nothing
but the file itself: the counts, the quarantine by reason with file names, every expectation with its observed
value and verdict, and thumbnails of a few quarantined and accepted images.
"""

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.data.images import upright

THUMB_SIDE = 96        # px, longest side of a thumbnail
THUMBS = 8             # thumbnails per gallery (quarantined, accepted)
NAMES_PER_REASON = 50  # file names listed per reason; the rest is a count (quarantine.csv has them all)


@dataclass(frozen=True)
class ReportFile:
    """One file on the page. `decoded`: the gate decoded it (a regular file within data.max_pixels), so a
    thumbnail may be drawn; never true for links, unreadable, animated or too-large files."""

    relpath: str
    path: str
    reason: str = ""          # 'code: detail' for a quarantined file, '' for an accepted one
    decoded: bool = False

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0] if self.reason else "accepted"


def thumbnail_uri(path: str | Path, max_pixels: int, side: int = THUMB_SIDE) -> str | None:
    """A PNG data URI of the upright image scaled to `side`, or None when it cannot be read within max_pixels."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None   # the size is checked below, with our limit
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                return None
            img.draft("RGB", (side, side))     # JPEG: decode at reduced scale
            img = upright(img)
            img.thumbnail((side, side))
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):      # 16-bit or float gray: scale by the maximum
                arr = np.asarray(img, dtype=np.float64)
                img = Image.fromarray((arr * (255.0 / (arr.max() or 1.0))).clip(0, 255).astype(np.uint8))
            elif img.mode not in ("L", "RGB"):
                img = img.convert("RGBA") if "A" in img.getbands() or img.mode == "P" else img.convert("RGB")
            buf = io.BytesIO()
            img.save(buf, format="PNG", optimize=True)
    except Exception:  # noqa: BLE001 - a file changed since the gate read it: no thumbnail, the row still shows
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pick_thumbnails(files: Sequence[ReportFile], n: int = THUMBS) -> list[ReportFile]:
    """Up to n files, one per reason code in turn (round robin), so every kind of problem gets a picture."""
    by_code: dict[str, list[ReportFile]] = {}
    for f in sorted(files, key=lambda f: f.relpath):
        by_code.setdefault(f.code, []).append(f)
    picked: list[ReportFile] = []
    while len(picked) < n and any(by_code.values()):
        for code in sorted(by_code):
            if by_code[code] and len(picked) < n:
                picked.append(by_code[code].pop(0))
    return picked


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px 32px;color:#1d2433;
     background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
.muted{color:#667}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%;margin:6px 0}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eef;
     vertical-align:top}th{background:#f4f6fa;font-weight:600}
.pass{color:#126b2f;font-weight:600}.flag{color:#9a6700;font-weight:600}.fail{color:#b3261e;font-weight:600}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;color:#fff}
.badge.pass{background:#1f883d}.badge.fail{background:#cf222e}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.card{border:1px solid #dde;border-radius:8px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:20px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:132px}figure .img{width:128px;height:128px;display:flex;align-items:center;
     justify-content:center;background:#f4f6fa;border:1px solid #dde;border-radius:6px;overflow:hidden}
figure img{image-rendering:pixelated;width:112px;height:112px;object-fit:contain}
figcaption{font-size:11.5px;margin-top:4px;word-break:break-all}
details summary{cursor:pointer;color:#334}details ul{margin:2px 0;padding-left:18px}
td:last-child{white-space:nowrap}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _verdict(success: bool) -> str:
    return '<span class="pass">passed</span>' if success else '<span class="fail">failed</span>'


def _quarantine_table(quarantined: Sequence[ReportFile]) -> str:
    if not quarantined:
        return '<p class="muted">No file was quarantined.</p>'
    by_code: dict[str, list[ReportFile]] = {}
    for f in sorted(quarantined, key=lambda f: f.relpath):
        by_code.setdefault(f.code, []).append(f)
    rows = []
    for code, files in sorted(by_code.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = "".join(f'<li><span class="mono">{_e(f.relpath)}</span> <span class="muted">{_e(f.reason)}</span>'
                        "</li>" for f in files[:NAMES_PER_REASON])
        more = (f'<li class="muted">and {len(files) - NAMES_PER_REASON} more (quarantine.csv lists every file)</li>'
                if len(files) > NAMES_PER_REASON else "")
        rows.append(f'<tr><td class="mono">{_e(code)}</td><td>{len(files)}</td><td><details'
                    f'{" open" if len(files) <= 5 else ""}><summary>{len(files)} file(s)</summary><ul>{shown}{more}'
                    "</ul></details></td></tr>")
    return ("<table><tr><th>reason</th><th>files</th><th>names and details</th></tr>" + "".join(rows) + "</table>")


def _checks_table(checks: Sequence[dict]) -> str:
    """Per-file expectations flag files (a flagged file is quarantined, the dataset may still pass); dataset
    expectations pass or fail the whole gate."""
    rows = []
    for c in checks:
        limits = ", ".join(f"{k}={v}" for k, v in (c.get("limits") or {}).items())
        if c["suite"] == "files":
            observed = c.get("note") or f"{c.get('unexpected_count', 0)} file(s) flagged"
            verdict = _verdict(True) if c["success"] else '<span class="flag">files flagged</span>'
        else:
            observed, verdict = c.get("observed_value"), _verdict(bool(c["success"]))
        rows.append(f'<tr><td>{_e(c["suite"])}</td><td class="mono">{_e(c["check"])}</td>'
                    f'<td class="mono">{_e(c["expectation"])}</td><td class="mono">{_e(limits)}</td>'
                    f'<td>{_e(observed)}</td><td>{verdict}</td></tr>')
    return ("<table><tr><th>suite</th><th>check</th><th>GX expectation</th><th>parameters</th><th>observed</th>"
            "<th>result</th></tr>" + "".join(rows) + "</table>"
            '<p class="muted">A per-file expectation flags the files it quarantines; the dataset expectations '
            "decide whether the gate passes.</p>")


def _gallery(files: Sequence[ReportFile], max_pixels: int) -> str:
    if not files:
        return '<p class="muted">None.</p>'
    figures = []
    for f in files:
        uri = thumbnail_uri(f.path, max_pixels) if f.decoded else None
        picture = (f'<img alt="{_e(f.relpath)}" src="{uri}">' if uri else
                   f'<span class="muted">not decoded<br>({_e(f.code)})</span>')
        figures.append(f'<figure><div class="img">{picture}</div><figcaption><b>{_e(f.code)}</b><br>'
                       f'<span class="mono">{_e(f.relpath)}</span></figcaption></figure>')
    return '<div class="gallery">' + "".join(figures) + "</div>"


def render_gate_report(*, source: str, passed: bool, counts: Sequence[tuple[str, object]], failed: Sequence[str],
                       checks: Sequence[dict], quarantined: Sequence[ReportFile], accepted: Sequence[ReportFile],
                       fingerprint: str, max_pixels: int, data_docs_href: str = "") -> str:
    """The whole page as one string. `counts`: (label, value) cards; `checks`: the gate's expectation dicts
    (suite, check, expectation, success, unexpected_count, observed_value, note); `accepted`: the files the
    accepted gallery may draw from (a sample is enough); `data_docs_href`: a relative link to GX's Data Docs."""
    badge = '<span class="badge pass">PASSED</span>' if passed else '<span class="badge fail">FAILED</span>'
    cards = "".join(f'<div class="card"><b>{_e(v)}</b><span class="muted">{_e(k)}</span></div>' for k, v in counts)
    failed_html = ("<ul>" + "".join(f'<li class="fail">{_e(f)}</li>' for f in failed) + "</ul>") if failed else ""
    docs = (f' The full GX Data Docs (<a href="{_e(data_docs_href)}">{_e(data_docs_href)}</a>) need network '
            "access for their styles and lists." if data_docs_href else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Data gate summary</title><style>{CSS}</style></head>
<body>
<h1>Data gate summary {badge}</h1>
<p class="muted">Source <span class="mono">{_e(source)}</span><br>Fingerprint <span class="mono">{_e(fingerprint)}</span>
<br>This page is self-contained and works offline.{docs}</p>
<div class="cards">{cards}</div>{failed_html}
<h2>Quarantine by reason</h2>
{_quarantine_table(quarantined)}
<h2>Expectations</h2>
{_checks_table(checks)}
<h2>Quarantined images</h2>
{_gallery(pick_thumbnails(quarantined), max_pixels)}
<h2>Accepted images</h2>
{_gallery(list(accepted)[:THUMBS], max_pixels)}
</body></html>
"""
