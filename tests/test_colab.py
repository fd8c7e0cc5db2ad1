"""Colab as readers meet it: a runtime with torch already installed runs the chapter's first
cell as the book prints it, then the chapter.

The runtime is a fresh virtual environment whose path holds the locked packages, torch among
them (see ``fresh_env``), and not wmbook. The repository is a committed copy of this one (package
and book), served over HTTP on 127.0.0.1 as git serves a repository to a plain web server, and
the chapter is the one the pipeline writes: its install cell pinned to that commit by
:func:`bookbuild.pipeline.pinned_source`, with only the repository's address pointed at the local
server. pip runs offline (no index); a wheelhouse offers a newer "torch", as PyPI would
offer Colab one, so a cell that upgraded torch would take it. What Colab does and this cannot:
download the dependencies Colab lacks, and build in an isolated environment (that would need
setuptools from an index: the build uses the locked one).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest
import yaml

import fresh_env
from conftest import commit_all, copy_book
from bookbuild import pipeline

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "01_world_model"
REPOSITORY_LINE = re.compile(r'^REPOSITORY = "([^"]*)"', re.M)


def fake_torch_wheel(folder: Path, version: str = "99.0") -> Path:
    """A wheel named torch, newer than any real one, that a careless install would pick."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    files = {"torch/__init__.py": f'__version__ = "{version}"\n',
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


class Runtime:
    """A Colab-like runtime: ``python`` of a fresh environment, and the environment variables
    its kernels run with (pip offline, the newer torch on offer, one thread)."""

    def __init__(self, base: Path):
        self.base = base
        view = fresh_env.third_party_view(base / "preinstalled")
        self.python = fresh_env.create(base / "runtime", view)
        self.site = fresh_env.site_packages(base / "runtime")
        wheelhouse = fake_torch_wheel(base / "wheelhouse").parent
        # pip reads "0" here as "turn build isolation off" (the option is a negative flag)
        self.env = fresh_env.isolated_environment(
            self.python, PIP_FIND_LINKS=str(wheelhouse), PIP_NO_BUILD_ISOLATION="0",
            PYTHONHASHSEED="0", SDL_VIDEODRIVER="dummy", WMBOOK_THREADS="1", MPLBACKEND="")
        del self.env["MPLBACKEND"]  # the kernel's inline backend, as in Colab
        self.work = base / "content"  # the folder the notebook runs in: not a clone
        self.work.mkdir()

    def packages(self) -> dict[str, dict]:
        """Every distribution the runtime sees: name -> {version, location, record}."""
        code = ("import json, importlib.metadata as m, hashlib\n"
                "out = {}\n"
                "for d in m.distributions():\n"
                "    name = d.metadata['Name'].lower()\n"
                "    if name in out: continue  # shadowed by an earlier entry of the path\n"
                "    record = d.read_text('RECORD') or ''\n"
                "    out[name] = {'version': d.version, 'location': str(d.locate_file('')),\n"
                "                 'record': hashlib.sha256(record.encode()).hexdigest()}\n"
                "print(json.dumps(out))\n")
        completed = fresh_env.run(self.python, "-c", code, cwd=self.work, env=self.env)
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)

    def execute(self, notebook: nbformat.NotebookNode, name: str, **parameters) -> tuple[int, str, Path]:
        """Run ``notebook`` with papermill in a kernel of the runtime; (exit code, log, output)."""
        source, output = self.work / f"{name}.ipynb", self.work / f"{name}.out.ipynb"
        nbformat.write(notebook, source)
        arguments = ["-m", "papermill", str(source), str(output), "-k", "python3", "--cwd", str(self.work)]
        for key, value in parameters.items():
            arguments += ["-p", key, str(value)]
        completed = fresh_env.run(self.python, *arguments, cwd=self.work, env=self.env, timeout=900)
        return completed.returncode, completed.stdout + completed.stderr, output


def install_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cells = [c for c in notebook.cells if c.cell_type == "code" and pipeline.REF_LINE.search(c.source)]
    assert len(cells) == 1, f"expected one install cell (a line `WMBOOK_REF = ...`), found {len(cells)}"
    return cells[0]


def only(cell: nbformat.NotebookNode) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(cell.source)]
    return notebook


