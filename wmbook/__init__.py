"""wmbook: the support package of *World Models, a reproducible notebook book*."""

from __future__ import annotations


def _version() -> str:
    """The version, set in one place: ``[project] version`` in pyproject.toml.

    A source tree (a clone, installed editable or not) reads it from the pyproject.toml beside
    the package, so a changed version shows without reinstalling; an installed wheel carries it
    in its metadata.
    """
    import re
    from importlib import metadata
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", pyproject.read_text(), re.M | re.S)
        if project and re.search(r'^name\s*=\s*"wmbook"', project.group(1), re.M):
            found = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M)
            if found:
                return found.group(1)
    try:
        return metadata.version("wmbook")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()
