"""`python -m tools.screenshots`: the pages users look at, checked in a real browser (headless Chromium).

Starts a real MLflow server and a real Prefect server on 127.0.0.1 (free ports, scratch homes), runs the tiny
train-transsrgan flow against them on a small digit folder with a few broken files, then opens each page with
headless Chromium: a screenshot (PNG) and the rendered DOM (--dump-dom). The run page's sample slider (the image card
of `mlflow.log_image(key="samples", step=...)`) needs what a user does first, search and slider, so Chromium is
driven there through its DevTools protocol (see ImageCard). A page fails when its visible text shows an error
("Can't connect", "Not Found", 404, ...) or lacks the text expected there; the tool then exits 1 naming it.

    python -m tools.screenshots                      # PNGs into docs/screenshots/ (make screenshots)
    python -m tools.screenshots --out /tmp/shots --keep

Exit codes: 0 every page showed what it should; 1 a page did not, or the flow failed; 2 bad usage (no Chromium,
an --out that is a file or holds a file the tool did not write).
"""

import argparse
import base64
import contextlib
import dataclasses
import html.parser
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from PIL import Image

from chaos.services import REPO_ROOT, ServiceError, free_port, mlflow_server, prefect_server, running
from models.data.digits import load_digits
from models.files import ForeignFileError, OutputFolder
from tasks.tags import SAMPLES_KEY

DEFAULT_OUT = REPO_ROOT / "docs" / "screenshots"
COMMAND = "screenshots"            # the output folder's ledger names the tool
WINDOW = "1440,1000"
BUDGET_MS = 20_000                 # Chromium's virtual time: the SPAs fetch and render within it
SPA_BUDGET_MS = 40_000             # MLflow's run page loads several chunks one after the other
BROWSER_TIMEOUT_S = 180.0
N_DIGITS = 96
MODEL = "transsrgan"

# Visible text that means the page did not render what it should. Case matters: the gate summary says
# "decode-error", which is data, not a failure of the page.
ERROR_PATTERNS = (r"Can't connect", r"Cannot connect", r"Failed to fetch", r"Failed to load", r"Request error",
                  r"INTERNAL_ERROR", r"Page not found", r"\bNot Found\b", r"(?<![\w.])404(?![\w.])",
                  r"Something went wrong", r"\bERR_[A-Z_]+", r"\bError\b(?!\w)")


class UsageError(Exception):
    """Bad usage: one line, exit 2."""


@dataclasses.dataclass
class Page:
    name: str                      # what the failure message calls it
    file: str                      # PNG name under the output folder
    url: str
    expect: list[str]              # visible text that must be there
    budget_ms: int = BUDGET_MS
    allow: tuple[str, ...] = ()    # error patterns this page may show as data (e.g. the gate's own reasons)
    image_card: "ImageCard | None" = None   # an MLflow run page whose image card must show a logged image


@dataclasses.dataclass
class ImageCard:
    """The image card (image grid with a step slider) of MLflow's run page, Model metrics tab, for one key.

    MLflow 3.17.2 adds that card after every metric chart and renders cards only when scrolled into view; it opens
    at step 0, which shows no image when the run logged the key at two or more steps. The card's settings live in
    the browser's localStorage (the UI has no URL parameter for them), so the tool loads the page once, sets the
    chart search to the key, the card's step to the last logged one and hides the run's parameters there, as a user
    would with the search box and the slider, then reloads it."""
    run_id: str
    key: str
    step: int


# ---------------------------------------------------------------- the browser

