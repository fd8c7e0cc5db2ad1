"""Fresh virtual environments for the release and Colab tests, made offline.

A fresh environment gets the locked third-party packages (torch among them) through a *view*
of the project's environment: a folder of links to every entry of its site-packages except
wmbook's own (the package, its metadata, the editable-install hooks, every ``.pth`` file) and
pip's. One ``.pth`` file puts that folder on the fresh interpreter's path; paths listed in a
``.pth`` file are added as they are, so the hooks that would put the repository on the path are
never run. Nothing is downloaded: pip runs with no index and no configuration files. The same view stands for the
packages a Colab runtime brings. (The environment's own pip comes from ``ensurepip``; the old
setuptools that comes with it is removed, so that the locked one is found.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# entries of site-packages that belong to wmbook or to the environment's own tooling
_LEFT_OUT = re.compile(r"^(wmbook([-_.].*)?|__editable__.*|_?pip|pip-.*|.*\.pth|__pycache__)$", re.I)


def third_party_view(target: Path) -> Path:
    """``target`` filled with links to the locked site-packages, without wmbook or pip."""
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir(parents=True, exist_ok=True)
    for entry in site.iterdir():
        if not _LEFT_OUT.match(entry.name):
            (target / entry.name).symlink_to(entry)
    return target


def site_packages(environment: Path) -> Path:
    """The site-packages folder of the virtual environment at ``environment``."""
    found = sorted((environment / "lib").glob("python3*/site-packages"))
    assert len(found) == 1, f"no single site-packages under {environment}: {found}"
    return found[0]


def create(environment: Path, view: Path) -> Path:
    """A new virtual environment at ``environment`` whose path includes ``view``; returns its
    interpreter. Its pip comes from ``ensurepip``, offline."""
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    python = environment / "bin" / "python"
    # ensurepip also brings an old setuptools, which would hide the locked one (torch needs it)
    removed = run(python, "-m", "pip", "uninstall", "--yes", "setuptools", cwd=environment)
    assert removed.returncode == 0, removed.stderr
    (site_packages(environment) / "locked_packages.pth").write_text(f"{view}\n")
    return python


def isolated_environment(python: Path, **extra: str) -> dict[str, str]:
    """Environment variables for a process of ``python``'s environment: no index, no pip
    configuration, no user site, nothing of the caller's interpreter or virtual environment."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "CONDA", "JUPYTER", "COVERAGE"))}
    bin_dir = str(python.parent)
    env.update({"PATH": os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep)
                                                     if Path(p).resolve() != Path(sys.executable).parent.resolve())]),
                "VIRTUAL_ENV": str(python.parent.parent), "PIP_CONFIG_FILE": os.devnull,
                "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1",
                "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def run(python: Path, *args: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd`` with :func:`isolated_environment`, output captured."""
    return subprocess.run([str(python), *args], cwd=cwd, env=env or isolated_environment(python),
                          capture_output=True, text=True, timeout=timeout)


def package_sources(target: Path) -> Path:
    """What the sdist is built from, copied into ``target``: the project files and the packages
    (tracked or not; caches left out), so that building never writes into the repository."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "CHANGELOG.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target / name)
    for package in ("wmbook", "bookbuild"):
        shutil.copytree(ROOT / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return target
