"""Browser assets served with the built book, so that its pages render without a network.

Jupyter Book 1 loads MathJax from a CDN unless told otherwise; a reader offline (or behind a
proxy that blocks third-party scripts) then sees every equation as raw TeX. The book instead
serves MathJax 3 from the npm package pinned in ``package.json``: ``npm ci`` installs it into
``node_modules/mathjax``, and :func:`stage_mathjax` copies the part the pages load into the
staging tree before Jupyter Book runs.

Where the files go, and why there: Jupyter Book adds every ``*.js`` found under a book's
``_static/`` folder to every page as a ``<script>``, which would load MathJax twice and each of
its TeX extensions eagerly. So the files are staged under ``_extra/_static/mathjax/``, a folder
that ``_config.yml`` names in ``html_extra_path``: Sphinx copies its contents, untouched, to the
HTML root, and they land in ``_build/html/_static/mathjax/`` beside the theme's own files.
``mathjax_path`` in ``_config.yml`` is relative to ``_static/`` (Sphinx adds the prefix).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MATHJAX_VERSION = "3.2.2"  # must match package.json and package-lock.json
EXTRA_DIR = "_extra"  # html_extra_path entry in _config.yml, relative to the staged book
MATHJAX_PATH = "mathjax/tex-chtml.js"  # mathjax_path in _config.yml, relative to _static/
# What the tex-chtml component fetches at run time, relative to the package's es5/ folder:
# the component itself (TeX input, CHTML output, menu), the CHTML web fonts it points its
# CSS at, and the TeX extensions that its autoload package pulls in on first use of a macro
# (\boldsymbol, \cancel, \ce, ...). The SVG output, the MathML input and the speech rule
# engine (4 MB, loaded only when a reader turns on the menu's accessibility explorer) stay out.
MATHJAX_FILES = ("tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions")
REPOSITORY = Path(__file__).resolve().parents[1]


class AssetError(RuntimeError):
    """A browser asset is missing or is not the pinned version; the message says how to fix it."""


def find_mathjax(root: Path) -> Path:
    """The installed ``mathjax`` npm package: under ``root``, else under this package's checkout.

    The second place lets a temporary copy of the book (as the tests make) build with the
    repository's ``node_modules``. Raises :class:`AssetError` naming the fix (``npm ci``) when
    neither holds the package, or when the one found is not version ``MATHJAX_VERSION``.
    """
    candidates = [Path(root).resolve() / "node_modules" / "mathjax"]
    if REPOSITORY / "node_modules" / "mathjax" != candidates[0]:
        candidates.append(REPOSITORY / "node_modules" / "mathjax")
    package = next((c for c in candidates if (c / "package.json").is_file()), None)
    if package is None:
        looked = ", ".join(str(c) for c in candidates)
        raise AssetError(f"MathJax is not installed (looked in {looked}): run `npm ci` in the "
                         "repository root (it installs the version pinned in package-lock.json)")
    version = json.loads((package / "package.json").read_text()).get("version")
    if version != MATHJAX_VERSION:
        raise AssetError(f"{package} holds MathJax {version}, the book pins {MATHJAX_VERSION}: "
                         "run `npm ci` in the repository root")
    missing = [name for name in MATHJAX_FILES if not (package / "es5" / name).exists()]
    if missing:
        raise AssetError(f"{package} lacks es5/{', es5/'.join(missing)} (an incomplete install?): "
                         "run `npm ci` in the repository root")
    return package


def stage_mathjax(root: Path, stage: Path) -> str:
    """Copy MathJax's ``tex-chtml`` component, fonts and TeX extensions into ``stage``.

    ``root`` is the book's root (where ``node_modules/`` is looked for first), ``stage`` the
    tree Jupyter Book builds. Files land in ``stage/_extra/_static/mathjax/``, replacing any
    earlier copy so that nothing stale is served. Returns the script's path relative to the
    HTML root, ``"_static/mathjax/tex-chtml.js"``.
    """
    package = find_mathjax(root)
    target = Path(stage) / EXTRA_DIR / "_static" / Path(MATHJAX_PATH).parent
    if target.exists():
        shutil.rmtree(target)
    for name in MATHJAX_FILES:
        source, destination = package / "es5" / name, target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            shutil.copy2(source, destination)
    shutil.copy2(package / "LICENSE", target / "LICENSE")  # Apache-2.0 asks for it to travel along
    return f"_static/{MATHJAX_PATH}"
