"""Atomic files and typed checkpoints.

A file is first written beside its destination and then renamed over it, so an interrupted
write never leaves a half-written checkpoint, buffer or results file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

CHECKPOINT_FORMAT = 1


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path``; on success rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> Path:
    """Save ``payload`` (tensors, state dicts, plain config values) tagged with ``kind``.

    ``kind`` names what the checkpoint holds (e.g. ``"DynamicsModel"``) so that loading it
    into something else fails with a clear message instead of a wall of missing keys.
    """
    import torch  # here, so that the pipeline's use of atomic files does not load torch

    path = Path(path)
    with atomic_write(path, "wb") as handle:
        torch.save({"kind": kind, "format": CHECKPOINT_FORMAT, **payload}, handle)
    return path


def load_checkpoint(path: str | os.PathLike, kind: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` and check that it holds ``kind``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable wmbook checkpoint: {error}") from error
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError(f"{path} is not a wmbook checkpoint (no 'kind' entry)")
    if data["kind"] != kind:
        raise ValueError(f"{path} holds a {data['kind']} checkpoint, not a {kind}")
    if data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {data.get('format')!r}; this wmbook reads format "
            f"{CHECKPOINT_FORMAT}"
        )
    return data
