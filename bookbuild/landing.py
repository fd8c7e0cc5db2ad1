"""The book's landing page: one card per chapter, built from what the chapter's run produced.

A Sphinx extension (listed under ``sphinx: config: extensions`` in ``_config.yml``) with one
directive. In ``book/intro.md`` each chapter has a card::

    ```{chapter-card} 01_world_model
    :figure: plot_learning_curves(
    :alt: Training and validation loss of the world model by epoch.
    :time: 45 s
    :headline: Held-out next-state MSE {next_state_mse:.1e}; termination F1 {done_f1:.3f}.

    What the chapter teaches, in a sentence or two of Markdown.
    ```

The card shows the chapter's title (a link to it), the first PNG figure output by the code cell
whose source contains ``:figure:``, with ``:alt:`` as its alternative text, what it teaches,
``:time:`` (its execution time measured on a 2-core CPU), and ``:headline:`` formatted with the
values in the chapter's ``<chapter>.results.json`` (Python's format syntax), so every number on
the landing page comes from the run that made the book. Both files are read from the executed
copies beside the page, in the staged book that Jupyter Book renders. A missing notebook,
figure, results file or value is a build error that names it.

A chapter whose last run failed has an error report in place of its executed copy (see
:mod:`bookbuild.error_report`); its card says so and links to the report, with no figure or headline.
"""

from __future__ import annotations

import base64
import json
import string
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from bookbuild.error_report import is_report

FULL_PROFILE = "full"


class LandingError(ValueError):
    """A card names a chapter, figure or value the executed book does not have."""


def chapter_figure(notebook: dict, marker: str, chapter: str) -> str:
    """The first PNG (base64) output by the first code cell whose source contains ``marker``."""
    for cell in notebook.get("cells", []):
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") != "code" or marker not in source:
            continue
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                return "".join(png).replace("\n", "")
        raise LandingError(f"{chapter}: the cell containing {marker!r} shows no PNG figure")
    raise LandingError(f"{chapter}: no code cell contains {marker!r} (the card's :figure:)")


def chapter_title(notebook: dict, chapter: str) -> str:
    """The text of the notebook's first ``# `` heading."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise LandingError(f"{chapter}: the notebook has no '# ' title")


def headline(template: str, results: dict, chapter: str) -> str:
    """``template`` formatted with the values of a results file; an unknown name is an error."""
    values = results.get("results", {})
    names = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    missing = sorted({name.split(".")[0].split("[")[0] for name in names} - set(values))
    if missing:
        raise LandingError(f"{chapter}: the headline names {', '.join(missing)}, which its results file "
                           f"lacks (it has: {', '.join(sorted(values))})")
    return template.format_map(values)


class ChapterCard(SphinxDirective):
    """``{chapter-card} NOTEBOOK_STEM`` with :figure:, :alt:, :time:, :headline: and a body."""

    required_arguments = 1
    has_content = True
    option_spec = {"figure": directives.unchanged_required, "alt": directives.unchanged_required,
                   "time": directives.unchanged_required, "headline": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        chapter = self.arguments[0]
        missing = sorted({"figure", "alt", "time", "headline"} - set(self.options))
        if missing:
            raise self.error(f"chapter-card {chapter}: missing option(s) {', '.join(missing)}")
        if not self.content:
            raise self.error(f"chapter-card {chapter}: say what the chapter teaches in its body")
        here = Path(self.env.doc2path(self.env.docname)).parent
        notebook = json.loads(self.read(chapter, here / f"{chapter}.ipynb"))
        if is_report(notebook):
            return self.failed_card(chapter, notebook)
        try:
            results = json.loads(self.read(chapter, here / f"{chapter}.results.json"))
            png = chapter_figure(notebook, self.options["figure"], chapter)
            title = chapter_title(notebook, chapter)
            text = headline(self.options["headline"], results, chapter)
        except LandingError as error:
            raise self.error(str(error)) from None
        base64.b64decode(png, validate=True)  # a corrupt output fails here, not in the browser
        profile = results.get("profile", "?")
        budget = "" if profile == FULL_PROFILE else f" (this build ran the `{profile}` profile's tiny budget)"
        alt = self.options["alt"].replace("\n", " ")
        markdown = [
            f"**{{doc}}`{title} <{chapter}>`**",
            "",
            f":::{{image}} data:image/png;base64,{png}",
            f":alt: {alt}",
            ":class: chapter-card-figure",
            ":::",
            "",
            *self.content,
            "",
            f"*Headline:* {text.rstrip('.')}{budget}.",
            "",
            f"*Time:* {self.options['time']} to execute on a 2-core CPU (profile `{FULL_PROFILE}`).",
        ]
        return self.card(chapter, markdown)

    def read(self, chapter: str, path: Path) -> str:
        """The text of a file the card is built from; the page is rebuilt when it changes."""
        if not path.is_file():
            raise self.error(f"chapter-card {chapter}: {path.name} is not in the built book "
                             "(is the chapter executed and listed in _toc.yml?)")
        self.env.note_dependency(str(path))
        return path.read_text()

    def failed_card(self, chapter: str, report: dict) -> list[nodes.Node]:
        """The card of a chapter whose page is an error report: its title, what it teaches, and
        that it failed; no figure, headline or time."""
        try:
            title = chapter_title(report, chapter)
        except LandingError as error:
            raise self.error(str(error)) from None
        markdown = [
            f"**{{doc}}`{title} <{chapter}>`**",
            "",
            *self.content,
            "",
            "*This chapter failed when it was last run:* its page shows the error report.",
        ]
        return self.card(chapter, markdown)

    def card(self, chapter: str, markdown: list[str]) -> list[nodes.Node]:
        """``markdown`` parsed into the chapter's card container."""
        card = nodes.container(classes=["chapter-card"], ids=[f"card-{chapter.replace('_', '-')}"])
        self.state.nested_parse(StringList(markdown), self.content_offset, card)
        return [card]


def setup(app) -> dict:
    app.add_directive("chapter-card", ChapterCard)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
