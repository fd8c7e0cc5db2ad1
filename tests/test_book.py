"""The book's sources: clean notebooks, consistent configuration, one parameters cell each."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from bookbuild import pipeline
from wmbook.chapters import CHAPTER_MODULES, PROFILE_NAMES, chapter_module

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = pipeline.chapters(ROOT)
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def _notebook(chapter):
    return nbformat.read(ROOT / chapter.source, as_version=4)


def _python(source: str) -> str:
    """A code cell's source with its shell and magic lines (``!pip``, ``%matplotlib``) blanked."""
    return "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in source.splitlines())


def test_toc_lists_chapters():
    assert CHAPTERS, "_toc.yml lists no chapter notebooks"
    assert CHAPTERS[0].name == "01_world_model"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_sources_have_no_outputs(chapter):
    dirty = [i for i, cell in enumerate(_notebook(chapter).cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count)]
    assert not dirty, f"{chapter.source}: code cells {dirty} hold outputs; strip them before committing"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_one_parameters_cell_with_profile_seed_device(chapter):
    cells = [c for c in _notebook(chapter).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{chapter.source} needs exactly one cell tagged 'parameters'"
    names = set(re.findall(r"^(\w+)\s*=", cells[0].source, re.M))
    assert {"profile", "seed", "device"} <= names
    assert re.search(r'^profile\s*=\s*"full"', cells[0].source, re.M), "the default profile must be full"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_chapter_has_a_module_with_every_profile(chapter):
    assert chapter.name in CHAPTER_MODULES, f"{chapter.name} has no entry in wmbook.chapters.CHAPTER_MODULES"
    assert set(chapter_module(chapter.name).PROFILES) == set(PROFILE_NAMES)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_chapter_setup_is_the_shared_call(chapter):
    """Setup code lives once in wmbook.notebook.setup_chapter, not copied into each chapter."""
    code = [c.source for c in _notebook(chapter).cells if c.cell_type == "code"]
    calls = [source for source in code if f'setup_chapter("{chapter.name}", profile, seed, device)' in source]
    assert len(calls) == 1, f"{chapter.source} must call setup_chapter once with its own name"
    for copied in ("seed_everything(", "set_threads(", "print_stamp(", "InlineBackend"):
        assert not any(copied in source for source in code), f"{chapter.source} repeats {copied}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_install_cell_uses_the_configured_repository(chapter):
    url = CONFIG["repository"]["url"]
    first_code = next(c for c in _notebook(chapter).cells if c.cell_type == "code")
    assert "pip" in first_code.source and "wmbook" in first_code.source, "first code cell must install wmbook"
    assert f"\"{url}\"" in first_code.source, f"install cell must use the repository URL of _config.yml ({url})"
    assert re.search(r'^WMBOOK_REF = "main"', first_code.source, re.M), "the pipeline pins WMBOOK_REF: keep that line"
    assert "@{WMBOOK_REF}" in first_code.source


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_every_glued_name_in_the_prose_is_glued_by_the_code(chapter):
    notebook = _notebook(chapter)
    prose = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    used = set(re.findall(r"\{glue(?::\w+)?\}`([\w]+)", prose))
    glued = {keyword.arg for cell in notebook.cells if cell.cell_type == "code"
             for node in ast.walk(ast.parse(_python(cell.source))) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "glue" for keyword in node.keywords}
    assert used, f"{chapter.source} glues no result into its prose"
    assert used <= glued, f"glued in prose but never computed: {sorted(used - glued)}"


TIMING = re.compile(r"perf_counter\(\)|\.seconds\b|\bseconds\b|elapsed")
"""What a cell must show to be a timing or progress cell: a clock read or an elapsed time."""
RESULT = re.compile(r"\.glue\(|\.write\(|plt\.|plot_|display\(|assert ")
"""What a cell that skips validation must not do: glue or write results, draw, assert (recording
a timing in the results file is allowed)."""


def ignored_output_problems(source: str) -> list[str]:
    """Why a cell tagged ``nbval-ignore-output`` may not be: it shows no timing or progress,
    or its output carries a result the prose or the checks rely on."""
    problems = []
    if not (TIMING.search(source) or "tqdm" in source or "progress=True" in source):
        problems.append("prints no timing or progress bar")
    problems += [f"{match.group(0).strip()!r} makes a result" for match in RESULT.finditer(source)]
    return problems


def test_ignored_output_rule_tells_timing_cells_from_result_cells():
    assert ignored_output_problems('history = train(x)\nprint(f"{history.seconds:.1f} s elapsed")') == []
    assert ignored_output_problems("for _ in tqdm(range(3)):\n    pass") == []
    assert ignored_output_problems('model = train(x)\nprint("trained")') == ["prints no timing or progress bar"]
    assert ignored_output_problems('t = time.perf_counter()\nresults.glue(mse=m)') == ["'.glue(' makes a result"]
    assert ignored_output_problems('print(f"{s} s elapsed")\nplt.show()') == ["'plt.' makes a result"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_cells_skipping_validation_only_time_or_show_progress(chapter):
    """A cell tagged ``nbval-ignore-output`` escapes the determinism check, so it may print
    timings and progress bars only: no glued or written results, figures or checks."""
    for cell in _notebook(chapter).cells:
        if "nbval-ignore-output" in cell.metadata.get("tags", []):
            problems = ignored_output_problems(cell.source)
            assert not problems, f"{chapter.source}: a cell skipping validation {problems}:\n{cell.source}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_every_exercise_has_a_solution_that_runs(chapter):
    """Every numbered exercise under an "Exercises" heading is followed, before the next
    exercise or heading, by a code cell tagged ``hide-input`` (its worked solution, folded in
    the book and executed by every profile) that asserts something."""
    cells = _notebook(chapter).cells
    start = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"
                  and re.search(r"^#+ Exercises", c.source, re.M)), None)
    assert start is not None, f"{chapter.source} has no Exercises section"
    exercises, solutions, waiting = 0, 0, False
    for index, cell in enumerate(cells[start:]):
        if cell.cell_type == "markdown":
            text = cell.source
            if index == 0:  # the section starts at its heading
                text = text[re.search(r"^#+ Exercises.*$", text, re.M).end():]
            elif re.search(r"^#+ ", text, re.M):
                break  # the next section
            numbered = re.findall(r"^\d+\. \*\*", text, re.M)
            assert not (waiting and numbered), f"{chapter.source}: exercise {exercises} has no solution cell"
            assert len(numbered) <= 1, f"{chapter.source}: one exercise per markdown cell, so each has its solution"
            exercises += len(numbered)
            waiting = waiting or bool(numbered)
        elif waiting:
            assert "hide-input" in cell.metadata.get("tags", []), \
                f"{chapter.source}: the solution of exercise {exercises} must be tagged hide-input"
            assert "assert " in cell.source, f"{chapter.source}: the solution of exercise {exercises} checks nothing"
            solutions += 1
            waiting = False
    assert not waiting, f"{chapter.source}: exercise {exercises} has no solution cell"
    assert exercises >= 1 and solutions == exercises


def test_config_launches_colab_and_builds_from_executed_copies():
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    for bib in CONFIG["bibtex_bibfiles"]:
        assert (ROOT / bib).is_file()


def test_cited_keys_exist_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{(\w+),", bib))
    texts = [p.read_text() for p in (ROOT / "book").glob("*.md")]
    texts += ["\n".join(c.source for c in _notebook(ch).cells) for ch in CHAPTERS]
    cited = {key.strip() for text in texts for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text)
             for key in group.split(",")}
    assert cited, "no citations found"
    assert cited <= keys, f"cited but missing from references.bib: {sorted(cited - keys)}"
