"""The pipeline end to end: papermill, nbval and Jupyter Book, on copies of the book in a
temporary folder (so a developer's own _build is never touched)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from wmbook import pipeline

ROOT = Path(__file__).resolve().parents[1]


def wmbook(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wmbook", *args], cwd=cwd, capture_output=True, text=True)


def copy_book(target: Path) -> Path:
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, target / name)
    for folder in ("book", "imgs"):
        shutil.copytree(ROOT / folder, target / folder, ignore=shutil.ignore_patterns("checkpoints", "*.results.json"))
    return target


def tiny_book(target: Path, cells: list[str]) -> Path:
    """A one-chapter book whose chapter runs ``cells`` after a parameters cell."""
    (target / "book").mkdir()
    (target / "_config.yml").write_text("title: tiny\nexecute:\n  execute_notebooks: 'off'\n")
    (target / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/01_tiny\n")
    (target / "book" / "intro.md").write_text("# Tiny\n")
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('profile = "full"\nseed = 0\ndevice = "auto"')
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters] + [nbformat.v4.new_code_cell(source) for source in cells]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, target / "book" / "01_tiny.ipynb")
    return target


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    """The real book, run with the ci profile, validated and built once for this module."""
    root = copy_book(tmp_path_factory.mktemp("book"))
    result = wmbook(root, "all", "--profile", "ci")
    assert result.returncode == 0, f"pipeline failed:\n{result.stdout}\n{result.stderr}"
    return root


def test_every_chapter_executes_validates_and_builds(built_book):
    html = built_book / "_build" / "html"
    assert (html / "index.html").is_file()
    for chapter in pipeline.chapters(built_book):
        page = (html / chapter.source.with_suffix(".html")).read_text()
        assert "colab.research.google.com/github/wmbook/wmbook/blob/main/" + str(chapter.source) in page
        figures = re.findall(r'<img[^>]+src="[^"]*_images/[^"]*\.png"', page)
        executed = nbformat.read(built_book / pipeline.STAGE / chapter.source, as_version=4)
        plotted = sum("image/png" in output.get("data", {}) for cell in executed.cells
                      if cell.cell_type == "code" for output in cell.outputs)
        assert plotted >= 2 and len(figures) == plotted, (
            f"{chapter.name}: {len(figures)} figures on the page, {plotted} in the executed copy")
        pasted = re.findall(r'class="pasted-text">([^<]*)<', page)
        assert pasted and all(value.strip() for value in pasted), "glued numbers missing from the prose"
        assert "Traceback" not in page


def test_chapters_write_their_results_beside_the_executed_copy(built_book):
    for chapter in pipeline.chapters(built_book):
        results = built_book / pipeline.STAGE / chapter.source.with_suffix(".results.json")
        data = json.loads(results.read_text())
        assert data["chapter"] == chapter.name and data["profile"] == "ci" and data["seed"] == 0
        assert data["environment"]["torch"] and data["results"]


def test_chapter_one_learns_under_the_ci_profile(built_book):
    data = json.loads((built_book / pipeline.STAGE / "book" / "01_world_model.results.json").read_text())
    values = data["results"]
    assert values["best_val_loss"] < 0.5 * values["initial_val_loss"]
    assert 0 < values["next_state_mse"] < 1.0
    assert 0.0 <= values["done_f1"] <= 1.0


def test_unknown_chapter_is_named(built_book):
    result = wmbook(built_book, "run", "--chapters", "99", "--profile", "ci")
    assert result.returncode == 1
    assert "unknown chapter '99'" in result.stderr and "01_world_model" in result.stderr


def test_unknown_profile_is_refused(built_book):
    result = wmbook(built_book, "run", "--profile", "huge")
    assert result.returncode == 2
    assert "invalid choice: 'huge'" in result.stderr


def test_list_shows_chapters(built_book):
    result = wmbook(built_book, "list")
    assert result.returncode == 0 and "01_world_model" in result.stdout


def test_failing_chapter_names_chapter_and_cell_and_keeps_partial_output(tmp_path):
    root = tiny_book(tmp_path, ["x = 1\nprint('before the failure')", "raise ValueError('broken on purpose')"])
    result = wmbook(root, "run")
    assert result.returncode == 1
    assert "chapter 01_tiny failed in cell" in result.stderr
    assert "ValueError: broken on purpose" in result.stderr
    partial = nbformat.read(root / pipeline.STAGE / "book" / "01_tiny.ipynb", as_version=4)
    outputs = [o.get("text", "") for c in partial.cells if c.cell_type == "code" for o in c.outputs]
    assert any("before the failure" in text for text in outputs)


def test_nondeterministic_chapter_fails_validation_and_cannot_be_built(tmp_path):
    root = tiny_book(tmp_path, ["import os\nprint(os.urandom(8).hex())"])
    assert wmbook(root, "run").returncode == 0
    result = wmbook(root, "validate")
    assert result.returncode == 1 and "did not reproduce their outputs" in result.stderr
    result = wmbook(root, "build")
    assert result.returncode == 1 and "not executed and validated" in result.stderr


def test_a_chapter_edited_after_validation_must_be_validated_again(tmp_path):
    root = tiny_book(tmp_path, ["print(6 * 7)"])
    assert wmbook(root, "run").returncode == 0
    assert wmbook(root, "validate").returncode == 0
    executed = root / pipeline.STAGE / "book" / "01_tiny.ipynb"
    executed.write_text(executed.read_text().replace("42", "43"))
    result = wmbook(root, "build")
    assert result.returncode == 1 and "01_tiny" in result.stderr