def find_chromium() -> str:
    """CHROMIUM, or chromium / chromium-browser / google-chrome on PATH; UsageError when none is installed."""
    for name in filter(None, (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome")):
        found = shutil.which(name)
        if found:
            return found
    raise UsageError("chromium not found: run `make screenshots` (installs Debian's chromium) or set CHROMIUM")


def _browser(chromium: str, profile: Path, budget_ms: int | None, *args: str) -> list[str]:
    """Headless Chromium's command line; budget_ms: its virtual time (None: real time, for a DevTools session,
    which gets no page target with a virtual-time budget)."""
    budget = [f"--virtual-time-budget={budget_ms}"] if budget_ms else []
    return [chromium, "--headless=new", "--no-sandbox", f"--window-size={WINDOW}", *budget,
            f"--user-data-dir={profile}", "--hide-scrollbars", "--no-first-run", "--disable-gpu",
            "--disable-dev-shm-usage", "--force-color-profile=srgb", *args]


class _Text(html.parser.HTMLParser):
    """The visible text of a DOM: everything outside <script>, <style>, <noscript> and <template>."""

    HIDDEN = {"script", "style", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.parts = 0, []

    def handle_starttag(self, tag, attrs):
        self.depth += tag in self.HIDDEN

    def handle_endtag(self, tag):
        self.depth -= tag in self.HIDDEN and self.depth > 0

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)


def visible_text(dom: str) -> str:
    parser = _Text()
    parser.feed(dom)
    return " ".join(" ".join(parser.parts).split())


def problems(text: str, page: Page) -> list[str]:
    """What is wrong with a page's visible text: error messages it shows, expected text it lacks."""
    found = []
    for pattern in ERROR_PATTERNS:
        if pattern in page.allow:
            continue
        m = re.search(pattern, text)
        if m:
            around = text[max(0, m.start() - 60):m.end() + 60]
            found.append(f"shows {m.group(0)!r} (... {around} ...)")
    found += [f"lacks {want!r}" for want in page.expect if want not in text]
    return found


def shoot(chromium: str, page: Page, png: Path, scratch: Path) -> list[str]:
    """Screenshot `page` into png and check its rendered DOM; returns its problems (empty when it is fine)."""
    profile = scratch / "chromium-profile"
    if page.image_card:
        try:
            dom, images, slider = shoot_image_card(chromium, page, png, profile, scratch / "chromium-devtools.log")
        except (OSError, RuntimeError, TimeoutError) as exc:
            return [f"chromium (DevTools) failed: {exc}"]
        card = page.image_card
        shown = [] if images else [f"shows no image of {card.key!r} at step {card.step}"]
        shown += [] if slider == str(card.step) else [f"its step slider is at {slider}, not {card.step}"]
        return problems(visible_text(dom), page) + shown
    try:
        dom = subprocess.run(_browser(chromium, profile, page.budget_ms, "--dump-dom", page.url), capture_output=True,
                             text=True, timeout=BROWSER_TIMEOUT_S)
        shot = subprocess.run(_browser(chromium, profile, page.budget_ms, f"--screenshot={png}", page.url),
                              capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return [f"chromium did not finish within {BROWSER_TIMEOUT_S:.0f}s"]
    if dom.returncode or shot.returncode or not png.is_file():
        return [f"chromium failed (exit {dom.returncode or shot.returncode}): {(dom.stderr + shot.stderr)[-400:]}"]
    return problems(visible_text(dom.stdout), page)


class DevTools:
    """Headless Chromium driven through its DevTools protocol (a WebSocket on a loopback port): for pages that
    need a step a user would take (set a slider) before the screenshot."""

    def __init__(self, chromium: str, profile: Path, log: Path):
        self.port = free_port()
        self.log = log.open("w")
        self.proc = subprocess.Popen(_browser(chromium, profile, None, f"--remote-debugging-port={self.port}",
                                              "--remote-debugging-address=127.0.0.1", "about:blank"),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.ids = itertools.count(1)
        self.ws = None

    def __enter__(self) -> "DevTools":
        from websockets.sync.client import connect

        deadline = time.monotonic() + 60
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=5).json()
                target = next(t for t in pages if t["type"] == "page")
                break
            except (httpx.HTTPError, StopIteration, ValueError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError(f"no DevTools endpoint on port {self.port}") from None
                time.sleep(0.5)
        self.ws = connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        w, h = (int(n) for n in WINDOW.split(","))
        self.call("Emulation.setDeviceMetricsOverride", width=w, height=h, deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc) -> None:
        if self.ws is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def call(self, method: str, **params):
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                         awaitPromise=True).get("result", {}).get("value")

    def wait(self, expression: str, what: str, timeout_s: float = 90.0):
        deadline = time.monotonic() + timeout_s
        while not (value := self.js(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not appear within {timeout_s:.0f}s")
            time.sleep(0.5)
        return value


def shoot_image_card(chromium: str, page: Page, png: Path, profile: Path, log: Path) -> tuple[str, int, str | None]:
    """The run page's image card for `page.image_card` (see ImageCard), screenshot into png: (rendered DOM, images
    of the key at the card's step, the step its slider shows). It also closes MLflow's Assistant panel, which the
    UI opens by itself on a first visit, for the pages shot after it with the same profile."""
    card = page.image_card
    storage_key = f"MLflowLocalStorage-1.1-RunPage-{card.run_id}-model-chartUIState"
    with DevTools(chromium, profile, log) as browser:
        browser.call("Page.navigate", url=page.url)
        state = json.loads(browser.wait(
            f"(() => {{ const s = localStorage.getItem({json.dumps(storage_key)}); "
            f"return s && s.includes('\"IMAGE\"') ? s : null; }})()", "the run page's image card"))
        for chart in state.get("compareRunCharts") or []:
            if chart.get("type") == "IMAGE" and chart.get("imageKeys") == [card.key]:
                chart.update(step=card.step, showRunParams=False)
        state["chartsSearchFilter"] = card.key
        browser.js(f"localStorage.setItem({json.dumps(storage_key)}, {json.dumps(json.dumps(state))})")
        browser.js('localStorage.setItem("mlflow.assistant.panelOpen_v1", "false")')   # the side panel's width
        browser.call("Page.reload")
        shown = f"encodeURIComponent({json.dumps(card.key)} + '+step+' + {card.step} + '+')"
        images = browser.wait(f"[...document.images].filter(i => i.src.includes({shown}) && i.complete && "
                              "i.naturalWidth > 0).length", f"the {card.key!r} image at step {card.step}")
        time.sleep(1.0)                                                   # the image's layout settles
        dom = browser.js("document.documentElement.outerHTML") or ""
        slider = browser.js("document.querySelector('[role=\"slider\"]')?.getAttribute('aria-valuenow')")
        png.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
    return dom, images, slider


# ---------------------------------------------------------------- the run the pages show

def write_inputs(folder: Path) -> Path:
    """N_DIGITS digit PNGs plus a few files the gate quarantines, so its pages have something to show."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits(16)
    for i in range(N_DIGITS):
        Image.fromarray(images[i][0]).save(folder / f"{i:05d}_label{int(labels[i])}.png")
    Image.new("L", (32, 32), 128).save(folder / "blank.png")                  # degenerate
    Image.new("L", (8, 8), 0).save(folder / "tiny.png")                       # too-small
    (folder / "notes.png").write_text("not an image\n")                        # decode-error
    shutil.copyfile(sorted(folder.glob("00000_*.png"))[0], folder / "copy.png")  # duplicate
    return folder


def run_flow(env: dict[str, str], data: Path, log: Path) -> None:
    """`transsrgan train --preset tiny` on `data` against the servers in env; RuntimeError with its tail on failure."""
    cmd = [sys.executable, "-m", "flows.cli", "train", "--preset", "tiny", "--data", str(data), "--steps", "4",
           "--workers", "1", "--spark-master", "local[1]", "--set", "eval.n_samples=32",
           "--set", "train.sample_every=2"]
    with log.open("w") as fh:
        done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=1200)
    if done.returncode:
        raise RuntimeError(f"the tiny flow failed (exit {done.returncode}):\n{log.read_text()[-3000:]}")


def _first_line(text: str | None) -> str:
    """A line of a markdown description as the UI renders it: no markup characters, first non-empty line."""
    for line in (text or "").splitlines():
        line = re.sub(r"[#*_`>|]", "", line).strip()
        line = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line)
        if len(line) >= 8:
            return line[:40]
    return ""


def logged_image_steps(client, run_id: str, key: str) -> list[int]:
    """The steps at which the run logged `key` with mlflow.log_image(key=..., step=...), ascending."""
    found = (re.match(rf"{re.escape(key)}\+step\+(\d+)\+", Path(a.path).name)
             for a in client.list_artifacts(run_id, "images"))
    return sorted({int(m.group(1)) for m in found if m})


def mlflow_pages(url: str) -> list[Page]:
    """The run page's sample slider, the run page (dataset, description) and the registered model page (champion
    alias, descriptions)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)   # not an MLFLOW_REGISTRY_URI this process inherited
    champion = client.get_model_version_by_alias(MODEL, "champion")
    run = client.get_run(champion.run_id)
    exp = run.info.experiment_id
    base = f"{url}/#/experiments/{exp}/runs/{run.info.run_id}"
    expect = [run.info.run_name, run.info.run_id]
    # the training dataset (log_input); the UI shows the first input by name and the others as "+1"
    expect += [d.dataset.name for d in run.inputs.dataset_inputs[:1]]
    expect += [t for t in (_first_line(run.data.tags.get("mlflow.note.content")),) if t]   # its description
    # the sample grids (log_image with key and step): the image card of the Model metrics tab, at the last step;
    # first, as it closes the Assistant panel for the pages after it
    steps = logged_image_steps(client, run.info.run_id, SAMPLES_KEY)
    pages = [Page("MLflow run page: sample slider", "mlflow-run-samples.png", f"{base}/model-metrics",
                  [run.info.run_name, SAMPLES_KEY], SPA_BUDGET_MS,
                  image_card=ImageCard(run.info.run_id, SAMPLES_KEY, steps[-1] if steps else 0)),
             Page("MLflow run page", "mlflow-run.png", base, expect, SPA_BUDGET_MS)]
    model = client.get_registered_model(MODEL)
    expect = [MODEL, "champion"] + [t for t in (_first_line(model.description),) if t]
    # the versions table shows the first line of each version's description as it is (a plain-text headline), cut
    # to about 30 characters: "transsrgan v1: champion (fd_i..."
    expect += [champion.description.splitlines()[0].split(" (")[0]] if champion.description else []
    pages.append(Page("MLflow registered model", "mlflow-model.png", f"{url}/#/models/{MODEL}", expect,
                      SPA_BUDGET_MS))
    return pages


def prefect_pages(api: str) -> list[Page]:
    """The flow-run page of the completed train-transsrgan run on its artifacts tab, and its markdown artifacts.

    Prefect 3.8 serves two UIs; the V2 one (/v2/, the default for new browsers) opens a tab from `?tab=`."""
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
                                                       "sort": "START_TIME_DESC", "limit": 1}, timeout=30).json()
    if not runs:
        raise RuntimeError("the Prefect server has no completed flow run")
    run = runs[0]
    artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}},
                           timeout=30).json()
    keys = sorted({a["key"] for a in artifacts if a.get("key")})
    ui = api.removesuffix("/api") + "/v2"
    pages = [Page("Prefect flow run (artifacts)", "prefect-flow-run.png",
                  f"{ui}/runs/flow-run/{run['id']}?tab=Artifacts", [run["name"], *keys])]
    for a in sorted(artifacts, key=lambda a: a.get("key") or ""):
        if a["type"] == "markdown" and a.get("key"):
            expect = [a["key"]] + [t for t in (_first_line(a.get("data")),) if t]
            pages.append(Page(f"Prefect artifact {a['key']}", f"prefect-artifact-{a['key']}.png",
                              f"{ui}/artifacts/artifact/{a['id']}", expect))
    return pages


