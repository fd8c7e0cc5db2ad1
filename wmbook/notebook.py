"""Helpers for the chapter notebooks: one setup call, show real source, glue results, stamp the
environment."""

from __future__ import annotations

import inspect
import os
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from wmbook.checkpoint import write_json
from wmbook.device import environment_stamp, format_stamp, pick_device, seed_everything, set_threads

THREADS_VARIABLE = "WMBOOK_THREADS"  # set by the pipeline, which may run chapters side by side


def show_source(obj: Any, start: str | None = None, stop: str | None = None) -> None:
    """Display the source of a function, method or class from ``wmbook`` as a code block.

    The book shows the code that runs, so text and code cannot drift apart. With ``start``,
    the listing begins at the first line containing that text (to skip a long docstring);
    with ``stop``, it ends just before the first later line containing that text.
    """
    lines = textwrap.dedent(inspect.getsource(obj)).splitlines()

    def find(text: str, after: int) -> int:
        for i in range(after, len(lines)):
            if text in lines[i]:
                return i
        raise ValueError(f"{text!r} does not occur in the source of {obj.__qualname__}")

    first = find(start, 0) if start is not None else 0
    last = find(stop, first + 1) if stop is not None else len(lines)
    source = textwrap.dedent("\n".join(lines[first:last]))
    where = f"{obj.__module__}.{obj.__qualname__}"
    display(Markdown(f"`{where}`\n\n```python\n{source.rstrip()}\n```"))


class Results:
    """The headline numbers of a chapter: glued into its prose and written to a JSON file.

    ``glue(name=value, ...)`` makes each value available to the chapter's text through MyST-NB's
    ``{glue:text}`` role and records it; ``record(name=value, ...)`` only records; ``write(path)``
    saves every recorded value with the chapter, profile, seed and environment stamp.
    """

    def __init__(self, chapter: str, profile: str, seed: int, device):
        self.meta = {"chapter": chapter, "profile": profile, "seed": seed,
                     "environment": environment_stamp(device)}
        self.values: dict[str, Any] = {}

    def glue(self, **values: Any) -> None:
        """Record each value (a number or a string) under its name and glue it for the prose:
        ``results.glue(best_epoch=epoch, best_val_loss=loss)``.

        Returns nothing, so a call at the end of a cell never prints.
        """
        try:
            from myst_nb import glue
        except ImportError:  # e.g. on Colab, where the book's build tools are not installed
            glue = None
        for name, value in values.items():
            if hasattr(value, "item"):  # NumPy/torch scalars: glue plain Python numbers
                count = value.numel() if hasattr(value, "numel") else np.size(value)
                if count != 1:
                    raise ValueError(f"glue {name!r}: expected a scalar, got shape {tuple(value.shape)}")
                value = value.item()
            self.values[name] = value
            if glue is not None:
                glue(name, value, display=False)

    def record(self, **values: Any) -> None:
        """Keep each value in the results file without gluing it (e.g. a wall-clock time)."""
        self.values.update({name: value.item() if hasattr(value, "item") else value
                            for name, value in values.items()})

    def write(self, path: str | Path) -> Path:
        write_json(path, {**self.meta, "results": self.values})
        return Path(path)


def print_stamp(device) -> None:
    """Print what produced this chapter's numbers (device, versions, threads)."""
    print(format_stamp(environment_stamp(device)))


def interactive_figure(draw, **controls: widgets.ValueWidget) -> None:
    """Show ``draw(**values)`` as a figure, with ``controls`` that redraw it in a live kernel.

    The figure for the controls' initial values is an ordinary output, so a static page (the
    rendered book) still shows a meaningful picture; in Jupyter or Colab, moving a control
    replaces that figure in place.
    """
    def values():
        return {name: control.value for name, control in controls.items()}

    display(widgets.HBox(list(controls.values())))
    figure = draw(**values())
    handle = display(figure, display_id=True)
    plt.close(figure)

    def redraw(_change) -> None:
        new_figure = draw(**values())
        handle.update(new_figure)
        plt.close(new_figure)

    for control in controls.values():
        control.observe(redraw, names="value")


class ChapterSetup(NamedTuple):
    """What :func:`setup_chapter` hands a chapter: its budget, its device and its results."""

    config: Any
    device: Any  # torch.device
    results: Results


def setup_chapter(chapter: str, profile: str, seed: int, device: str = "auto",
                  threads: int | None = None) -> ChapterSetup:
    """The first code cell of every chapter, written once.

    Reads the chapter's budget for ``profile``, picks the device, fixes torch's thread count
    (``threads``; else the ``WMBOOK_THREADS`` environment variable, which the pipeline sets to 1
    because it runs chapters side by side; else :func:`~wmbook.device.set_threads`'s default),
    seeds every generator, switches figures to PNG in the book's style, and prints the
    environment stamp and the budget::

        config, device, results = setup_chapter("01_world_model", profile, seed, device)
    """
    from wmbook.chapters import describe, get_profile
    from wmbook.plotting import use_book_style

    config = get_profile(chapter, profile)
    device = pick_device(device)
    if threads is None and os.environ.get(THREADS_VARIABLE):
        value = os.environ[THREADS_VARIABLE]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_VARIABLE} must be a positive integer, got {value!r}")
        threads = int(value)
    set_threads(threads)
    seed_everything(seed)
    use_book_style()
    _png_figures()
    results = Results(chapter, profile, seed, device)
    print_stamp(device)
    print(f"profile        : {profile}, seed {seed}")
    print(describe(config))
    return ChapterSetup(config, device, results)


def _png_figures() -> None:
    """Inline figures as PNG only: SVG output carries a date, so it would differ between runs."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("config", "InlineBackend.figure_formats = ['png']")
