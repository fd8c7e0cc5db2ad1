"""The book's pipeline: execute chapters with papermill, validate them with nbval, build the
HTML with Jupyter Book 1.

Sources in ``book/`` hold no outputs. ``run`` copies the book's static files into a staging
tree (``_build/stage``) and executes each chapter there, so the executed copies sit where
Jupyter Book expects them; ``validate`` re-executes those copies with nbval and records a hash
of each notebook that reproduced its outputs; ``build`` renders the staging tree, refusing any
notebook that was not validated in its current form.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from wmbook.checkpoint import write_json

STAGE = Path("_build") / "stage"
VALIDATED = ".validated.json"
SANITIZE_FILE = Path(__file__).with_name("nbval_sanitize.cfg")
STATIC_PATTERNS = ("*.md", "*.bib", "*.png", "*.jpg", "*.svg")


class PipelineError(RuntimeError):
    """A pipeline step failed; the message says which chapter or step, and why."""


@dataclass(frozen=True)
class Chapter:
    name: str    # notebook stem, e.g. "01_world_model"
    source: Path  # path relative to the book root, e.g. book/01_world_model.ipynb

    @property
    def number(self) -> str:
        match = re.match(r"(\d+)", self.name)
        return match.group(1) if match else ""


def find_root(start: Path | None = None) -> Path:
    """The book's root: the nearest folder at or above ``start`` holding ``_toc.yml``."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "_toc.yml").is_file() and (folder / "_config.yml").is_file():
            return folder
    raise PipelineError(f"no _toc.yml and _config.yml at or above {start}: run this from the book's repository")


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        if "root" in node:
            files.append(node["root"])
        for value in node.values():
            if isinstance(value, (list, dict)):
                files += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += _toc_files(item)
    return files


