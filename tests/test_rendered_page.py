"""What a reader sees: every page of the built book, rendered by a real browser with no network.

Each chapter page of the built book is served on 127.0.0.1 and loaded by headless Chromium,
whose host resolver fails every other name, so anything the page still fetches from a CDN is
simply missing, as it would be for a reader offline. ``--dump-dom`` returns the document after
its scripts ran. The checks: MathJax comes from the book's own files and typesets every
equation; papermill's injected-parameters cell is not on the page. The MathJax staging itself
(``bookbuild.assets``) is checked without a browser.

Every page (the table of contents' pages, search and the index) is also loaded through the
DevTools protocol (``browser.py``), which reports console errors, uncaught exceptions and failed
requests; each page's links, assets, anchors and cross-references must resolve, every image
must have alt text, the launch button must open the page's notebook in Colab at the commit that
built it, and the landing page must hold a card for every chapter. Two of the browser's findings
are also checked in the HTML itself, so they fail even where no Chromium is installed: a script
or style loaded from another host, and a global that two inline scripts both declare.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

import nbformat
import pytest
import yaml

from browser import Browser
from bookbuild import assets, pipeline

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


# ---------------------------------------------------------------- every page, as a reader sees it


CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
# every page of the book: its table of contents, plus the pages Sphinx adds
DOCUMENTS = [TOC["root"], *pipeline._toc_files({k: v for k, v in TOC.items() if k != "root"})]
PAGES = [f"{doc}.html" for doc in DOCUMENTS] + ["search.html", "genindex.html"]
NOTEBOOKS = {c.source.with_suffix("").as_posix() for c in CHAPTERS}
# requests a browser makes on its own, not because of anything on the page
BROWSER_NOISE = ("/favicon.ico",)
MATHJAX_READY = "!window.MathJax || (window.MathJax.startup && window.MathJax.startup.document && true)"


class _Links(HTMLParser):
    """Every ``href``/``src`` and ``id`` of a document, cross-references left unresolved
    (``xref`` elements that are not links), images with their ``alt``, and the text of each
    classic inline script (they share one global scope)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.images: list[tuple[str, str | None]] = []
        self.assets: list[str] = []  # what the page loads: scripts, styles, images
        self.unresolved: list[str] = []
        self.inline_scripts: list[str] = []
        self._stack: list[str] = []
        self._in_inline_script = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in ("id", "name"):
            if attributes.get(name):
                self.ids.add(attributes[name])
        if tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"])
        if tag in ("link",) and attributes.get("href"):
            self.links.append(attributes["href"])
        if tag in ("script", "img") and attributes.get("src"):
            self.links.append(attributes["src"])
            self.assets.append(attributes["src"])
        if tag == "link" and attributes.get("href") and attributes.get("rel") in ("stylesheet", "preload"):
            self.assets.append(attributes["href"])
        if tag == "img":
            self.images.append((attributes.get("src", ""), attributes.get("alt")))
        if tag == "script" and not attributes.get("src") and attributes.get("type") in (None, "text/javascript"):
            self.inline_scripts.append("")
            self._in_inline_script = True
        classes = (attributes.get("class") or "").split()
        if "xref" in classes and "a" not in self._stack and tag != "a":
            self.unresolved.append(attributes.get("class", ""))
        if tag not in _Page.VOID:
            self._stack.append(tag)

    def handle_data(self, data):
        if self._in_inline_script:
            self.inline_scripts[-1] += data

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_inline_script = False
        if tag in self._stack:
            while self._stack.pop() != tag:
                pass


def broken_links(html_root: Path, page: str) -> list[str]:
    """Internal links, assets and cross-references of ``page`` that lead nowhere."""
    parsed = _Links((html_root / page).read_text())
    problems = [f"unresolved cross-reference ({c})" for c in parsed.unresolved]
    cache: dict[Path, set[str]] = {}
    for link in parsed.links:
        parts = urlsplit(link)
        if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
            continue
        target = (html_root / page).parent / unquote(parts.path) if parts.path else html_root / page
        target = target.resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(html_root.resolve()) or not target.is_file():
            problems.append(f"{link}: no such file")
            continue
        if parts.fragment and target.suffix == ".html":
            if target not in cache:
                cache[target] = _Links(target.read_text()).ids
            if unquote(parts.fragment) not in cache[target]:
                problems.append(f"{link}: no element with id {parts.fragment!r}")
    return problems