def assert_torch_left_alone(before: dict, after: dict) -> None:
    assert "torch" in before, "the runtime has no torch to begin with"
    assert after.get("torch") == before["torch"], (
        f"the install cell replaced the preinstalled torch: {before['torch']} -> {after.get('torch')}")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """Serve ``folder`` on 127.0.0.1; yields the base address."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """The runtime, the committed copy and its commit, the chapter as printed, and what the
    runtime held before the chapter ran."""
    base = tmp_path_factory.mktemp("colab")
    clone = copy_book(fresh_env.package_sources(base / "repository"))
    commit = commit_all(clone)
    # what a plain web server needs to serve a git repository for cloning
    subprocess.run(["git", "-C", str(clone), "update-server-info"], check=True)
    printed = pipeline.pinned_source(clone / "book" / f"{CHAPTER}.ipynb", commit)
    cell = install_cell(printed)
    configured = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert REPOSITORY_LINE.findall(cell.source) == [configured], "the install cell names another repository"
    assert f'WMBOOK_REF = "{commit}"' in cell.source, "the pipeline did not pin the install cell"
    with serve(base) as address:
        cell.source = REPOSITORY_LINE.sub(f'REPOSITORY = "{address}/{clone.name}/.git"', cell.source)
        runtime = Runtime(base)
        yield runtime, commit, printed, runtime.packages()


@pytest.fixture(scope="module")
def chapter_run(colab):
    runtime, commit, printed, before = colab
    code, log, output = runtime.execute(printed, CHAPTER, profile="ci", seed=0, device="auto")
    return code, log, output, runtime.packages()


def test_chapter_one_executes_after_its_install_cell(chapter_run):
    code, log, output, _ = chapter_run
    assert code == 0, f"Chapter 1 failed in the runtime:\n{log[-5000:]}"
    executed = nbformat.read(output, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors
    assert "checks passed" in json.dumps(executed.cells[-1].get("outputs", [])) or any(
        "checks passed" in json.dumps(c.get("outputs", [])) for c in executed.cells)


def test_install_cell_installs_only_wmbook_at_the_printed_commit(colab, chapter_run):
    runtime, commit, _, before = colab
    after = chapter_run[3]
    assert set(after) - set(before) == {"wmbook"}, f"installed besides wmbook: {sorted(set(after) - set(before) - {'wmbook'})}"
    changed = {name for name in before if after.get(name) != before[name]}
    assert not changed, f"the install cell changed preinstalled packages: {sorted(changed)}"
    assert Path(after["wmbook"]["location"]).resolve() == runtime.site.resolve()
    direct_url = json.loads(next(runtime.site.glob("wmbook-*.dist-info/direct_url.json")).read_text())
    assert direct_url["vcs_info"]["commit_id"] == commit, "installed another commit than the page's"


def test_install_cell_leaves_the_preinstalled_torch_alone(colab, chapter_run):
    assert_torch_left_alone(colab[3], chapter_run[3])
    assert not list(colab[0].site.glob("torch*")), "a torch was installed into the runtime"


def test_second_run_of_the_install_cell_installs_nothing(colab, chapter_run):
    runtime, _, printed, _ = colab
    before = runtime.packages()
    files = sorted(p.name for p in runtime.site.iterdir())
    code, log, output = runtime.execute(only(install_cell(printed)), "install-again")
    assert code == 0, log[-3000:]
    outputs = nbformat.read(output, as_version=4).cells[0].outputs
    assert outputs == [], f"the second run printed: {outputs}"
    assert runtime.packages() == before
    assert sorted(p.name for p in runtime.site.iterdir()) == files


def test_a_cell_that_upgrades_torch_is_caught(colab, tmp_path_factory):
    """The check itself: a cell asking pip to upgrade eagerly takes the newer torch on offer,
    and the torch check fails on it."""
    runtime = Runtime(tmp_path_factory.mktemp("colab-upgrade"))
    cell = install_cell(colab[2]).copy()
    cell.source = cell.source.replace("install --quiet", "install --quiet --upgrade --upgrade-strategy eager")
    assert "--upgrade" in cell.source
    before = runtime.packages()
    code, log, _ = runtime.execute(only(cell), "upgrading")
    assert code == 0, log[-3000:]
    after = runtime.packages()
    with pytest.raises(AssertionError, match="replaced the preinstalled torch"):
        assert_torch_left_alone(before, after)