def chapters(root: Path) -> list[Chapter]:
    """The notebooks listed in ``_toc.yml``, in reading order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    found = []
    for entry in _toc_files(toc):
        path = Path(entry)
        notebook = path if path.suffix == ".ipynb" else path.with_suffix(".ipynb")
        if (root / notebook).is_file():
            found.append(Chapter(notebook.stem, notebook))
        elif not (root / path.with_suffix(".md")).is_file() and not (root / path).is_file():
            raise PipelineError(f"_toc.yml lists {entry!r}, but no such page exists")
    return found


def select(available: list[Chapter], wanted: list[str] | None) -> list[Chapter]:
    """Chapters matching ``wanted`` by full name, number (``1``, ``01``) or name without number."""
    if not wanted:
        return available
    picked = []
    for token in wanted:
        matches = [c for c in available if token in (c.name, c.number, c.number.lstrip("0"),
                                                     c.name.split("_", 1)[-1])]
        if not matches:
            names = ", ".join(c.name for c in available) or "none"
            raise PipelineError(f"unknown chapter {token!r}; the chapters are: {names}")
        picked += [c for c in matches if c not in picked]
    return picked


def stage_static(root: Path, stage: Path) -> None:
    """Copy config, table of contents, text pages, bibliography and images into ``stage``."""
    stage.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    for folder in ("book", "imgs"):
        if not (root / folder).is_dir():
            continue
        for pattern in STATIC_PATTERNS:
            for path in (root / folder).rglob(pattern):
                if "_build" in path.parts or ".ipynb_checkpoints" in path.parts:
                    continue
                target = stage / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def kernel_environment() -> dict[str, str]:
    """Environment for chapter kernels: fixed hashing, no display, inline plots."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # let the kernel use its inline backend
    env.update({"PYTHONHASHSEED": "0", "SDL_VIDEODRIVER": "dummy"})
    return env


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    """Run the body with ``os.environ`` replaced by ``env`` (papermill's kernels inherit it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class ChapterRun:
    chapter: str
    profile: str
    seconds: float
    ok: bool
    error: str = ""


def run_chapter(root: Path, chapter: Chapter, stage: Path, profile: str, seed: int, device: str,
                verbose: bool = False) -> ChapterRun:
    """Execute one chapter with papermill into ``stage``; a failure names the cell that failed."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output = stage / chapter.source
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        with _environment(kernel_environment()):
            papermill.execute_notebook(
                str(root / chapter.source), str(output),
                parameters={"profile": profile, "seed": seed, "device": device},
                cwd=str(output.parent), kernel_name="python3", progress_bar=False, log_output=verbose,
                # the kernel's own start-up notices are noise here; cell errors still surface
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
    except PapermillExecutionError as error:
        first_line = next((line for line in error.source.splitlines() if line.strip()), "")
        message = (f"chapter {chapter.name} failed in cell {error.cell_index} (execution count "
                   f"{error.exec_count}, starting `{first_line.strip()}`): {error.ename}: "
                   f"{error.evalue}\n  partial output kept at {output}")
        return ChapterRun(chapter.name, profile, time.perf_counter() - started, False, message)
    return ChapterRun(chapter.name, profile, time.perf_counter() - started, True)


def run(root: Path, selected: list[Chapter], profile: str, seed: int, device: str,
        verbose: bool = False, log=print) -> list[ChapterRun]:
    """Stage the book and execute ``selected`` chapters; raise if any failed."""
    stage = root / STAGE
    stage_static(root, stage)
    runs = []
    for chapter in selected:
        log(f"run      {chapter.name} (profile {profile}, seed {seed}) ...")
        result = run_chapter(root, chapter, stage, profile, seed, device, verbose)
        runs.append(result)
        log(f"         {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f} s")
    report = stage / "run_report.json"
    previous = json.loads(report.read_text()) if report.is_file() else {}
    previous.update({r.chapter: vars(r) for r in runs})
    write_json(report, previous)
    failures = [r.error for r in runs if not r.ok]
    if failures:
        raise PipelineError("\n".join(failures))
    return runs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validate(root: Path, selected: list[Chapter], log=print) -> None:
    """Re-execute the executed copies with nbval; they must reproduce their own outputs."""
    stage = root / STAGE
    notebooks = [stage / c.source for c in selected]
    missing = [str(n) for n in notebooks if not n.is_file()]
    if missing:
        raise PipelineError(f"not executed yet (run `python -m wmbook run` first): {', '.join(missing)}")
    log(f"validate {', '.join(c.name for c in selected)} with nbval ...")
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
               "--nbval-sanitize-with", str(SANITIZE_FILE), "-p", "no:cacheprovider",
               "-o", "addopts=", "--rootdir", str(stage), "-q", *map(str, notebooks)]
    completed = subprocess.run(command, cwd=stage, env=kernel_environment())
    if completed.returncode != 0:
        raise PipelineError("nbval: the re-executed chapters did not reproduce their outputs "
                            "(see the cell diffs above)")
    record_path = stage / VALIDATED
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.update({str(c.source): _digest(stage / c.source) for c in selected})
    write_json(record_path, record)
    log(f"         ok in {time.perf_counter() - started:.1f} s")


def build(root: Path, log=print) -> Path:
    """Render the staged, validated chapters into ``_build/html`` (warnings are errors)."""
    stage = root / STAGE
    all_chapters = chapters(root)
    record_path = stage / VALIDATED
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    stale = [c.name for c in all_chapters
             if not (stage / c.source).is_file() or record.get(str(c.source)) != _digest(stage / c.source)]
    if stale:
        raise PipelineError(f"not executed and validated in their current form: {', '.join(stale)}; "
                            "run `python -m wmbook run` and `python -m wmbook validate` first")
    stage_static(root, stage)  # text pages may have changed since the run
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    executable = str(jupyter_book) if jupyter_book.exists() else shutil.which("jupyter-book")
    if executable is None:
        raise PipelineError("jupyter-book is not installed: pip install -e '.[book]'")
    log("build    HTML with Jupyter Book ...")
    started = time.perf_counter()
    html = root / "_build" / "html"
    if html.exists():
        shutil.rmtree(html)
    command = [executable, "build", str(stage), "--path-output", str(root), "-W", "-n", "--keep-going", "--all", "-q"]
    completed = subprocess.run(command, cwd=root, env=kernel_environment())
    if completed.returncode != 0:
        raise PipelineError("Jupyter Book reported warnings or errors (see above)")
    log(f"         ok in {time.perf_counter() - started:.1f} s: open {html / 'index.html'}")
    return html / "index.html"
