"""The book's pipeline: execute chapters with papermill, validate them with nbval, build the
HTML with Jupyter Book 1.

Sources in ``book/`` hold no outputs. ``run`` copies the book's static files into a staging
tree (``_build/stage``) and executes each chapter there, so the executed copies sit where
Jupyter Book expects them; ``validate`` re-executes those copies with nbval (figures included)
and records a hash of each notebook that reproduced its outputs; ``build`` renders the staging
tree, refusing any notebook that was not validated in its current form, and any mix of profiles
or seeds.

``all`` validates chapter N while chapter N+1 executes, and skips a chapter whose inputs (its
source, the package's source, the profile, the seed, the device and the locked versions) have not
changed since it was last executed and validated: the execution cache is a small record of a hash
of those inputs (``_build/stage/.cache.json``), simpler to reason about than jupyter-cache, which
caches per notebook source only and knows nothing of the package the chapters import.

A chapter that fails in ``all``, to execute or to validate, does not stop the others: its
executed copy moves to ``_build/failed`` and an error report (:mod:`bookbuild.error_report`) takes
its place in the staging tree, ``run_report.json`` records the failure, and ``build`` renders the
report as the chapter's page. A failed chapter never enters the execution cache, so the next
``all`` executes it again.
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

from bookbuild import assets, error_report
from wmbook.checkpoint import atomic_write, write_json

STAGE = Path("_build") / "stage"
FAILED = Path("_build") / "failed"  # executed copies of the chapters that failed in `all`
RUN_REPORT = "run_report.json"
VALIDATED = ".validated.json"
CACHE = ".cache.json"
SANITIZE_FILE = Path(__file__).with_name("nbval_sanitize.cfg")
LOCK_FILE = "constraints.txt"
# the line of each chapter's install cell that names the version of wmbook to install
REF_LINE = re.compile(r'^WMBOOK_REF = "[^"]*"', re.M)
STATIC_PATTERNS = ("*.md", "*.bib", "*.png", "*.jpg", "*.svg")


class PipelineError(RuntimeError):
    """A pipeline step failed; the message says which chapter or step, and why."""


class ValidationError(PipelineError):
    """nbval did not reproduce a chapter's outputs; ``report`` is nbval's output, in full."""

    def __init__(self, message: str, report: str):
        super().__init__(message)
        self.report = report


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
    """Environment for chapter kernels: fixed hashing, no display, inline plots, one thread.

    One thread per process: the pipeline runs a validation beside an execution, and two torch
    processes that each spin several threads on two cores run several times slower than the
    same work one after the other.
    """
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # let the kernel use its inline backend
    env.update({"PYTHONHASHSEED": "0", "SDL_VIDEODRIVER": "dummy", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "WMBOOK_THREADS": "1"})
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
    """One chapter's turn in a run: ``seconds`` its execution took, ``ok`` whether it executed
    (and, in ``all``, validated), ``error`` a failure's one-line account."""

    chapter: str
    profile: str
    seconds: float
    ok: bool
    error: str = ""
    cached: bool = False


# -- provenance: which commit produced a page -----------------------------------------------


