"""One home per chapter: its budgets (a ``full`` and a ``ci`` preset) and its experiment harness.

Each chapter of the book has a module here, named after its notebook (``01_world_model`` lives
in :mod:`wmbook.chapters.ch01_world_model`); a new ``chNN_name.py`` file is found by its name. A chapter module defines ``PROFILES``, a dict from
profile name to a frozen dataclass holding every budget the chapter reads, and whatever runs the
chapter's experiments. This registry only maps names to modules: it imports a chapter's module
(and so torch and the chapter's models) when that chapter's budget is asked for, never before,
so that ``python -m bookbuild list`` stays instant.

A chapter reads its budget once, in its setup cell::

    config = get_profile("01_world_model", profile)
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from types import ModuleType

PROFILE_NAMES = ("full", "ci")


def _chapter_modules() -> dict[str, str]:
    """Notebook stem -> module, found from the file names here (``chNN_name.py`` -> ``NN_name``)."""
    found = sorted(Path(__file__).parent.glob("ch[0-9][0-9]_*.py"))
    return {path.stem[2:]: f"{__name__}.{path.stem}" for path in found}


# notebook stem -> module holding that chapter's PROFILES and harness
CHAPTER_MODULES: dict[str, str] = _chapter_modules()


def chapter_module(chapter: str) -> ModuleType:
    """The module of ``chapter`` (a notebook stem such as ``"01_world_model"``), imported now."""
    if chapter not in CHAPTER_MODULES:
        raise KeyError(f"no chapter module for {chapter!r}; known chapters: {', '.join(CHAPTER_MODULES)}")
    return importlib.import_module(CHAPTER_MODULES[chapter])


def get_profile(chapter: str, profile: str):
    """The budget of ``chapter`` under ``profile`` (``"full"`` or ``"ci"``)."""
    presets = chapter_module(chapter).PROFILES
    if profile not in presets:
        raise ValueError(f"unknown profile {profile!r} for {chapter}: use one of {', '.join(presets)}")
    return presets[profile]


def describe(config) -> dict[str, object]:
    """A profile as plain JSON values (for printing and results files)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
