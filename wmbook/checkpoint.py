"""Atomic files, typed checkpoints, and the one way a trainer saves and resumes.

A file is first written beside its destination and then renamed over it, so an interrupted
write never leaves a half-written checkpoint, buffer or results file behind. A trainer names the
objects whose state a resumed run needs (networks, optimisers, schedules, gradient scalers,
agents, torch and numpy generators, buffers) and hands them to :func:`save_state`;
:func:`load_state` puts every state back into the same objects, so that the resumed run goes on
to the result of one that was never stopped.
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


def _state_of(thing: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(thing, torch.Generator):
        return thing.get_state()
    if isinstance(thing, np.random.Generator):
        return thing.bit_generator.state
    if hasattr(thing, "state_dict"):
        return thing.state_dict()
    if hasattr(thing, "save"):  # a buffer: its own file's bytes
        with tempfile.TemporaryDirectory() as folder:
            path = thing.save(Path(folder) / "buffer.npz")
            return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    raise TypeError(f"cannot save the state of a {type(thing).__name__}")


def _restore(thing: Any, state: Any) -> None:
    import numpy as np
    import torch

    if isinstance(thing, torch.Generator):
        thing.set_state(state.cpu())
    elif isinstance(thing, np.random.Generator):
        thing.bit_generator.state = state
    elif hasattr(thing, "is_enabled"):  # a gradient scaler: an active one takes a saved scale
        if thing.is_enabled() and state:
            thing.load_state_dict(state)
    elif hasattr(thing, "load_state_dict"):
        thing.load_state_dict(state)
    else:  # a buffer: read back in place
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "buffer.npz"
            path.write_bytes(state.cpu().numpy().tobytes())
            vars(thing).update(vars(type(thing).load(path)))


def save_state(path: str | os.PathLike, kind: str, objects: dict[str, Any], **values: Any) -> Path:
    """One atomic checkpoint ``kind`` holding the state of each of ``objects`` under its name
    (``state_dict()``, a generator's state, or a buffer's file) and the plain ``values``."""
    return save_checkpoint(path, kind, {"states": {name: _state_of(thing) for name, thing in objects.items()},
                                        **values})


def load_state(path: str | os.PathLike, kind: str, objects: dict[str, Any], map_location: Any = "cpu"
               ) -> dict[str, Any]:
    """Put the states that :func:`save_state` wrote back into ``objects`` (the same names) and
    return the checkpoint's plain values."""
    return restore_states(load_checkpoint(path, kind, map_location), objects, path)


def restore_states(data: dict[str, Any], objects: dict[str, Any], source: Any = "the checkpoint") -> dict[str, Any]:
    """:func:`load_state` for a checkpoint already read (a run that needs its values, e.g. its
    configuration, to build ``objects``)."""
    data = dict(data)
    states = data.pop("states", None)
    if not isinstance(states, dict) or set(states) != set(objects):
        raise ValueError(f"{source} holds the states of {sorted(states or [])}, this run needs {sorted(objects)}")
    for name, thing in objects.items():
        _restore(thing, states[name])
    return data
