"""constraints.txt locks the whole dependency set that `make` installs, transitive packages
included, so that a build next month resolves the same versions."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("book", "test", "bench")  # what the Makefile installs: -e ".[book,test,bench]"


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def installed_closure() -> dict[str, str]:
    """Every distribution wmbook[book,test,bench] pulls in, with its installed version."""
    found: dict[str, str] = {}
    todo = [(canonicalize_name("wmbook"), set(EXTRAS))]
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            child = canonicalize_name(requirement.name)
            if child not in found:
                found[child] = metadata.version(child)
                todo.append((child, set(requirement.extras)))
    return found


def test_every_package_make_installs_is_pinned_at_its_installed_version():
    pins, installed = locked_versions(), installed_closure()
    assert len(installed) > 50  # the book's tools alone pull in dozens of packages
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"installed but not locked in constraints.txt (run `make lock`): {unpinned}"
    differ = {name: (pins[name], version) for name, version in installed.items()
              if pins[name].split("+")[0] != version.split("+")[0]}
    assert not differ, f"constraints.txt pins differ from the installed versions: {differ}"