def gate_pages(home: Path) -> list[Page]:
    """GX's Data Docs index and the gate's offline summary, from the flow's validation folder."""
    summaries = sorted(home.glob("validation/*/summary.html"))
    if not summaries:
        raise RuntimeError(f"no data gate summary under {home / 'validation'}")
    gate = summaries[-1].parent
    return [Page("GX Data Docs index", "gx-data-docs.png", (gate / "data_docs" / "index.html").as_uri(),
                 ["Data Docs", "Validation Results", "Expectation Suites"]),   # offline: unstyled, lists empty
            Page("data gate offline summary", "gate-summary.png", summaries[-1].as_uri(),
                 ["Data gate summary", "Quarantine by reason", "notes.png", "decode-error", "Expectations",
                  "expect_column_values_to_be_unique", "passed"], allow=(r"\bError\b(?!\w)",))]


@contextlib.contextmanager
def scratch_folder(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="transsrgan-screenshots-"))
    try:
        yield path
    finally:
        if keep:
            print(f"screenshots: scratch folder kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def take(out: Path, chromium: str, scratch: Path, say=print) -> list[str]:
    """Start the servers, run the flow, shoot every page into `out`; returns the failures ('page: problem')."""
    mlflow = mlflow_server(scratch / "mlflow", scratch / "mlflow-server.log")
    prefect = prefect_server(scratch / "prefect", scratch / "prefect-server.log")
    prefect.env["PREFECT_UI_API_URL"] = prefect.api_url      # the UI's API on this free port, not 4200
    prefect.env["PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT"] = "false"
    home = scratch / "home"
    with OutputFolder(out, COMMAND) as folder, running(mlflow, 180), running(prefect, 180):
        say(f"screenshots: MLflow {mlflow.url}, Prefect {prefect.api_url.removesuffix('/api')}")
        # MLflow's set_registry_uri exports MLFLOW_REGISTRY_URI: one inherited from the caller (a test session) would
        # send the flow's registry elsewhere than its tracking server
        inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_REGISTRY_URI"}
        env = {**inherited, "PREFECT_API_URL": prefect.api_url, "PREFECT_HOME": str(scratch / "prefect"),
               "MLFLOW_TRACKING_URI": mlflow.url, "TRANSSRGAN_HOME": str(home), "PYTHONUNBUFFERED": "1",
               "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        say("screenshots: running the tiny train-transsrgan flow against them ...")
        t0 = time.monotonic()
        run_flow(env, write_inputs(scratch / "digits"), scratch / "flow.log")
        say(f"screenshots: flow done in {time.monotonic() - t0:.0f}s")
        pages = mlflow_pages(mlflow.url) + prefect_pages(prefect.api_url) + gate_pages(home)
        folder.check(*(p.file for p in pages))
        failures = []
        for page in pages:
            png = scratch / page.file
            found = shoot(chromium, page, png, scratch)
            if png.is_file():
                folder.copy(page.file, png)
            failures += [f"{page.name}: {p}" for p in found]
            say(f"  {'ok  ' if not found else 'FAIL'} {page.name:<32} {out / page.file}")
        write_index(folder, pages, scratch)
    return failures


def write_index(folder: OutputFolder, pages: list[Page], scratch: Path) -> None:
    """pages.json: which URL each PNG shows (ports and the scratch folder as placeholders), and the text it was
    checked for."""
    def route(url: str) -> str:
        url = url.replace(scratch.as_uri(), "file://<scratch>")
        return re.sub(r"^http://127\.0\.0\.1:\d+", "http://127.0.0.1:<port>", url)

    rows = [{"file": p.file, "page": p.name, "url": route(p.url), "expected_text": p.expect} for p in pages]
    folder.write("pages.json", json.dumps(rows, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.screenshots", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the PNGs (default {DEFAULT_OUT})")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (servers' logs, flow log)")
    args = ap.parse_args(argv)
    try:
        if args.out.exists() and not args.out.is_dir():
            raise UsageError(f"--out: {args.out} is a file, not a folder")
        chromium = find_chromium()
        OutputFolder(args.out, COMMAND).check("mlflow-run.png")      # a foreign ledger or file: stop now
    except (UsageError, ForeignFileError, OSError) as exc:
        print(f"screenshots: error: {exc}", file=sys.stderr)
        return 2
    with scratch_folder(args.keep) as scratch:
        try:
            failures = take(args.out, chromium, scratch)
        except ForeignFileError as exc:
            print(f"screenshots: error: --out: {exc}", file=sys.stderr)
            return 2
        except (RuntimeError, ServiceError, subprocess.TimeoutExpired) as exc:
            print(f"screenshots: failed: {exc}", file=sys.stderr)
            return 1
    for failure in failures:
        print(f"screenshots: FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
