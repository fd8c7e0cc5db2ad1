"""What a reader sees: built chapter pages rendered by a real browser with no network.

Each chapter page of the built book is served on 127.0.0.1 and loaded by headless Chromium,
whose host resolver fails every other name, so anything the page still fetches from a CDN is
simply missing, as it would be for a reader offline. ``--dump-dom`` returns the document after
its scripts ran. The checks: MathJax comes from the book's own files and typesets every
equation; papermill's injected-parameters cell is not on the page. The MathJax staging itself
(``wmbook.assets``) is checked without a browser.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import nbformat
import pytest
import yaml

from wmbook import assets, pipeline

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = pipeline.chapters(ROOT)
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH: the rendered-page checks need a real "
    "browser (Debian: apt-get install chromium; .ci/run installs it)")
TEX_DELIMITERS = re.compile(r"\\\(|\\\[|\$\$")


# ---------------------------------------------------------------- staging MathJax (no browser)

def test_config_and_npm_lock_agree_on_the_served_mathjax():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]
    assert config.get("mathjax_path") == assets.MATHJAX_PATH, "_config.yml must load the staged MathJax"
    assert assets.EXTRA_DIR in config.get("html_extra_path", []), "_config.yml must copy the staged files"
    package = json.loads((ROOT / "package.json").read_text())
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert package["dependencies"]["mathjax"] == assets.MATHJAX_VERSION
    assert lock["packages"]["node_modules/mathjax"]["version"] == assets.MATHJAX_VERSION


def test_stage_mathjax_copies_component_fonts_and_extensions_and_nothing_stale(tmp_path):
    target = tmp_path / assets.EXTRA_DIR / "_static" / "mathjax"
    (target / "old").mkdir(parents=True)
    (target / "old" / "stale.js").write_text("// from an earlier version")
    script = assets.stage_mathjax(ROOT, tmp_path)
    assert script == "_static/mathjax/tex-chtml.js"
    assert (tmp_path / assets.EXTRA_DIR / script).is_file()
    assert (target / "output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff").is_file()
    assert (target / "input/tex/extensions/boldsymbol.js").is_file()  # autoloaded on \boldsymbol
    assert (target / "LICENSE").is_file()
    assert not (target / "old").exists()
    assert not (target / "sre").exists() and not (target / "tex-svg.js").exists()
    size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    assert size < 4_000_000, f"{size / 1e6:.1f} MB staged: only tex-chtml and what it loads belong there"


def test_missing_mathjax_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "REPOSITORY", tmp_path / "elsewhere")
    with pytest.raises(assets.AssetError, match=r"MathJax is not installed .*run `npm ci`"):
        assets.stage_mathjax(tmp_path, tmp_path / "stage")
    assert not (tmp_path / "stage").exists()


def test_other_mathjax_version_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "REPOSITORY", tmp_path / "elsewhere")
    package = tmp_path / "node_modules" / "mathjax"
    package.mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"name": "mathjax", "version": "3.2.0"}))
    with pytest.raises(assets.AssetError, match=r"MathJax 3\.2\.0, the book pins 3\.2\.2: run `npm ci`"):
        assets.stage_mathjax(tmp_path, tmp_path / "stage")


# ---------------------------------------------------------------- the rendered pages

class _Page(HTMLParser):
    """What the checks need from one HTML document, read in a single pass.

    ``math``: elements of class ``math`` (Sphinx wraps each equation in one); ``typeset``: how
    many of them hold an ``mjx-container``; ``raw_tex``: visible text (outside scripts, styles
    and code) that still holds a TeX delimiter; ``classes``: every class used; ``code_inputs``:
    the text of each code cell's input; ``scripts``: the ``src`` of each script.
    """

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
            "track", "wbr"}
    UNSEEN = {"script", "style", "pre", "code", "textarea"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.stack: list[tuple[str, set[str], int]] = []  # (tag, classes, id of the element)
        self.math: set[int] = set()
        self.typeset: set[int] = set()
        self.raw_tex: list[str] = []
        self.classes: set[str] = set()
        self.code_inputs: list[str] = []
        self.scripts: list[str] = []
        self._count = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = set((attributes.get("class") or "").split())
        self.classes |= classes
        self._count += 1
        if "math" in classes:
            self.math.add(self._count)
        if tag == "mjx-container":
            self.typeset.update(i for _, c, i in self.stack if "math" in c)
        if tag == "script" and attributes.get("src"):
            self.scripts.append(attributes["src"])
        if "cell_input" in classes:
            self.code_inputs.append("")
        if tag not in self.VOID:
            self.stack.append((tag, classes, self._count))

    def handle_endtag(self, tag):
        if any(open_tag == tag for open_tag, _, _ in self.stack):  # a stray or void end tag closes nothing
            while self.stack.pop()[0] != tag:
                pass

    def handle_data(self, data):
        if any("cell_input" in classes for _, classes, _ in self.stack):
            self.code_inputs[-1] += data
        if TEX_DELIMITERS.search(data) and not any(t in self.UNSEEN for t, _, _ in self.stack):
            self.raw_tex.append(data.strip()[:80])


@dataclass
class Rendered:
    static: _Page  # the HTML file as built
    dom: _Page  # the document after the browser ran its scripts
    requests: list[tuple[str, int]] = field(default_factory=list)  # (path, status) it fetched


@contextlib.contextmanager
def _serve(folder: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """Serve ``folder`` on 127.0.0.1; yields the base address and the log of (path, status)."""
    requests: list[tuple[str, int]] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            requests.append((self.path.split("?")[0], int(code)))

        def log_message(self, format, *args):  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requests
    finally:
        server.shutdown()
        server.server_close()


def _dump_dom(url: str, profile: Path) -> str:
    """The document at ``url`` after its scripts ran, from a fresh headless Chromium offline."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-quic", f"--user-data-dir={profile}",
               # every host name but the local server fails to resolve: no CDN can stand in
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
               # virtual time runs MathJax's deferred load and typesetting to completion
               "--virtual-time-budget=15000", "--dump-dom", url]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and "</html>" in completed.stdout, (
        f"chromium failed on {url} (exit {completed.returncode}):\n{completed.stderr[-2000:]}")
    return completed.stdout


