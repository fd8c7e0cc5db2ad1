"""A pytest plugin for nbval: compare figures too, by a hash of their PNG data.

nbval skips ``image/png`` outputs unless run with ``--nbdime``, so a figure that changes between
two executions would pass validation. With ``-p bookbuild.nbval_figures`` each PNG is replaced, in
both the stored and the re-executed outputs, by ``png sha256:<hash>`` and then compared like text:
a changed figure fails, and the report shows two short hashes instead of two pages of base64.
"""

from __future__ import annotations

import copy
import hashlib

from nbval.plugin import IPyNbCell

FIGURE_TYPES = ("image/png",)
_compare_outputs = IPyNbCell.compare_outputs


def figure_digest(data: str) -> str:
    """``png sha256:<hex>`` of a base64 PNG string (whitespace in the base64 is ignored)."""
    return "png sha256:" + hashlib.sha256("".join(data.split()).encode()).hexdigest()


def _hashed(outputs: list) -> list:
    hashed = copy.deepcopy(outputs)
    for output in hashed:
        data = output.get("data", {})
        for kind in FIGURE_TYPES:
            if kind in data:
                data[kind] = figure_digest(data[kind])
    return hashed


def compare_outputs_with_figures(self, test, ref, skip_compare=None):
    skip = tuple(key for key in (skip_compare or self.parent.skip_compare) if key not in FIGURE_TYPES)
    return _compare_outputs(self, _hashed(test), _hashed(ref), skip)


def pytest_configure(config) -> None:
    IPyNbCell.compare_outputs = compare_outputs_with_figures