def test_broken_links_finds_a_broken_cross_reference_and_a_missing_anchor(tmp_path):
    (tmp_path / "a.html").write_text('<p id="here">x</p><a class="reference internal" href="b.html#gone">b</a>'
                                     '<a href="#here">ok</a><a href="https://example.org/x">out</a>'
                                     '<span class="xref std std-doc">missing page</span><img src="nope.png" alt="n">')
    (tmp_path / "b.html").write_text('<h1 id="there">b</h1><a href="a.html#here">back</a>')
    assert broken_links(tmp_path, "b.html") == []
    problems = broken_links(tmp_path, "a.html")
    assert any("gone" in p for p in problems) and any("unresolved" in p for p in problems)
    assert any("nope.png" in p for p in problems) and len(problems) == 3


@pytest.fixture(scope="module")
def reader(built_book, tmp_path_factory):
    """``reader(page) -> (Loaded, static _Links)``: each page of ``built_book`` loaded once by
    one offline Chromium."""
    html = built_book / "_build" / "html"
    cache: dict[str, tuple] = {}
    browser = Browser(CHROMIUM, tmp_path_factory.mktemp("chromium-reader"))
    try:
        with _serve(html) as (address, _):
            def read(page: str):
                if page not in cache:
                    assert (html / page).is_file(), f"{page} was not built"
                    cache[page] = (browser.load(f"{address}/{page}", settle=MATHJAX_READY),
                                   _Links((html / page).read_text()))
                return cache[page]
            yield read
    finally:
        browser.close()


def test_every_built_page_is_checked(built_book):
    html = built_book / "_build" / "html"
    built = {p.relative_to(html).as_posix() for p in html.rglob("*.html")
             if not p.relative_to(html).parts[0].startswith("_")}
    built.discard("index.html")  # a redirect to the root page
    assert built == set(PAGES), f"pages not checked: {sorted(built - set(PAGES))}"


@needs_chromium
@pytest.mark.parametrize("page", PAGES)
def test_page_loads_offline_without_console_errors(reader, page):
    loaded, _ = reader(page)
    errors = [e for e in loaded.errors if not any(noise in e for noise in BROWSER_NOISE)]
    assert not errors, f"{page}: " + "\n".join(errors[:10])


@pytest.mark.parametrize("page", PAGES)
def test_internal_links_and_cross_references_resolve(built_book, page):
    problems = broken_links(built_book / "_build" / "html", page)
    assert not problems, f"{page}: " + "\n".join(problems[:10])


DECLARATION = re.compile(r"(?:^|;)\s*(?:const|let)\s+([A-Za-z_$][\w$]*)", re.M)


def redeclared_globals(html: str) -> list[str]:
    """Names that two classic inline scripts of a page both declare with ``const`` or ``let``:
    the second script is a SyntaxError and does not run."""
    seen: dict[str, int] = {}
    for script in _Links(html).inline_scripts:
        for name in set(DECLARATION.findall(script)):
            seen[name] = seen.get(name, 0) + 1
    return sorted(name for name, count in seen.items() if count > 1)


def test_redeclared_globals_finds_a_script_written_twice():
    once = '<script>const A = 1; const B = "x"</script><script>var c = 1;</script>'
    assert redeclared_globals(f"<head>{once}<script>var c = 2;</script></head>") == []
    assert redeclared_globals(f"<head>{once}<script>const A = 1; const B = \"x\"</script></head>") == ["A", "B"]
    assert redeclared_globals('<script>let d = 1</script><script type="module">let d = 2</script>') == []


@pytest.mark.parametrize("page", PAGES)
def test_no_global_is_declared_twice(built_book, page):
    """Caught without a browser: Sphinx 7.4 writes an inline script twice into a page when an
    extension adds it after the builder started (sphinx_thebe's ``const THEBE_JS_URL`` did)."""
    names = redeclared_globals((built_book / "_build" / "html" / page).read_text())
    assert not names, f"{page}: inline scripts declare {', '.join(names)} twice"


@pytest.mark.parametrize("page", PAGES)
def test_pages_load_nothing_from_another_host(built_book, page):
    """Offline, a script or style from a CDN is simply missing (as the widget manager was)."""
    assets = _Links((built_book / "_build" / "html" / page).read_text()).assets
    remote = [src for src in assets if urlsplit(src).scheme in ("http", "https") or src.startswith("//")]
    assert not remote, f"{page} loads from another host: {remote}"


def images_without_alt(html: str) -> list[str]:
    """The ``src`` of each image with no real alternative text. Sphinx gives an image without
    one its own path as ``alt``, so a file name counts as none."""
    return [src for src, alt in _Links(html).images
            if not alt or not alt.strip() or alt.strip() == src
            or re.search(r"\.(png|svg|jpe?g|gif)$", alt.strip())]