def source_commit(root: Path) -> str | None:
    """The git commit of the book at ``root``, or None outside a git checkout."""
    try:
        completed = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                   text=True, check=False)
    except OSError:  # no git at all
        return None
    commit = completed.stdout.strip()
    return commit if completed.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def pinned_source(path: Path, commit: str | None):
    """The chapter at ``path`` with its install cell pinned to ``commit``, so that a reader who
    copies that cell installs the version of ``wmbook`` that produced the page."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    if commit:
        for cell in notebook.cells:
            if cell.cell_type == "code" and REF_LINE.search(cell.source):
                cell.source = REF_LINE.sub(f'WMBOOK_REF = "{commit}"', cell.source, count=1)
    return notebook


def hide_injected_parameters(path: Path) -> None:
    """Tag the cell papermill injects (the run's parameters) ``remove-cell``, so that the page
    shows the parameters cell once."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    with atomic_write(path, "w") as handle:
        nbformat.write(notebook, handle)


def run_chapter(root: Path, chapter: Chapter, stage: Path, profile: str, seed: int, device: str,
                verbose: bool = False) -> ChapterRun:
    """Execute one chapter with papermill into ``stage``; a failure names the cell that failed.

    The executed copy, partial if the chapter failed, replaces the one an earlier run left.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output = stage / chapter.source
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)  # a failure before papermill writes must not leave an old copy
    started = time.perf_counter()
    try:
        with _environment(kernel_environment()):
            papermill.execute_notebook(
                pinned_source(root / chapter.source, source_commit(root)), str(output),
                parameters={"profile": profile, "seed": seed, "device": device},
                cwd=str(output.parent), kernel_name="python3", progress_bar=False, log_output=verbose,
                # the kernel's own start-up notices are noise here; cell errors still surface
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
    except PapermillExecutionError as error:
        first_line = next((line for line in error.source.splitlines() if line.strip()), "")
        message = (f"chapter {chapter.name} failed in cell {error.cell_index} (execution count "
                   f"{error.exec_count}, starting `{first_line.strip()}`): {error.ename}: "
                   f"{' '.join(error.evalue.split())}")
        return ChapterRun(chapter.name, profile, time.perf_counter() - started, False, message)
    except Exception as error:  # outside any cell: the kernel died, or papermill could not start it
        message = (f"chapter {chapter.name} failed outside a cell: {type(error).__name__}: "
                   f"{' '.join(str(error).split())}")
        return ChapterRun(chapter.name, profile, time.perf_counter() - started, False, message)
    hide_injected_parameters(output)
    return ChapterRun(chapter.name, profile, time.perf_counter() - started, True)


def _read_record(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _report(stage: Path, runs: list[ChapterRun]) -> None:
    """Record ``runs`` in ``run_report.json``, beside the entries of chapters not run now."""
    report = stage / RUN_REPORT
    previous = _read_record(report)
    for r in runs:
        entry = dict(vars(r))
        if r.cached and "seconds" in previous.get(r.chapter, {}):
            # a cache hit executed nothing: the executed copy is still the one whose execution
            # took the seconds recorded then
            entry["seconds"] = previous[r.chapter]["seconds"]
        previous[r.chapter] = entry
    write_json(report, previous)


# -- the execution cache ----------------------------------------------------------------------


def _package_files() -> dict[str, Path]:
    """The source files a chapter's execution depends on, by name: wmbook's, and this package's
    (the kernels' environment, the sanitize rules)."""
    import wmbook

    files = {}
    for package in (Path(wmbook.__file__).resolve().parent, Path(__file__).resolve().parent):
        files.update({str(p.relative_to(package.parent)): p for p in sorted(package.rglob("*"))
                      if p.suffix in (".py", ".cfg") and "__pycache__" not in p.parts})
    return files


def cache_key(root: Path, chapter: Chapter, profile: str, seed: int, device: str) -> str:
    """A hash of everything a chapter's executed copy depends on: its source, every source file
    of the packages, the run's parameters, the locked versions and the Python version."""
    digest = hashlib.sha256()
    lock = root / LOCK_FILE
    inputs = [("source", (root / chapter.source).read_bytes()),
              ("lock", lock.read_bytes() if lock.is_file() else b""),
              ("run", json.dumps([profile, seed, device, sys.version]).encode())]
    inputs += [(name, path.read_bytes()) for name, path in _package_files().items()]
    for name, data in inputs:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def is_cached(root: Path, chapter: Chapter, key: str) -> bool:
    """Whether ``chapter`` was executed and validated with inputs hashing to ``key`` and its
    executed copy is still the one that was validated."""
    stage = root / STAGE
    executed = stage / chapter.source
    entry = _read_record(stage / CACHE).get(str(chapter.source), {})
    validated = _read_record(stage / VALIDATED).get(str(chapter.source))
    return (entry.get("key") == key and executed.is_file() and validated is not None
            and validated == entry.get("digest") == _digest(executed))


def _remember(root: Path, chapter: Chapter, key: str) -> None:
    """Enter an executed and validated chapter in the cache."""
    path = root / STAGE / CACHE
    record = _read_record(path)
    record[str(chapter.source)] = {"key": key, "digest": _digest(root / STAGE / chapter.source)}
    write_json(path, record)
    (root / FAILED / chapter.source).unlink(missing_ok=True)  # an earlier failure's copy


def _forget(root: Path, chapter: Chapter) -> None:
    """Drop a chapter from the cache and from the record of validated copies."""
    for name in (CACHE, VALIDATED):
        path = root / STAGE / name
        record = _read_record(path)
        if record.pop(str(chapter.source), None) is not None:
            write_json(path, record)


# -- run, validate, build -----------------------------------------------------------------------


def run(root: Path, selected: list[Chapter], profile: str, seed: int, device: str,
        verbose: bool = False, log=print) -> list[ChapterRun]:
    """Stage the book and execute ``selected`` chapters; raise, once every chapter has run, if
    any failed (a failed chapter's partial output stays in the staging tree)."""
    stage = root / STAGE
    stage_static(root, stage)
    runs = []
    for chapter in selected:
        log(f"run      {chapter.name} (profile {profile}, seed {seed}) ...")
        result = run_chapter(root, chapter, stage, profile, seed, device, verbose)
        runs.append(result)
        log(f"         {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f} s")
    _report(stage, runs)
    failures = [f"{r.error}\n  partial output kept at {stage / c.source}" if (stage / c.source).is_file()
                else f"{r.error}\n  no output was written" for c, r in zip(selected, runs) if not r.ok]
    if failures:
        raise PipelineError("\n".join(failures))
    return runs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Validation:
    """nbval re-executing one executed chapter in a subprocess; its output goes to a log file."""

    def __init__(self, root: Path, chapter: Chapter):
        self.root, self.chapter = root, chapter
        stage = root / STAGE
        notebook = stage / chapter.source
        if not notebook.is_file():
            raise PipelineError(f"not executed yet (run `python -m bookbuild run` first): {notebook}")
        if error_report.is_report(json.loads(notebook.read_text())):
            raise PipelineError(f"{chapter.name} failed when last run, and its staged copy is its error "
                                f"report: run it again first (`python -m bookbuild run -c {chapter.name}`)")
        self.log_path = stage / chapter.source.with_suffix(".nbval.log")
        command = [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
                   "--nbval-sanitize-with", str(SANITIZE_FILE), "-p", "bookbuild.nbval_figures",
                   "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(stage), "-q",
                   "--color=no", str(notebook)]
        self.digest = _digest(notebook)  # what is being validated
        self.started = time.perf_counter()
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=stage, env=kernel_environment(),
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def finish(self, log=print) -> float:
        """Wait for nbval; record the validated copy, or raise :class:`ValidationError`."""
        code = self.process.wait()
        self._log.close()
        report = self.log_path.read_text()
        # pytest's own duration: the process may have ended long before this wait
        durations = re.findall(r" in ([0-9.]+)s", report)
        seconds = float(durations[-1]) if durations else time.perf_counter() - self.started
        name = self.chapter.name
        if code != 0:
            raise ValidationError(f"nbval: {name} did not reproduce its outputs (full report in "
                                  f"{self.log_path}):\n{report[-6000:]}", report)
        path = self.root / STAGE / VALIDATED
        record = _read_record(path)
        record[str(self.chapter.source)] = self.digest
        write_json(path, record)
        log(f"validate {name}: reproduced in {seconds:.1f} s")
        return seconds


def validate(root: Path, selected: list[Chapter], log=print) -> None:
    """Re-execute the executed copies with nbval; they must reproduce their own outputs,
    figures included."""
    for chapter in selected:
        log(f"validate {chapter.name} with nbval ...")
        _Validation(root, chapter).finish(log)


def keep_failure(root: Path, chapter: Chapter, profile: str, seed: int, error: str = "",
                 nbval_report: str | None = None) -> error_report.Failure:
    """Put an error report in place of a chapter that failed, and keep what it produced.

    The executed copy (partial after a failed execution, whole after a failed validation) moves
    to ``_build/failed/<source>``; the report (:func:`bookbuild.error_report.report_notebook`)
    takes its place in the staging tree; the chapter leaves the cache and the record of
    validated copies, so the next run executes it again. ``error`` is an execution failure's
    one-line account (from :func:`run_chapter`); ``nbval_report`` is nbval's output after a
    failed validation.
    """
    import nbformat

    stage = root / STAGE
    executed, kept = stage / chapter.source, root / FAILED / chapter.source
    kept.parent.mkdir(parents=True, exist_ok=True)
    notebook = None
    if executed.is_file():
        os.replace(executed, kept)
        notebook = json.loads(kept.read_text())
    else:
        kept.unlink(missing_ok=True)  # an earlier failure's copy
    where = str(kept.relative_to(root)) if notebook is not None else ""
    if nbval_report is None:
        failure = error_report.execution_failure(chapter.name, notebook, error, profile, seed, where)
    else:
        log_path = (stage / chapter.source.with_suffix(".nbval.log")).relative_to(root)
        failure = error_report.validation_failure(chapter.name, notebook, nbval_report, profile, seed,
                                                  where, str(log_path))
    source = json.loads((root / chapter.source).read_text())
    with atomic_write(executed, "w") as handle:
        nbformat.write(error_report.report_notebook(failure, source, notebook), handle)
    _forget(root, chapter)
    return failure


def run_and_validate(root: Path, selected: list[Chapter], profile: str, seed: int, device: str,
                     verbose: bool = False, force: bool = False, log=print) -> list[ChapterRun]:
    """Execute and validate ``selected``, validating chapter N while chapter N+1 executes.

    A chapter whose inputs are unchanged since it was last executed and validated (see
    :func:`cache_key`) is skipped, unless ``force``. A chapter that fails to execute or to
    validate does not stop the others: :func:`keep_failure` puts its error report in its place,
    and its run is returned with ``ok`` false. Only chapters that executed and validated enter
    the cache.
    """
    stage = root / STAGE
    stage_static(root, stage)
    runs, pending = [], None

    def settle(validation: _Validation, key: str, result: ChapterRun) -> None:
        """Wait for a chapter's validation; cache the chapter, or report its failure."""
        try:
            validation.finish(log)
        except ValidationError as error:
            failure = keep_failure(root, validation.chapter, profile, seed, nbval_report=error.report)
            result.ok, result.error = False, failure.error
            log(f"validate {validation.chapter.name}: FAILED, {failure.error} (full report in "
                f"{validation.log_path})")
        else:
            _remember(root, validation.chapter, key)

    try:
        for chapter in selected:
            key = cache_key(root, chapter, profile, seed, device)
            if not force and is_cached(root, chapter, key):
                log(f"cached   {chapter.name}: unchanged since it was executed and validated")
                runs.append(ChapterRun(chapter.name, profile, 0.0, True, cached=True))
                continue
            log(f"run      {chapter.name} (profile {profile}, seed {seed}) ...")
            result = run_chapter(root, chapter, stage, profile, seed, device, verbose)
            runs.append(result)
            log(f"         {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f} s")
            if not result.ok:
                log(f"         {result.error}")
                keep_failure(root, chapter, profile, seed, error=result.error)
                continue
            if pending is not None:  # at most one validation beside one execution
                settle(*pending)
            pending = (_Validation(root, chapter), key, result)
        if pending is not None:
            settle(*pending)
            pending = None
    finally:
        if pending is not None and pending[0].process.poll() is None:
            pending[0].process.kill()
        _report(stage, runs)
    return runs


def summary(runs: list[ChapterRun]) -> str:
    """A table of ``runs``: each chapter ok, cached or FAILED, the seconds its execution took,
    and a failure's one-line error."""
    width = max((len(r.chapter) for r in runs), default=0)
    lines = ["summary:"]
    for r in runs:
        state = "cached" if r.cached else "ok" if r.ok else "FAILED"
        seconds = "" if r.cached else f"{r.seconds:7.1f} s"
        error = r.error.splitlines()[0] if r.error else ""
        lines.append(f"  {r.chapter:<{width}}  {state:<6}  {seconds:>9}  {error}".rstrip())
    if not all(r.ok for r in runs):
        lines.append(f"  a failed chapter's page shows its error report; what it executed is kept in "
                     f"{FAILED}/")
    return "\n".join(lines)


def error_reports(root: Path, selected: list[Chapter]) -> list[str]:
    """The chapters of ``selected`` whose staged page is an error report, written when their
    last run failed (as ``run_report.json`` records)."""
    stage = root / STAGE
    runs = _read_record(stage / RUN_REPORT)
    return [c.name for c in selected
            if runs.get(c.name, {}).get("ok") is False and (stage / c.source).is_file()
            and error_report.is_report(json.loads((stage / c.source).read_text()))]


def run_parameters(root: Path, selected: list[Chapter]) -> dict[str, dict]:
    """The parameters (profile, seed, device) papermill injected into each executed copy."""
    import nbformat

    found = {}
    for chapter in selected:
        notebook = nbformat.read(root / STAGE / chapter.source, as_version=4)
        found[chapter.name] = dict(notebook.metadata.get("papermill", {}).get("parameters", {}))
    return found


def check_one_run(root: Path, selected: list[Chapter]) -> None:
    """Refuse a book whose chapters were executed with different profiles or seeds."""
    parameters = run_parameters(root, selected)
    kinds = {(p.get("profile"), p.get("seed")) for p in parameters.values()}
    if len(kinds) > 1:
        listing = "; ".join(f"{name}: profile {p.get('profile')}, seed {p.get('seed')}"
                            for name, p in parameters.items())
        raise PipelineError("the chapters were executed with different profiles or seeds "
                            f"({listing}); run them all again with one profile and one seed, "
                            "e.g. `python -m bookbuild all --profile full --seed 0`")


def stage_config(root: Path, stage: Path, commit: str | None) -> None:
    """Point the staged book's launch buttons at ``commit``, the version that produced it."""
    if not commit:
        return
    config_path = stage / "_config.yml"
    config = yaml.safe_load(config_path.read_text())
    config.setdefault("repository", {})["branch"] = commit
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def build(root: Path, log=print) -> Path:
    """Render the staged, validated chapters into ``_build/html`` (warnings are errors).

    A chapter whose last run failed in ``all`` is rendered as its error report (see
    :func:`error_reports`); any other chapter must be validated in its current form.
    """
    stage = root / STAGE
    all_chapters = chapters(root)
    record = _read_record(stage / VALIDATED)
    failed = error_reports(root, all_chapters)
    stale = [c.name for c in all_chapters if c.name not in failed and (
             not (stage / c.source).is_file() or record.get(str(c.source)) != _digest(stage / c.source))]
    if stale:
        raise PipelineError(f"not executed and validated in their current form: {', '.join(stale)}; "
                            "run `python -m bookbuild run` and `python -m bookbuild validate` first")
    check_one_run(root, all_chapters)
    stage_static(root, stage)  # text pages may have changed since the run
    stage_config(root, stage, source_commit(root))
    try:
        assets.stage_mathjax(root, stage)  # served with the pages, so equations render offline
    except assets.AssetError as error:
        raise PipelineError(str(error)) from None
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    executable = str(jupyter_book) if jupyter_book.exists() else shutil.which("jupyter-book")
    if executable is None:
        raise PipelineError("jupyter-book is not installed: pip install -e '.[book]'")
    log("build    HTML with Jupyter Book ..."
        + (f" (error reports in place of {', '.join(failed)})" if failed else ""))
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
