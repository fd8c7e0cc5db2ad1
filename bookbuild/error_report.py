"""Error reports: the page a chapter that failed gets in the book in place of its executed copy.

When ``python -m bookbuild all`` cannot execute a chapter, or nbval finds that the chapter does not
reproduce its outputs, the pipeline keeps the executed copy (partial or whole) under
``_build/failed/`` and writes a small notebook at the chapter's place in the staged book. It has
the chapter's file name and title, so the table of contents, the links to the chapter and its
launch buttons still work, and it defines the chapter's MyST labels, so references to them from
other pages resolve (to the report). It says which step failed and shows the failed cell (its
index and source), the error with its traceback or nbval's report, the chapter's environment
stamp when the executed copy printed one, the profile and the seed, and where the executed copy
was kept. Its metadata carries :data:`REPORT_KEY`, by which the build and the landing page's
chapter cards recognise it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nbformat import NotebookNode

REPORT_KEY = "wmbook_error_report"  # notebook metadata entry that marks an error report
# papermill inserts markdown cells with this tag into a notebook that failed (a red banner at
# the top, an anchor before the failed cell); its cell indices do not count them
PAPERMILL_MARKER = "papermill-error-cell-tag"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# a line of wmbook.device.format_stamp: "key : value", keys left-aligned
STAMP_LINE = re.compile(r"^[a-z][\w ]*? +: ")
# MyST targets, "(label)=", and the ":name:" option of a directive
LABELS = (re.compile(r"^\(([^()\s]+)\)=\s*$", re.M), re.compile(r"^:name:\s*(\S+)\s*$", re.M))
DETAIL_CHARS = 8000  # the tail of a traceback or of nbval's report that the page shows
# how the page names each step that can fail, and the executed copy it leaves
STEPS = {"execution": "executing it with papermill", "validation": "validating it with nbval"}
KEPT = {"execution": "Executed notebook, as far as it ran", "validation": "Executed notebook"}


@dataclass(frozen=True)
class Failure:
    """What went wrong in one chapter, as its report page shows it.

    ``cell_index`` counts the cells of the executed copy as papermill's error message does (the
    injected parameters cell included, papermill's own marker cells not); it is None when no
    cell is to blame (the kernel died, or papermill could not start it). ``kept`` and ``log``
    are paths relative to the book's root ("" when there is none).
    """

    chapter: str                # notebook stem, e.g. "01_world_model"
    step: str                   # "execution" (papermill) or "validation" (nbval)
    error: str                  # one line: the exception's name and message, or what nbval found
    detail: str                 # the traceback, or nbval's report on the cell, as plain text
    cell_index: int | None
    cell_source: str
    execution_count: int | None
    stamp: str | None           # the environment stamp printed by the chapter, if it got that far
    profile: str
    seed: int
    kept: str                   # where the executed copy was kept
    log: str = ""               # nbval's full report (validation only)


def plain(text: str) -> str:
    """``text`` without the ANSI colour codes of Jupyter tracebacks and pytest reports."""
    return ANSI.sub("", text)


def _tail(text: str, limit: int = DETAIL_CHARS) -> str:
    text = text.strip("\n")
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _cells_without_markers(notebook: Mapping) -> list[Mapping]:
    return [cell for cell in notebook.get("cells", [])
            if PAPERMILL_MARKER not in cell.get("metadata", {}).get("tags", [])]


def stamp_text(notebook: Mapping | None) -> str | None:
    """The environment stamp a chapter printed, as text, or None when no output holds one.

    The stamp is the run of ``key : value`` lines, starting at ``device``, that
    :func:`wmbook.device.format_stamp` prints in the chapter's setup cell (with the
    ``profile`` line after it).
    """
    for cell in (notebook or {}).get("cells", []):
        for output in cell.get("outputs", []):
            if output.get("output_type") != "stream":
                continue
            lines = plain("".join(output.get("text", ""))).splitlines()
            start = next((i for i, line in enumerate(lines) if re.match(r"^device +: ", line)), None)
            if start is None:
                continue
            end = start
            while end < len(lines) and STAMP_LINE.match(lines[end]):
                end += 1
            return "\n".join(lines[start:end])
    return None


def execution_failure(chapter: str, notebook: Mapping | None, error: str, profile: str, seed: int,
                      kept: str) -> Failure:
    """The failure of a chapter that papermill stopped; ``notebook`` is its partial output (None
    when papermill wrote none) and ``error`` the pipeline's one-line account of it, which stands
    for the error when no cell is to blame.

    The failed cell is found as papermill finds it: the first code cell with an error output
    (other than a clean ``SystemExit``), or one whose papermill metadata records an exception.
    """
    for index, cell in enumerate(_cells_without_markers(notebook or {})):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"
                  and not (o.get("ename") == "SystemExit" and o.get("evalue") in ("", "0"))]
        if errors or cell.get("metadata", {}).get("papermill", {}).get("exception") is True:
            shown = errors[0] if errors else {"ename": "CellExecutionError", "evalue": "", "traceback": []}
            message = " ".join(plain(shown["evalue"]).split())
            exception = f"{shown['ename']}: {message}" if message else shown["ename"]
            traceback = "\n".join(plain(line) for line in shown.get("traceback", []))
            return Failure(chapter, "execution", exception, _tail(traceback or exception), index,
                           cell.get("source", ""), cell.get("execution_count"), stamp_text(notebook),
                           profile, seed, kept)
    return Failure(chapter, "execution", error, error, None, "", None, stamp_text(notebook), profile, seed,
                   kept)


def validation_failure(chapter: str, notebook: Mapping, report: str, profile: str, seed: int,
                       kept: str, log: str) -> Failure:
    """The failure of a chapter whose outputs nbval did not reproduce; ``notebook`` is the
    executed copy and ``report`` nbval's output (pytest's report, which names each failed cell
    as ``<notebook>::Cell N``, N counting code cells from 0).

    The page shows the first failed cell and nbval's account of the failures.
    """
    report = plain(report)
    numbers = re.findall(r"::Cell (\d+)", report)
    codes = [(i, c) for i, c in enumerate(_cells_without_markers(notebook)) if c.get("cell_type") == "code"]
    index, cell = codes[int(numbers[0])] if numbers and int(numbers[0]) < len(codes) else (None, {})
    reason = re.search(r"^Cell \d+: (.+)$", report, re.M)
    where = f" in cell {index} (nbval's Cell {numbers[0]})" if index is not None else ""
    found = reason.group(1) if reason else "see its report"
    error = f"nbval: {chapter} did not reproduce its outputs{where}: {found}"
    failures = report.split("= FAILURES =", 1)[-1].split("short test summary info", 1)[0]
    return Failure(chapter, "validation", error, _tail(failures.strip("= \n") or report), index,
                   cell.get("source", ""), cell.get("execution_count"), stamp_text(notebook), profile,
                   seed, kept, log)


def _inline_code(text: str) -> str:
    """``text`` (one line) as a Markdown code span, whatever backticks it holds."""
    text = " ".join(text.split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _block(text: str) -> str:
    """``text`` as a fenced plain-text block (no highlighting, so nothing to lex wrongly)."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence}text\n{text}\n{fence}"