def test_alt_text_from_a_cells_metadata_reaches_the_page_and_its_absence_is_caught(tmp_path):
    """The metadata the chapters' figure cells carry, ``"mystnb": {"image": {"alt": ...}}``,
    rendered by the book's own notebook parser, and a figure cell without it."""
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="

    def figure_cell(source: str, **metadata) -> nbformat.NotebookNode:
        cell = nbformat.v4.new_code_cell(source, metadata=metadata, execution_count=1)
        cell.outputs = [nbformat.v4.new_output("display_data", {"image/png": pixel, "text/plain": "<Figure>"})]
        return cell

    alt = "Held-out loss against epoch for the training and validation sets."
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Figures"),
        figure_cell("plot_with_alt()", mystnb={"image": {"alt": alt}}),
        figure_cell("plot_without_alt()")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                  "language_info": {"name": "python"}})
    source, out = tmp_path / "source", tmp_path / "html"
    source.mkdir()
    nbformat.write(notebook, source / "index.ipynb")
    (source / "conf.py").write_text('extensions = ["myst_nb"]\nnb_execution_mode = "off"\n')
    built = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-W", "-b", "html", str(source), str(out)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    html = (out / "index.html").read_text()
    images = _Links(html).images
    assert len(images) == 2 and images[0][1] == alt
    assert images_without_alt(html) == [images[1][0]]


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_has_alt_text(built_book, page):
    html = (built_book / "_build" / "html" / page).read_text()
    missing = images_without_alt(html)
    assert not missing, (f"{page}: {len(missing)} of {len(_Links(html).images)} images have no alt text (a "
                         "notebook figure gets one from its cell's metadata, "
                         f'"mystnb": {{"image": {{"alt": "..."}}}}): {missing[:3]}')


@needs_chromium
@pytest.mark.parametrize("page", PAGES)
def test_equations_on_every_page_are_rendered(reader, page):
    loaded, _ = reader(page)
    dom = _Page(loaded.html)
    untypeset = dom.math - dom.typeset
    assert not untypeset, f"{page}: {len(untypeset)} of {len(dom.math)} equations not typeset"
    assert not dom.raw_tex, f"{page}: raw TeX shown to the reader: {dom.raw_tex[:5]}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_launch_and_download_buttons_point_at_the_configured_repository(built_book, document):
    html = built_book / "_build" / "html"
    page = html / f"{document}.html"
    links = _Links(page.read_text()).links
    repository = CONFIG["repository"]["url"].rstrip("/")
    assert repository in links, f"{document}: no repository button to {repository}"
    sources = [link for link in links if "_sources/" in link]
    assert sources, f"{document}: no download button"
    for link in sources:
        assert (page.parent / link).resolve().is_file(), f"{document}: download {link} is missing"
    launches = [link for link in links if "://" in link and "colab" in link]
    if document in NOTEBOOKS:
        commit = subprocess.run(["git", "-C", str(built_book), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        owner_repo = urlsplit(repository).path.strip("/")
        expected = f"{CONFIG['launch_buttons']['colab_url']}/github/{owner_repo}/blob/{commit}/{document}.ipynb"
        assert launches == [expected], f"{document}: Colab button {launches}, expected {expected}"
    else:
        assert not launches, f"{document} is not a notebook, but has a launch button"


def test_landing_page_has_a_card_for_every_chapter(built_book):
    root = TOC["root"]
    page = (built_book / "_build" / "html" / f"{root}.html").read_text()
    for chapter in CHAPTERS:
        match = re.search(rf'<div class="chapter-card[^"]*" id="card-{chapter.name.replace("_", "-")}">(.*?)'
                          r'(?=<div class="chapter-card|<section|</section>)', page, re.S)
        assert match, f"the landing page has no card for {chapter.name} (add a chapter-card to {root}.md)"
        card = match.group(1)
        assert re.search(r'<img [^>]*alt="[^"]{20,}"[^>]*src="data:image/png;base64,', card) or re.search(
            r'<img [^>]*src="data:image/png;base64,[^"]+"[^>]*alt="[^"]{20,}"', card), f"{chapter.name}: no figure with alt text"
        assert "Headline:" in card and "{" not in re.sub(r"<[^>]+>", "", card), f"{chapter.name}: no formatted headline"
        assert "2-core CPU" in card, f"{chapter.name}: no measured time"
        results = json.loads((built_book / pipeline.STAGE / chapter.source.with_suffix(".results.json")).read_text())
        assert results["chapter"] == chapter.name
