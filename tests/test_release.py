"""The package as a release: ``python -m build`` makes an sdist and a wheel that twine accepts,
the version is set in one place, and the wheel installed into a fresh virtual environment,
without the repository, imports and runs its command line. Offline throughout: the build uses
the locked setuptools (``--no-isolation``), and the fresh environment gets its third-party
packages from the locked environment (see ``fresh_env``), not from an index."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fresh_env
import wmbook

ROOT = Path(__file__).resolve().parents[1]


def pyproject_version() -> str:
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    return re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M).group(1)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``dist/`` with the sdist and the wheel, built from a copy of the package sources."""
    work = tmp_path_factory.mktemp("release")
    sources = fresh_env.package_sources(work / "src")
    out = work / "dist"
    completed = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel",
                                "--outdir", str(out), str(sources)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"python -m build failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return out


def the(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in dist/, found {[p.name for p in found]}"
    return found[0]


def test_twine_accepts_the_sdist_and_the_wheel(dist):
    files = [the(dist, "wmbook-*.tar.gz"), the(dist, "wmbook-*-py3-none-any.whl")]
    completed = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.count("PASSED") == 2


def test_version_is_set_once_and_agrees_everywhere(dist):
    version = pyproject_version()
    assert wmbook.__version__ == version
    assert the(dist, "wmbook-*.whl").name == f"wmbook-{version}-py3-none-any.whl"
    assert the(dist, "wmbook-*.tar.gz").name == f"wmbook-{version}.tar.gz"
    # nowhere else in the package is a version written out
    for path in (ROOT / "wmbook").rglob("*.py"):
        assert not re.search(r"^__version__\s*=\s*['\"]", path.read_text(), re.M), f"{path} hard-codes a version"
    # the changelog starts at 0.1.0 and has a section for the version being released
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d[^\]]*)\]", changelog, re.M)
    assert released and released[-1] == "0.1.0" and version in released


def test_wheel_holds_the_whole_package_and_nothing_else(dist):
    names = set(zipfile.ZipFile(the(dist, "wmbook-*.whl")).namelist())
    package = {p.relative_to(ROOT).as_posix() for folder in ("wmbook", "bookbuild") for p in (ROOT / folder).rglob("*")
               if p.is_file() and p.suffix in (".py", ".cfg") and "__pycache__" not in p.parts}
    assert package - names == set(), f"missing from the wheel: {sorted(package - names)}"
    assert "bookbuild/nbval_sanitize.cfg" in names  # the pipeline's validate step reads it
    assert all(n.startswith(("wmbook/", "bookbuild/", "wmbook-")) for n in names), sorted(names)


def test_wheel_installs_and_runs_in_a_fresh_environment_without_the_repository(dist, tmp_path):
    view = fresh_env.third_party_view(tmp_path / "view")
    python = fresh_env.create(tmp_path / "env", view)
    work = tmp_path / "elsewhere"  # not the repository: nothing to import from the working folder
    work.mkdir()
    wheel = the(dist, "wmbook-*.whl")
    installed = fresh_env.run(python, "-m", "pip", "install", "--no-index", str(wheel), cwd=work)
    assert installed.returncode == 0, f"pip could not install the wheel offline:\n{installed.stdout}\n{installed.stderr}"
    site = fresh_env.site_packages(tmp_path / "env")
    probe = fresh_env.run(python, "-c", "import sys, wmbook, bookbuild.pipeline as p; "
                          "print(wmbook.__file__); print(wmbook.__version__); "
                          "print(p.SANITIZE_FILE.is_file()); print(*sys.path, sep='\\n')", cwd=work)
    assert probe.returncode == 0, probe.stderr
    location, version, sanitize, *path = probe.stdout.splitlines()
    assert Path(location).is_relative_to(site), f"wmbook imported from {location}, not the installed wheel"
    assert version == pyproject_version() and sanitize == "True"
    assert not any(Path(p).resolve() == ROOT for p in path if p), "the repository is on the path"
    command = fresh_env.run(python.with_name("wmbook"), "--help", cwd=work)
    assert command.returncode == 0, command.stderr
    assert "usage:" in command.stdout and "train-world-model-ppo" in command.stdout and "surgical" in command.stdout
    # and the book's command explains, rather than crashes, outside a book
    outside = fresh_env.run(python, "-m", "bookbuild", "list", cwd=work)
    assert outside.returncode != 0 and "_toc.yml" in outside.stdout + outside.stderr
    assert "Traceback" not in outside.stderr