@pytest.fixture(scope="module")
def render(built_book, tmp_path_factory):
    """``render(chapter) -> Rendered``: each chapter page of ``built_book``, rendered once."""
    html = built_book / "_build" / "html"
    cache: dict[str, Rendered] = {}
    with _serve(html) as (address, requests):
        def render(chapter: pipeline.Chapter) -> Rendered:
            if chapter.name not in cache:
                page = chapter.source.with_suffix(".html").as_posix()
                assert (html / page).is_file(), f"{page} was not built"
                first = len(requests)
                dom = _dump_dom(f"{address}/{page}", tmp_path_factory.mktemp("chromium-profile"))
                cache[chapter.name] = Rendered(_Page((html / page).read_text()), _Page(dom),
                                               requests[first:])
            return cache[chapter.name]
        yield render


@needs_chromium
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_equations_are_typeset_by_the_books_own_mathjax(render, chapter):
    page = render(chapter)
    mathjax = [src for src in page.static.scripts if "mathjax" in src.lower()]
    assert len(mathjax) == 1, f"{chapter.name}: expected one MathJax script, found {mathjax}"
    assert "://" not in mathjax[0] and mathjax[0].split("?")[0].endswith(f"_static/{assets.MATHJAX_PATH}"), (
        f"{chapter.name}: MathJax loads from {mathjax[0]}, not from the book's own files")
    served = [(path, status) for path, status in page.requests if "/_static/mathjax/" in path]
    assert (f"/_static/{assets.MATHJAX_PATH}", 200) in served, f"{chapter.name}: MathJax never fetched"
    assert any(path.endswith(".woff") for path, _ in served), f"{chapter.name}: no MathJax font fetched"
    assert all(status == 200 for _, status in served), f"{chapter.name}: missing MathJax files {served}"
    # Every chapter states its model in equations; without any, this check would prove nothing.
    assert page.static.math, f"{chapter.name}: no equation on the built page"
    assert len(page.dom.math) == len(page.static.math)
    untypeset = len(page.dom.math - page.dom.typeset)
    assert not untypeset, f"{chapter.name}: {untypeset} of {len(page.dom.math)} equations not typeset"
    assert not page.dom.raw_tex, f"{chapter.name}: raw TeX shown to the reader: {page.dom.raw_tex[:5]}"


@needs_chromium
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_injected_parameters_cell_is_not_shown(render, chapter):
    page = render(chapter)
    assert "tag_injected-parameters" not in page.dom.classes, (
        f"{chapter.name}: papermill's injected-parameters cell is on the page (tag it remove-cell)")
    source = nbformat.read(ROOT / chapter.source, as_version=4)
    parameters = next(c for c in source.cells if "parameters" in c.metadata.get("tags", []))
    names = re.findall(r"^(\w+)\s*=", parameters.source, re.M)
    assigning = [text for text in page.dom.code_inputs
                 if all(re.search(rf"^\s*{name}\s*=", text, re.M) for name in names)]
    assert len(assigning) == 1, (
        f"{chapter.name}: the parameters ({', '.join(names)}) are set in {len(assigning)} cells on the page")
    assert "tag_parameters" in page.dom.classes
