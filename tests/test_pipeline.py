"""The pipeline end to end: papermill, nbval and Jupyter Book, on copies of the book in a
temporary folder (so a developer's own _build is never touched)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import nbformat
import pytest

from conftest import commit_all, run_book
from bookbuild import pipeline

ROOT = Path(__file__).resolve().parents[1]


def tiny_book(target: Path, chapters: dict[str, list[str]] | list[str]) -> Path:
    """A book whose chapters (name -> cells run after a parameters cell) are tiny notebooks;
    a plain list of cells makes one chapter, ``01_tiny``."""
    if isinstance(chapters, list):
        chapters = {"01_tiny": chapters}
    (target / "book").mkdir()
    (target / "_config.yml").write_text("title: tiny\nexecute:\n  execute_notebooks: 'off'\n")
    toc = "format: jb-book\nroot: book/intro\nchapters:\n" + "".join(f"  - file: book/{name}\n" for name in chapters)
    (target / "_toc.yml").write_text(toc)
    (target / "book" / "intro.md").write_text("# Tiny\n")
    for name, cells in chapters.items():
        notebook = nbformat.v4.new_notebook()
        parameters = nbformat.v4.new_code_cell('profile = "full"\nseed = 0\ndevice = "auto"')
        parameters.metadata["tags"] = ["parameters"]
        title = nbformat.v4.new_markdown_cell(f"# {name}")
        notebook.cells = [title, parameters] + [nbformat.v4.new_code_cell(source) for source in cells]
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(notebook, target / "book" / f"{name}.ipynb")
    return target


def page_text(path: Path) -> str:
    """The text of an HTML page, without its tags."""
    return unescape(re.sub(r"<[^>]+>", "", path.read_text()))


def executed(root: Path, name: str = "01_tiny") -> nbformat.NotebookNode:
    return nbformat.read(root / pipeline.STAGE / "book" / f"{name}.ipynb", as_version=4)


# -- the real book, ci profile --------------------------------------------------------------


def test_every_chapter_executes_validates_and_builds(built_book):
    html = built_book / "_build" / "html"
    assert (html / "index.html").is_file()
    commit = pipeline.source_commit(built_book)
    assert commit
    for chapter in pipeline.chapters(built_book):
        page = (html / chapter.source.with_suffix(".html")).read_text()
        # the launch button opens the chapter at the commit that produced the page
        assert f"colab.research.google.com/github/wmbook/wmbook/blob/{commit}/{chapter.source}" in page
        figures = re.findall(r'<img[^>]+src="[^"]*_images/[^"]*\.png"', page)
        copy = nbformat.read(built_book / pipeline.STAGE / chapter.source, as_version=4)
        plotted = sum("image/png" in output.get("data", {}) for cell in copy.cells
                      if cell.cell_type == "code" for output in cell.outputs)
        assert plotted >= 2 and len(figures) == plotted, (
            f"{chapter.name}: {len(figures)} figures on the page, {plotted} in the executed copy")
        pasted = re.findall(r'class="pasted-text">([^<]*)<', page)
        assert pasted and all(value.strip() for value in pasted), "glued numbers missing from the prose"
        assert "Traceback" not in page


def test_executed_copies_install_the_commit_and_hide_the_injected_parameters(built_book):
    commit = pipeline.source_commit(built_book)
    for chapter in pipeline.chapters(built_book):
        copy = nbformat.read(built_book / pipeline.STAGE / chapter.source, as_version=4)
        install = next(c for c in copy.cells if c.cell_type == "code")
        assert f'WMBOOK_REF = "{commit}"' in install.source
        injected = [c for c in copy.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and "remove-cell" in injected[0].metadata["tags"]
        assert copy.metadata["papermill"]["parameters"]["profile"] == "ci"


def test_chapters_write_their_results_beside_the_executed_copy(built_book):
    for chapter in pipeline.chapters(built_book):
        results = built_book / pipeline.STAGE / chapter.source.with_suffix(".results.json")
        data = json.loads(results.read_text())
        assert data["chapter"] == chapter.name and data["profile"] == "ci" and data["seed"] == 0
        assert data["environment"]["torch"] and data["results"]
        assert data["environment"]["torch threads"] == "1"  # the pipeline runs one thread per chapter


def test_chapter_one_learns_under_the_ci_profile(built_book):
    data = json.loads((built_book / pipeline.STAGE / "book" / "01_world_model.results.json").read_text())
    values = data["results"]
    assert values["best_val_loss"] < 0.5 * values["initial_val_loss"]
    assert 0 < values["next_state_mse"] < 1.0
    # the ci model calls terminations better than chance, and its F1 is that of its own
    # precision and recall (a miscounted metric would break the identity)
    precision, recall = values["done_precision"], values["done_recall"]
    assert values["done_f1"] > 0.3
    assert values["done_f1"] == pytest.approx(2 * precision * recall / (precision + recall), rel=1e-6)
    assert values["hard_running"] > 0 and 0 < values["soft_running"] <= 1


def test_chapter_three_reports_chosen_k_and_intervals_under_the_ci_profile(built_book):
    data = json.loads((built_book / pipeline.STAGE / "book" / "03_dyna_dqn.results.json").read_text())
    values = data["results"]
    assert values["best_k"] in {int(k) for k in values["tuning_iqm"]}
    assert values["tuning_iqm"][str(values["best_k"])] == min(values["tuning_iqm"].values())
    for key in ("p_dyna_vs_dqn", "p_dyna_vs_control"):
        estimate, low, high = values[key]
        assert 0 <= low <= estimate <= high <= 1
    assert "not resolved" in values["dqn_sentence"] or "lies" in values["dqn_sentence"]


def test_a_second_run_with_nothing_changed_skips_every_chapter(built_book):
    before = {c.name: pipeline._digest(built_book / pipeline.STAGE / c.source)
              for c in pipeline.chapters(built_book)}
    result = run_book(built_book, "all", "--profile", "ci")
    assert result.returncode == 0, result.stderr
    for name, digest in before.items():
        assert f"cached   {name}" in result.stdout
        assert pipeline._digest(built_book / pipeline.STAGE / "book" / f"{name}.ipynb") == digest
    assert "run      " not in result.stdout


def test_unknown_chapter_is_named(built_book):
    result = run_book(built_book, "run", "--chapters", "99", "--profile", "ci")
    assert result.returncode == 1
    assert "unknown chapter '99'" in result.stderr and "01_world_model" in result.stderr


def test_unknown_profile_is_refused(built_book):
    result = run_book(built_book, "run", "--profile", "huge")
    assert result.returncode == 2
    assert "invalid choice: 'huge'" in result.stderr


def test_list_shows_chapters_without_importing_torch(built_book):
    result = run_book(built_book, "list")
    assert result.returncode == 0 and "01_world_model" in result.stdout
    probe = ("import runpy, sys\nsys.argv = ['wmbook', 'list']\n"
             "try:\n    runpy.run_module('wmbook', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    result = subprocess.run([sys.executable, "-c", probe], cwd=built_book, capture_output=True, text=True)
    assert result.stdout.strip().endswith("no torch"), result.stdout + result.stderr


# -- tiny books: failures and refusals --------------------------------------------------------


def test_failing_chapter_names_chapter_and_cell_and_keeps_partial_output(tmp_path):
    root = tiny_book(tmp_path, ["x = 1\nprint('before the failure')", "raise ValueError('broken on purpose')"])
    result = run_book(root, "run")
    assert result.returncode == 1
    assert "chapter 01_tiny failed in cell" in result.stderr
    assert "ValueError: broken on purpose" in result.stderr
    outputs = [o.get("text", "") for c in executed(root).cells if c.cell_type == "code" for o in c.outputs]
    assert any("before the failure" in text for text in outputs)


def test_nondeterministic_chapter_fails_validation_and_cannot_be_built(tmp_path):
    root = tiny_book(tmp_path, ["import os\nprint(os.urandom(8).hex())"])
    assert run_book(root, "run").returncode == 0
    result = run_book(root, "validate")
    assert result.returncode == 1 and "01_tiny did not reproduce its outputs" in result.stderr
    result = run_book(root, "build")
    assert result.returncode == 1 and "not executed and validated" in result.stderr


FIGURE = ("import matplotlib.pyplot as plt\nimport numpy as np\n"
          "%config InlineBackend.figure_formats = ['png']\n"
          "fig, ax = plt.subplots(figsize=(3, 2))\nax.plot({points})\nplt.show()")


def test_a_figure_that_changes_between_runs_fails_validation(tmp_path):
    root = tiny_book(tmp_path, [FIGURE.format(points="np.random.default_rng().random(5)")])
    assert run_book(root, "run").returncode == 0
    assert any("image/png" in o.get("data", {}) for c in executed(root).cells for o in c.get("outputs", []))
    result = run_book(root, "validate")
    assert result.returncode == 1
    assert "png sha256:" in result.stderr  # the report names the figure, as two hashes


def test_a_figure_that_reproduces_passes_validation(tmp_path):
    root = tiny_book(tmp_path, [FIGURE.format(points="np.random.default_rng(3).random(5)")])
    assert run_book(root, "run").returncode == 0
    result = run_book(root, "validate")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_chapter_edited_after_validation_must_be_validated_again(tmp_path):
    root = tiny_book(tmp_path, ["print(6 * 7)"])
    assert run_book(root, "run").returncode == 0
    assert run_book(root, "validate").returncode == 0
    path = root / pipeline.STAGE / "book" / "01_tiny.ipynb"
    path.write_text(path.read_text().replace("42", "43"))
    result = run_book(root, "build")
    assert result.returncode == 1 and "01_tiny" in result.stderr


def test_build_refuses_chapters_run_with_different_profiles_or_seeds(tmp_path):
    root = tiny_book(tmp_path, {"01_one": ["print(profile, seed)"], "02_two": ["print(profile, seed)"]})
    assert run_book(root, "run", "-c", "1", "--profile", "ci").returncode == 0
    assert run_book(root, "run", "-c", "2", "--profile", "full", "--seed", "3").returncode == 0
    assert run_book(root, "validate").returncode == 0
    result = run_book(root, "build")
    assert result.returncode == 1
    assert "different profiles or seeds" in result.stderr
    assert "01_one: profile ci, seed 0" in result.stderr and "02_two: profile full, seed 3" in result.stderr


def test_a_failed_chapter_becomes_an_error_report_and_the_rest_of_the_book_is_built(tmp_path):
    stamp = ("from wmbook.device import environment_stamp, format_stamp\n"
             "print(format_stamp(environment_stamp('cpu')))")
    root = tiny_book(tmp_path, {"01_good": ["print('good chapter output')"],
                                "02_broken": [stamp, "print('before the failure')",
                                              "raise ValueError('broken on purpose')"],
                                "03_random": ["import os\nprint(os.urandom(8).hex())"]})
    # a section of the broken chapter that the landing page links to, and its chapter card
    broken = nbformat.read(root / "book" / "02_broken.ipynb", as_version=4)
    broken.cells.append(nbformat.v4.new_markdown_cell("(broken-results)=\n## Results"))
    nbformat.write(broken, root / "book" / "02_broken.ipynb")
    (root / "_config.yml").write_text("title: tiny\nexecute:\n  execute_notebooks: 'off'\n"
                                      "sphinx:\n  extra_extensions: [bookbuild.landing]\n")
    (root / "book" / "intro.md").write_text(
        "# Tiny\n\nSee {ref}`broken-results`.\n\n```{chapter-card} 02_broken\n:figure: plot(\n:alt: none\n"
        ":time: 1 s\n:headline: {value}\n\nWhat the chapter teaches.\n```\n")

    result = run_book(root, "all", "--profile", "ci")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = result.stdout[result.stdout.index("summary:"):]
    assert re.search(r"01_good +ok +[0-9.]+ s", summary)
    assert re.search(r"02_broken +FAILED +[0-9.]+ s +chapter 02_broken failed in cell 5 .*"
                     r"ValueError: broken on purpose", summary)
    assert re.search(r"03_random +FAILED +[0-9.]+ s +nbval: 03_random did not reproduce its outputs "
                     r"in cell 3 \(nbval's Cell 2\)", summary)
    assert "02_broken, 03_random" in result.stderr

    assert "Jupyter Book reported" not in result.stderr  # the build, with -W, had no warnings
    pages = root / "_build" / "html"
    assert "good chapter output" in (pages / "book" / "01_good.html").read_text()
    report = page_text(pages / "book" / "02_broken.html")
    assert "This chapter failed when the book was built" in report
    assert "cell 5 of the executed notebook" in report and "raise ValueError('broken on purpose')" in report
    assert "Error: ValueError: broken on purpose" in report and "Traceback (most recent call last)" in report
    assert "cpu capability" in report and "Profile and seed: ci, seed 0" in report
    assert "_build/failed/book/02_broken.ipynb" in report
    report = page_text(pages / "book" / "03_random.html")
    assert "print(os.urandom(8).hex())" in report and "Cell outputs differ" in report
    landing = (pages / "book" / "intro.html").read_text()
    assert "This chapter failed when it was last run" in landing
    assert 'href="02_broken.html#broken-results"' in landing  # the label resolves, to the report

    # what the failed chapters executed is kept; only the good chapter is cached
    partial = nbformat.read(root / "_build" / "failed" / "book" / "02_broken.ipynb", as_version=4)
    assert any("before the failure" in o.get("text", "") for c in partial.cells for o in c.get("outputs", []))
    assert (root / "_build" / "failed" / "book" / "03_random.ipynb").is_file()
    key = {c.name: pipeline.cache_key(root, c, "ci", 0, "auto") for c in pipeline.chapters(root)}
    assert [c.name for c in pipeline.chapters(root) if pipeline.is_cached(root, c, key[c.name])] == ["01_good"]
    assert pipeline.error_reports(root, pipeline.chapters(root)) == ["02_broken", "03_random"]


def test_a_failed_chapter_is_never_cached_and_runs_again_until_it_succeeds(tmp_path):
    # the chapter fails until a file appears beside its executed copy (the kernel's folder)
    root = tiny_book(tmp_path, {"01_good": ["print('good')"],
                                "02_flaky": ["import pathlib\nassert pathlib.Path('fixed').exists(), 'not yet'"]})
    assert run_book(root, "all", "--profile", "ci").returncode == 1
    second = run_book(root, "all", "--profile", "ci")
    assert second.returncode == 1 and "AssertionError: not yet" in second.stdout
    assert "cached   01_good" in second.stdout and "run      02_flaky" in second.stdout
    assert (root / "_build" / "failed" / "book" / "02_flaky.ipynb").is_file()
    (root / pipeline.STAGE / "book" / "fixed").touch()
    third = run_book(root, "all", "--profile", "ci")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "run      02_flaky" in third.stdout and re.search(r"02_flaky +ok", third.stdout)
    assert not (root / "_build" / "failed" / "book" / "02_flaky.ipynb").exists()
    assert pipeline.error_reports(root, pipeline.chapters(root)) == []
    assert "This chapter failed" not in (root / "_build" / "html" / "book" / "02_flaky.html").read_text()


def test_the_cache_reruns_a_chapter_when_an_input_changes(tmp_path):
    root = tiny_book(tmp_path, {"01_one": ["print(profile, seed)"], "02_two": ["print('two')"]})
    first = run_book(root, "all", "--profile", "ci")
    assert first.returncode == 0, first.stderr
    assert "run      01_one" in first.stdout and "run      02_two" in first.stdout
    source = root / "book" / "02_two.ipynb"
    source.write_text(source.read_text().replace("'two'", "'second'"))
    second = run_book(root, "all", "--profile", "ci")
    assert second.returncode == 0, second.stderr
    assert "cached   01_one" in second.stdout and "run      02_two" in second.stdout
    third = run_book(root, "all", "--profile", "ci", "--seed", "1")  # a new seed runs everything
    assert "run      01_one" in third.stdout and "run      02_two" in third.stdout
    fourth = run_book(root, "all", "--profile", "ci", "--seed", "1", "--force")
    assert "run      01_one" in fourth.stdout


def test_a_committed_book_pins_its_install_cell(tmp_path):
    install = 'REPOSITORY = "x"\nWMBOOK_REF = "main"  # written by the pipeline\nprint(WMBOOK_REF)'
    root = tiny_book(tmp_path, [install])
    commit = commit_all(root)
    assert run_book(root, "run").returncode == 0
    cell = executed(root).cells[3]  # title, parameters, injected parameters, install cell
    assert f'WMBOOK_REF = "{commit}"' in cell.source and "# written by the pipeline" in cell.source
    assert cell.outputs[0]["text"].strip() == commit  # the pinned cell is what ran
    assert run_book(root, "validate").returncode == 0


def test_outside_git_the_install_cell_is_left_alone(tmp_path):
    root = tiny_book(tmp_path, ['WMBOOK_REF = "main"'])
    assert pipeline.source_commit(root) is None
    assert run_book(root, "run").returncode == 0
    assert 'WMBOOK_REF = "main"' in executed(root).cells[3].source


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "WMBOOK_THREADS"])
def test_kernels_get_one_thread(variable):
    assert pipeline.kernel_environment()[variable] == "1"