def labels(notebook: Mapping) -> list[str]:
    """The MyST labels the markdown cells of ``notebook`` define, in order, each once."""
    found: list[str] = []
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = "".join(cell.get("source", ""))
            for pattern in LABELS:
                found += [label for label in pattern.findall(source) if label not in found]
    return found


def title(notebook: Mapping, default: str) -> str:
    """The text of the first ``# `` heading in the markdown cells of ``notebook``, or ``default``."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return default


def report_notebook(failure: Failure, source: Mapping, executed: Mapping | None = None) -> NotebookNode:
    """The report page of ``failure``: the chapter's title and labels from ``source``, its
    source notebook, and its kernel's description from ``executed``, the executed copy (whose
    ``language_info`` papermill completed), else from ``source``.

    Markdown cells, and the failed cell as an unexecuted code cell (highlighted as the chapter
    highlights it). The metadata holds the run's parameters (which the build checks, as it does
    for every chapter) and, under :data:`REPORT_KEY`, the failure itself.
    """
    import nbformat  # here, so that the command line's ``list`` and ``--help`` stay quick

    targets = "".join(f"({label})=\n" for label in labels(source))
    facts = [f"- **Error**: {_inline_code(failure.error)}",
             f"- **Profile and seed**: `{failure.profile}`, seed {failure.seed}"]
    if failure.cell_index is not None:
        count = f" (`In [{failure.execution_count}]`)" if failure.execution_count is not None else ""
        facts.append(f"- **Failed cell**: cell {failure.cell_index} of the executed notebook{count}, "
                     "shown below")
    facts.append(f"- **{KEPT[failure.step]}**: "
                 + (f"`{failure.kept}`" if failure.kept else "none was written"))
    if failure.log:
        facts.append(f"- **nbval's full report**: `{failure.log}`")
    cells = [nbformat.v4.new_markdown_cell(
        f"{targets}# {title(source, failure.chapter)}\n\n"
        f"```{{error}}\nThis chapter failed when the book was built ({STEPS[failure.step]}), so this "
        "page shows its error report in place of the chapter. The other chapters were built as usual; "
        "the next `make book` runs this chapter again.\n```\n\n" + "\n".join(facts))]
    if failure.cell_index is not None:
        cells += [nbformat.v4.new_markdown_cell("## The cell that failed"),
                  nbformat.v4.new_code_cell(failure.cell_source)]
    heading = "## Traceback" if failure.step == "execution" else "## nbval's report"
    cells.append(nbformat.v4.new_markdown_cell(f"{heading}\n\n{_block(failure.detail)}"))
    cells.append(nbformat.v4.new_markdown_cell(
        f"## Environment stamp\n\n{_block(failure.stamp)}" if failure.stamp else
        "## Environment stamp\n\nNo output of the executed notebook holds one (the chapter prints it "
        "in its setup cell)."))
    notebook = nbformat.v4.new_notebook(cells=cells)
    kernel = (executed or source).get("metadata", {})
    for key in ("kernelspec", "language_info"):
        if key in kernel:
            notebook.metadata[key] = kernel[key]
    notebook.metadata["papermill"] = {"parameters": {"profile": failure.profile, "seed": failure.seed}}
    notebook.metadata[REPORT_KEY] = asdict(failure)
    return notebook


def is_report(notebook: Mapping) -> bool:
    """Whether ``notebook`` (a notebook's JSON) is an error report written by this module."""
    return REPORT_KEY in notebook.get("metadata", {})
