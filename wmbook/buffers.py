"""Replay storage: single transitions for Q-learning and one-step models, whole episodes for
recurrent world models.

:class:`ReplayBuffer` keeps ``capacity`` transitions in preallocated NumPy arrays (a ring: the
oldest transition is overwritten once it is full), stores each observation once, adds in O(1),
samples transitions or windows of consecutive transitions uniformly into torch tensors on any
device, and round-trips through ``.npz``.

:class:`SequenceBuffer` keeps whole episodes (one observation per time step, frames as uint8) and
samples fixed-length chunks of consecutive time steps for recurrent models (MDN-RNN, RSSM).
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from wmbook.checkpoint import atomic_write
from wmbook.device import to_device

if TYPE_CHECKING:
    import gymnasium as gym

_BUFFER_FORMAT = 2  # 2: each observation stored once; 1 (still read): obs and next_obs side by side
_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
_STORED = ("obs", "action", "reward", "terminated", "truncated")  # arrays of one row per slot


@dataclass(frozen=True)
class Transitions:
    """A batch of ``B`` transitions as tensors.

    Shapes: ``obs`` and ``next_obs`` ``(B, *obs_shape)`` float32; ``action`` ``(B,
    *action_shape)`` (int64 for discrete actions); ``reward`` ``(B,)`` float32; ``terminated``
    and ``truncated`` ``(B,)`` bool. ``terminated`` is a true end of the task (the pole fell);
    ``truncated`` is a time limit, after which the task would have gone on.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]

    def to(self, device: torch.device | str) -> "Transitions":
        return Transitions(*(to_device(getattr(self, f.name), device) for f in fields(self)))

    def index(self, idx: torch.Tensor | slice) -> "Transitions":
        """The transitions at ``idx`` (a slice, or an index tensor on the same device)."""
        return Transitions(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def cat(batches: "list[Transitions]") -> "Transitions":
        """Several batches joined into one, in order."""
        return Transitions(*(torch.cat([getattr(b, f.name) for b in batches]) for f in fields(Transitions)))

    def step(self, t: int) -> "Transitions":
        """Step ``t`` of a batch of windows ``(B, k, ...)``, as a batch of transitions ``(B, ...)``."""
        return Transitions(*(getattr(self, f.name)[:, t] for f in fields(self)))

    def flatten(self) -> "Transitions":
        """Windows ``(B, k, ...)`` as ``B * k`` single transitions (single transitions unchanged)."""
        if self.reward.ndim == 1:
            return self
        batch_dims = self.reward.ndim
        return Transitions(*(getattr(self, f.name).flatten(0, batch_dims - 1) for f in fields(self)))


# NumPy dtype kinds each field accepts, and how an error message names them.
_KIND_NAMES = {"fiub": "numeric", "fiu": "numeric", "iub": "integer", "iu": "integer", "biu": "bool"}


def _checked(name: str, value, shape: tuple[int, ...], kinds: str, finite: bool) -> np.ndarray:
    """``value`` as an array, once its shape, its dtype kind and (with ``finite``) its values pass."""
    array = np.asarray(value)
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, this buffer stores {name} of shape {shape}")
    if array.dtype.kind not in kinds:
        raise TypeError(f"{name} has dtype {array.dtype}; this buffer stores {_KIND_NAMES[kinds]} {name}")
    if finite and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = np.count_nonzero(~np.isfinite(array))
        shown = repr(value) if array.size <= 16 else f"{bad} of {array.size} values"
        raise ValueError(f"{name} contains NaN or infinity: {shown}")
    return array


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether float32 rows ``a[i]`` and ``b[i]`` are identical bit for bit (``(n, ...)`` -> ``(n,)``).

    Stricter than ``==``, which calls 0.0 and -0.0 equal: a stored copy must give back exactly
    the value that was added.
    """
    same = a.view(np.uint32) == b.view(np.uint32)
    return np.all(same, axis=tuple(range(1, same.ndim)))


def _all_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether rows ``a[i]`` and ``b[i]`` are equal value for value (``(n, ...)`` -> ``(n,)``)."""
    same = a == b
    return np.all(same, axis=tuple(range(1, same.ndim)))


def _read_npz(path: Path, kind: str, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file at ``path``; a missing or unreadable file, or one
    without the ``required`` arrays, raises an error that names the ``kind`` of buffer."""
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:
        raise ValueError(f"{path} is not a readable .npz {kind}: {error}") from error
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ValueError(f"{path} is not a wmbook {kind}: missing {', '.join(missing)}")
    return arrays


class ReplayBuffer:
    """A fixed-capacity ring of transitions with uniform sampling.

    Each observation is stored once. Inside an episode the ``next_obs`` of a transition is the
    ``obs`` of the transition added right after it, and is read from there; only a ``next_obs``
    with no such successor (an episode's last step, the newest transition, the last one of a
    separately collected batch) is kept in a small separate store, which grows as needed. Two
    transitions are linked when the values agree bit for bit, so every read gives back exactly
    what was added.

    Args:
        capacity: how many transitions to keep; older ones are overwritten.
        obs_shape: shape of one observation, e.g. ``(4,)`` for CartPole.
        action_shape: shape of one action: ``()`` for a discrete action index.
        action_dtype: ``np.int64`` for discrete actions, ``np.float32`` for continuous ones.
        seed: seed of the buffer's own sampling generator (used by :meth:`sample` and
            :meth:`sample_windows`).
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...] = (),
        action_dtype: type | np.dtype = np.int64,
        seed: int = 0,
    ):
        if int(capacity) < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.action_shape = tuple(int(d) for d in action_shape)
        self.action_dtype = np.dtype(action_dtype)
        if self.action_dtype.kind not in "iuf":
            raise ValueError(f"action_dtype must be an integer or float type, got {self.action_dtype}")
        self.obs = np.zeros((self.capacity, *self.obs_shape), dtype=np.float32)
        self.action = np.zeros((self.capacity, *self.action_shape), dtype=self.action_dtype)
        self.reward = np.zeros(self.capacity, dtype=np.float32)
        self.terminated = np.zeros(self.capacity, dtype=bool)
        self.truncated = np.zeros(self.capacity, dtype=bool)
        # next_obs of slot i: obs[i + 1] where _kept_row[i] is -1, else _kept_obs[_kept_row[i]]
        self._kept_row = np.full(self.capacity, -1, dtype=np.int32)
        self._kept_obs = np.zeros((0, *self.obs_shape), dtype=np.float32)
        self._free_rows = np.zeros(0, dtype=np.int32)  # a stack of unused rows of _kept_obs
        self._n_free = 0
        # the transition in slot i goes on, in the same episode, with the one in slot i + 1
        self._continues = np.zeros(self.capacity, dtype=bool)
        self.rng = np.random.default_rng(seed)
        self._next = 0  # slot the next transition goes to
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def full(self) -> bool:
        return self._size == self.capacity

    @property
    def nbytes(self) -> int:
        """Bytes held by the storage: observations once, the ``next_obs`` kept apart, the rest."""
        arrays = (self.obs, self._kept_obs, self.action, self.reward, self.terminated, self.truncated,
                  self._kept_row, self._free_rows, self._continues)
        return sum(array.nbytes for array in arrays)

    def __repr__(self) -> str:
        return (
            f"ReplayBuffer({self._size}/{self.capacity} transitions, obs {self.obs_shape}, "
            f"action {self.action_shape} {self.action_dtype})"
        )

    # -- adding -------------------------------------------------------------------------

    def _action_kinds(self) -> str:
        """dtype kinds an action may have: integers for a discrete buffer, numbers otherwise."""
        return "iub" if self.action_dtype.kind in "iu" else "fiu"

    def add(self, obs, action, reward, next_obs, terminated: bool, truncated: bool = False) -> None:
        """Store one transition, overwriting the oldest once the buffer is full."""
        # check every field before writing any, so a rejected transition changes nothing
        checked = (
            _checked("obs", obs, self.obs_shape, "fiub", True),
            _checked("action", action, self.action_shape, self._action_kinds(), True),
            _checked("reward", reward, (), "fiub", True),
            _checked("next_obs", next_obs, self.obs_shape, "fiub", True),
            _checked("terminated", terminated, (), "biu", False),
            _checked("truncated", truncated, (), "biu", False),
        )
        self._write(*(value[None] for value in checked))

    def add_batch(self, obs, action, reward, next_obs, terminated, truncated=None) -> None:
        """Store ``B`` transitions at once (leading dimension ``B`` on every argument)."""
        obs = np.asarray(obs)
        n = obs.shape[0] if obs.ndim else 0
        if truncated is None:
            truncated = np.zeros(n, dtype=bool)
        arrays = (
            _checked("obs", obs, (n, *self.obs_shape), "fiub", True),
            _checked("action", action, (n, *self.action_shape), self._action_kinds(), True),
            _checked("reward", reward, (n,), "fiub", True),
            _checked("next_obs", next_obs, (n, *self.obs_shape), "fiub", True),
            _checked("terminated", terminated, (n,), "biu", False),
            _checked("truncated", truncated, (n,), "biu", False),
        )
        # only the newest `capacity` transitions survive
        self._write(*(value[-self.capacity :] for value in arrays))

    def _write(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        """Put ``n <= capacity`` checked transitions (leading dimension ``n``) after the newest."""
        n = len(reward)
        if n == 0:
            return
        obs = np.asarray(obs, dtype=np.float32)  # links are decided on the stored precision
        next_obs = np.asarray(next_obs, dtype=np.float32)
        ended = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        # the newest stored transition precedes this batch, unless the batch overwrites it
        previous = (self._next - 1) % self.capacity if self._size and n < self.capacity else None
        slots = (self._next + np.arange(n)) % self.capacity
        self._release(self._kept_row[slots])  # the overwritten transitions' kept next_obs
        self._kept_row[slots] = -1
        for key, value in zip(_STORED, (obs, action, reward, terminated, truncated)):
            getattr(self, key)[slots] = value
        # inside the batch, next_obs[k] is read from obs[k + 1] when the two agree
        kept = np.ones(n, dtype=bool)
        kept[:-1] = ~_same_bits(next_obs[:-1], obs[1:])
        rows = self._take_rows(int(kept.sum()))
        self._kept_obs[rows] = next_obs[kept]
        self._kept_row[slots[kept]] = rows
        continues = np.zeros(n, dtype=bool)
        continues[:-1] = ~ended[:-1] & _all_equal(next_obs[:-1], obs[1:])
        self._continues[slots] = continues
        if previous is not None:
            self._link(previous, obs[0])
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def _link(self, slot: int, obs: np.ndarray) -> None:
        """Decide whether the transition in ``slot``, so far the newest, leads to ``obs``."""
        row = self._kept_row[slot]  # the newest transition always has its next_obs kept apart
        next_obs = self._kept_obs[row]
        ended = self.terminated[slot] or self.truncated[slot]
        self._continues[slot] = not ended and bool(np.all(next_obs == obs))
        if _same_bits(next_obs[None], obs[None])[0]:
            self._release(np.array([row]))
            self._kept_row[slot] = -1

    def _take_rows(self, n: int) -> np.ndarray:
        """``n`` unused rows of the kept next_obs store, which doubles in size when short.

        It never needs more than ``capacity`` rows: each belongs to one stored transition.
        """
        if n > self._n_free:
            old = len(self._kept_obs)
            new = min(self.capacity, max(2 * old, old + n - self._n_free, 16))
            grown = np.zeros((new, *self.obs_shape), dtype=np.float32)
            grown[:old] = self._kept_obs
            free = np.zeros(new, dtype=np.int32)
            free[: self._n_free] = self._free_rows[: self._n_free]
            free[self._n_free : self._n_free + new - old] = np.arange(old, new)
            self._kept_obs, self._free_rows = grown, free
            self._n_free += new - old
        self._n_free -= n
        return self._free_rows[self._n_free : self._n_free + n].copy()

    def _release(self, rows: np.ndarray) -> None:
        """Give rows of the kept next_obs store back (entries of -1 are ignored)."""
        rows = rows[rows >= 0]
        self._free_rows[self._n_free : self._n_free + len(rows)] = rows
        self._n_free += len(rows)

    # -- reading ------------------------------------------------------------------------

    def _next_obs_at(self, slots: np.ndarray) -> np.ndarray:
        """The ``next_obs`` of the transitions in ``slots`` (any shape ``S``), ``(*S, *obs_shape)``."""
        rows = self._kept_row[slots]
        next_obs = self.obs[(slots + 1) % self.capacity]
        kept = rows >= 0
        next_obs[kept] = self._kept_obs[rows[kept]]
        return next_obs

    def _gather(self, idx: np.ndarray, device: torch.device | str) -> Transitions:
        arrays = {key: getattr(self, key)[idx] for key in _STORED}
        arrays["next_obs"] = self._next_obs_at(idx)
        return Transitions(*(torch.from_numpy(arrays[key]) for key in _FIELDS)).to(device)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> Transitions:
        """``batch_size`` transitions drawn uniformly with replacement, as tensors on ``device``."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return self._gather(self.rng.integers(0, self._size, size=batch_size), device)

    def chronological_indices(self) -> np.ndarray:
        """Storage slots from the oldest stored transition to the newest."""
        start = self._next if self.full else 0
        return (start + np.arange(self._size)) % self.capacity

    def all(self, device: torch.device | str = "cpu") -> Transitions:
        """Every stored transition, oldest first, as tensors on ``device``."""
        return self._gather(self.chronological_indices(), device)

    def _window_starts(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Storage slots oldest first, and the positions in that order where a window of
        ``length`` consecutive transitions of one episode starts."""
        if length < 1:
            raise ValueError(f"window length must be at least 1, got {length}")
        order = self.chronological_indices()
        joined = self._continues[order[:-1]]
        # a window starting at position p needs links p -> p+1, ..., p+length-2 all joined
        broken = np.concatenate([[0], np.cumsum(~joined)])
        starts = np.arange(max(0, self._size - length + 1))
        return order, starts[broken[starts + length - 1] - broken[starts] == 0]

    def windows(self, length: int, device: torch.device | str = "cpu") -> Transitions:
        """Every run of ``length`` consecutive transitions of one episode, as ``Transitions``
        of shape ``(N, length, ...)``, oldest first.

        A window may end with an episode's last transition but never crosses an episode end.
        Consecutiveness is checked on the data (each ``next_obs`` is the following ``obs``), so
        separately collected batches are never joined. All ``N`` windows are built at once,
        about ``length`` times the memory of the buffer; :meth:`sample_windows` draws a few.
        """
        order, starts = self._window_starts(length)
        return self._gather(order[starts[:, None] + np.arange(length)[None, :]], device)

    def sample_windows(self, batch_size: int, length: int, device: torch.device | str = "cpu") -> Transitions:
        """``batch_size`` windows drawn uniformly with replacement from those :meth:`windows`
        returns, as ``Transitions`` of shape ``(batch_size, length, ...)`` on ``device``.

        Only the drawn windows are gathered; finding the valid starts takes one pass over the
        buffer's links (a few integers per transition).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        order, starts = self._window_starts(length)
        if len(starts) == 0:
            raise ValueError(
                f"no window of {length} consecutive transitions inside one episode among the "
                f"{self._size} stored: use a shorter length or collect more data"
            )
        picked = starts[self.rng.integers(0, len(starts), size=batch_size)]
        return self._gather(order[picked[:, None] + np.arange(length)[None, :]], device)

    @property
    def episode_starts(self) -> np.ndarray:
        """Positions (in :meth:`all` order) where an episode begins."""
        order = self.chronological_indices()
        ends = self.terminated[order] | self.truncated[order]
        return np.flatnonzero(np.concatenate([[True], ends[:-1]])) if self._size else np.zeros(0, int)

    # -- files --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the buffer (contents, position and sampling state) to ``path`` (.npz), atomically.

        Observations are written once; the ``next_obs`` kept apart go with their slots.
        """
        path = Path(path)
        kept_slots = np.flatnonzero(self._kept_row >= 0)  # only stored slots keep a next_obs
        meta = {
            "format": _BUFFER_FORMAT,
            "capacity": self.capacity,
            "obs_shape": list(self.obs_shape),
            "action_shape": list(self.action_shape),
            "action_dtype": self.action_dtype.str,
            "next": self._next,
            "size": self._size,
            "rng_state": self.rng.bit_generator.state,
        }
        with atomic_write(path, "wb") as handle:
            np.savez_compressed(
                handle, meta=np.array(json.dumps(meta)), **{key: getattr(self, key) for key in _STORED},
                kept_slots=kept_slots, kept_next_obs=self._kept_obs[self._kept_row[kept_slots]],
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReplayBuffer":
        """Read a buffer written by :meth:`save` (this format or the earlier one that stored
        ``next_obs`` in full); a missing or malformed file raises a clear error."""
        path = Path(path)
        arrays = _read_npz(path, "replay buffer", ("meta", *_STORED))
        try:
            meta = json.loads(str(arrays["meta"]))
            buffer = cls(meta["capacity"], tuple(meta["obs_shape"]), tuple(meta["action_shape"]),
                         np.dtype(meta["action_dtype"]))
            size, next_slot = int(meta["size"]), int(meta["next"])
            buffer.rng.bit_generator.state = meta["rng_state"]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} has malformed buffer metadata: {error!r}") from error
        file_format = meta.get("format")
        if file_format not in (1, _BUFFER_FORMAT):
            raise ValueError(f"{path} has buffer format {file_format!r}, expected {_BUFFER_FORMAT}")
        per_format = ("next_obs",) if file_format == 1 else ("kept_slots", "kept_next_obs")
        missing = [key for key in per_format if key not in arrays]
        if missing:
            raise ValueError(f"{path} is not a format {file_format} replay buffer: missing {', '.join(missing)}")
        expected = {key: getattr(buffer, key) for key in _STORED}
        if file_format == 1:
            expected["next_obs"] = buffer.obs  # one next_obs per slot, shaped like obs
        for key in expected:
            if arrays[key].shape != expected[key].shape or arrays[key].dtype != expected[key].dtype:
                raise ValueError(
                    f"{path}: array '{key}' is {arrays[key].dtype}{list(arrays[key].shape)}, the "
                    f"metadata implies {expected[key].dtype}{list(expected[key].shape)}"
                )
        if not (0 <= size <= buffer.capacity and 0 <= next_slot < buffer.capacity
                and (size in (next_slot, buffer.capacity))):
            raise ValueError(f"{path}: size {size} / position {next_slot} do not fit capacity {buffer.capacity}")
        order = (next_slot - size + np.arange(size)) % buffer.capacity  # oldest first
        if file_format == 1:
            next_obs = arrays["next_obs"][order]
        else:
            next_obs = cls._kept_to_full(path, arrays, order, buffer.capacity, buffer.obs_shape)
        # rewriting the transitions in their slots rebuilds the links exactly as they were
        buffer._next = int(order[0]) if size else next_slot
        buffer._write(*(arrays[key][order] for key in ("obs", "action", "reward")), next_obs,
                      arrays["terminated"][order], arrays["truncated"][order])
        return buffer

    @staticmethod
    def _kept_to_full(path: Path, arrays: dict[str, np.ndarray], order: np.ndarray, capacity: int,
                      obs_shape: tuple[int, ...]) -> np.ndarray:
        """The ``next_obs`` of every stored slot (``order``), from a format-2 file's arrays."""
        slots, kept = arrays["kept_slots"], arrays["kept_next_obs"]
        if (slots.ndim != 1 or slots.dtype.kind not in "iu" or kept.shape != (len(slots), *obs_shape)
                or kept.dtype != np.float32):
            raise ValueError(f"{path}: kept_slots {slots.dtype}{list(slots.shape)} and kept_next_obs "
                             f"{kept.dtype}{list(kept.shape)} do not match float32 next_obs of shape {obs_shape}")
        position = np.full(capacity, -1)
        position[order] = np.arange(len(order))
        inside = (slots >= 0) & (slots < capacity)
        if (not inside.all() or len(np.unique(slots)) != len(slots) or np.any(position[slots] < 0)
                or (len(order) and order[-1] not in slots)):
            raise ValueError(f"{path}: kept_slots must be distinct stored slots including the newest, "
                             f"got {slots[:10].tolist()}")
        next_obs = arrays["obs"][(order + 1) % capacity]
        next_obs[position[slots]] = kept
        return next_obs


# -- whole episodes ---------------------------------------------------------------------

ACTION_KINDS = ("discrete", "multibinary", "continuous")
_ACTION_DTYPES = {"discrete": np.int64, "multibinary": np.bool_, "continuous": np.float32}
_SEQUENCE_FORMAT = 1
_STEP_FIELDS = ("obs", "action", "reward", "terminated", "truncated")  # written to file; is_first is derived


@dataclass(frozen=True)
class SequenceBatch:
    """``B`` chunks of ``T`` consecutive time steps from a :class:`SequenceBuffer`, as tensors.

    Step ``t`` holds the observation ``o_t``, the action ``a_{t-1}`` that led to it, the reward
    ``r_t`` received on arriving at it, and the flags of that arrival (the convention is set out
    in :class:`SequenceBuffer`). Shapes and dtypes:

    - ``obs``: ``(B, T, *obs_shape)`` in the buffer's dtype. uint8 frames stay uint8, a quarter
      of the bytes to copy to a GPU; :meth:`float_obs` turns them into float32 in [0, 1] on
      whatever device they are on.
    - ``action``: ``(B, T)`` int64 for discrete actions; ``(B, T, *action_shape)`` float32 for
      multi-label (0. or 1. per label) and continuous ones. Zero at an episode's first step.
    - ``reward``: ``(B, T)`` float32, zero at an episode's first step.
    - ``terminated``, ``truncated``, ``is_first``: ``(B, T)`` bool.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    is_first: torch.Tensor

    def __len__(self) -> int:
        return self.reward.shape[0]

    @property
    def length(self) -> int:
        """``T``, the number of time steps in each chunk."""
        return self.reward.shape[1]

    def to(self, device: torch.device | str) -> "SequenceBatch":
        return SequenceBatch(*(to_device(getattr(self, f.name), device) for f in fields(self)))

    def float_obs(self) -> torch.Tensor:
        """``obs`` as float32: uint8 frames scaled to [0, 1], float observations as they are."""
        if self.obs.dtype == torch.uint8:
            return self.obs.float().div_(255.0)
        return self.obs


@dataclass(frozen=True)
class Episode:
    """One stored episode of ``T`` transitions as NumPy arrays, in the layout that
    :meth:`SequenceBuffer.add_episode` takes.

    Shapes: ``obs`` ``(T + 1, *obs_shape)`` (the reset observation, then one per step);
    ``action`` ``(T, *action_shape)`` (int64 indices, bool labels or float32); ``reward``,
    ``terminated`` and ``truncated`` ``(T,)``. An episode cut off before its end has no flag on
    its last step.
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.reward)


class SequenceBuffer:
    """Whole episodes for recurrent world models, sampled as fixed-length chunks of time steps.

    **Layout.** The storage is one preallocated ring of time steps. An episode of ``T``
    transitions takes ``T + 1`` consecutive steps: its reset observation, then one per
    transition. Each observation is stored once (there is no ``next_obs``). Step ``t`` holds

    - ``obs``: the observation ``o_t``;
    - ``action``: ``a_{t-1}``, the action that led to ``o_t`` (zero at an episode's first step,
      where ``is_first`` tells it apart from a real action 0);
    - ``reward``: ``r_t``, the reward received on arriving at ``o_t`` (zero at the first step);
    - ``terminated`` / ``truncated``: whether arriving at ``o_t`` ended the episode (a true end
      of the task / a time limit), so only an episode's last step may carry one;
    - ``is_first``: true at an episode's first step, where a recurrent model resets its state.

    This is Dreamer's convention: the action and reward that produced ``o_t`` sit beside it.

    **Chunks.** :meth:`sample` draws a start step uniformly among the stored steps that have at
    least ``length - 1`` stored steps after them and returns the ``length`` steps from there. A
    chunk may run from one episode into the next (``is_first`` marks the restart, where action
    and reward are zero), so episodes shorter than ``length`` are still used and no padding or
    mask is needed; it may also start mid-episode, and models begin every chunk from their
    initial state. Chunks never run past the newest stored step, which may belong to an episode
    still being collected.

    **Capacity** counts time steps (observations): an episode of ``T`` transitions uses ``T + 1``.
    When new steps do not fit, the oldest *whole* episodes are dropped first (first in, first
    out), so every stored episode starts at its reset observation. An episode longer than the
    capacity is refused.

    **Dtypes.** Frames (e.g. ``(3, 64, 64)`` or ``(64, 64, 3)``) are stored and returned as
    uint8 (``obs_dtype=np.uint8``, values 0..255); vectors and embeddings as float32. Actions
    are of one ``action_kind``: ``"discrete"`` (an int64 index, ``action_shape=()``),
    ``"multibinary"`` (several 0/1 labels at once, e.g. surgical instruments in use, shape
    ``(n,)``, stored as bool and returned as float32) or ``"continuous"`` (float32, ``(n,)``).

    Args:
        capacity: how many time steps (observations) to keep.
        obs_shape: shape of one observation.
        obs_dtype: ``np.uint8`` for frames, ``np.float32`` for vectors and embeddings.
        action_kind: ``"discrete"``, ``"multibinary"`` or ``"continuous"``.
        action_shape: ``()`` for discrete actions, e.g. ``(n,)`` for the other kinds.
        n_actions: the number of discrete actions, if known; indices outside ``0..n_actions-1``
            are then refused.
        seed: seed of the buffer's own sampling generator.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: type | np.dtype = np.float32,
        action_kind: str = "discrete",
        action_shape: tuple[int, ...] = (),
        n_actions: int | None = None,
        seed: int = 0,
    ):
        if int(capacity) < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        obs_dtype = np.dtype(obs_dtype)
        if obs_dtype not in (np.dtype(np.uint8), np.dtype(np.float32)):
            raise ValueError(f"obs_dtype must be uint8 (frames) or float32 (vectors), got {obs_dtype}")
        if action_kind not in ACTION_KINDS:
            raise ValueError(f"action_kind must be one of {', '.join(ACTION_KINDS)}, got {action_kind!r}")
        action_shape = tuple(int(d) for d in action_shape)
        if action_kind == "discrete" and action_shape:
            raise ValueError(f"a discrete action is one index: action_shape must be (), got {action_shape}")
        if action_kind != "discrete" and (not action_shape or min(action_shape) < 1):
            raise ValueError(f"{action_kind} actions need a shape such as (n,), got {action_shape}")
        if n_actions is not None and (action_kind != "discrete" or int(n_actions) < 1):
            raise ValueError(f"n_actions must be a positive count of discrete actions, got {n_actions} "
                             f"for {action_kind} actions")
        self.capacity = int(capacity)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.action_kind = action_kind
        self.action_shape = action_shape
        self.n_actions = None if n_actions is None else int(n_actions)
        self.obs = np.zeros((self.capacity, *self.obs_shape), dtype=obs_dtype)
        self.action = np.zeros((self.capacity, *action_shape), dtype=_ACTION_DTYPES[action_kind])
        self.reward = np.zeros(self.capacity, dtype=np.float32)
        self.terminated = np.zeros(self.capacity, dtype=bool)
        self.truncated = np.zeros(self.capacity, dtype=bool)
        self.is_first = np.zeros(self.capacity, dtype=bool)
        self.rng = np.random.default_rng(seed)
        # steps are numbered from 0 as they are written; step s lives in slot s % capacity
        self._first = 0  # number of the oldest stored step
        self._end = 0  # number of the next step to write
        self._episode_starts: deque[int] = deque()  # number of each stored episode's first step
        self._open = False  # whether add() may extend the newest episode

    @classmethod
    def for_spaces(cls, observation_space: gym.spaces.Space, action_space: gym.spaces.Space,
                   capacity: int, seed: int = 0) -> "SequenceBuffer":
        """An empty buffer shaped for Gymnasium spaces.

        ``observation_space`` must be a ``Box``: a uint8 box (frames) is stored as uint8, any
        other as float32. ``action_space`` may be ``Discrete(n)`` starting at 0, ``MultiBinary``
        or ``Box`` (continuous).
        """
        import gymnasium as gym  # only here: the buffer itself does not need Gymnasium

        if not isinstance(observation_space, gym.spaces.Box):
            raise TypeError(f"observation_space must be a gymnasium Box, got {observation_space}")
        obs_dtype = np.uint8 if observation_space.dtype == np.uint8 else np.float32
        shape = observation_space.shape
        if isinstance(action_space, gym.spaces.Discrete):
            if action_space.start != 0:
                raise ValueError(f"a Discrete action space must start at 0, got {action_space}")
            return cls(capacity, shape, obs_dtype, "discrete", (), int(action_space.n), seed=seed)
        if isinstance(action_space, gym.spaces.MultiBinary):
            return cls(capacity, shape, obs_dtype, "multibinary", action_space.shape, seed=seed)
        if isinstance(action_space, gym.spaces.Box):
            return cls(capacity, shape, obs_dtype, "continuous", action_space.shape, seed=seed)
        raise TypeError(f"unsupported action space {action_space}: use Discrete, MultiBinary or Box")

    def __len__(self) -> int:
        return self._end - self._first

    @property
    def num_steps(self) -> int:
        """Stored time steps (observations), each episode's first included; what capacity counts."""
        return len(self)

    @property
    def num_episodes(self) -> int:
        """Stored episodes, an open or cut-off newest one included."""
        return len(self._episode_starts)

    @property
    def num_transitions(self) -> int:
        """Stored actions: ``num_steps - num_episodes``."""
        return self.num_steps - self.num_episodes

    @property
    def episode_open(self) -> bool:
        """Whether :meth:`add` may extend the newest episode (it has had no flag yet)."""
        return self._open

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated storage."""
        arrays = (self.obs, self.action, self.reward, self.terminated, self.truncated, self.is_first)
        return sum(array.nbytes for array in arrays)

    def __repr__(self) -> str:
        return (
            f"SequenceBuffer({len(self)}/{self.capacity} steps in {self.num_episodes} episodes, obs "
            f"{self.obs_shape} {self.obs.dtype}, {self.action_kind} action {self.action_shape})"
        )

    # -- checks -------------------------------------------------------------------------

    def _check_obs(self, name: str, obs, shape: tuple[int, ...]) -> np.ndarray:
        """``obs`` of ``shape`` converted to the stored dtype, refusing values it cannot hold."""
        array = np.asarray(obs)
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, this buffer stores {name} of shape {shape}")
        if self.obs.dtype == np.uint8:
            if array.dtype.kind not in "iu":
                raise TypeError(
                    f"{name} has dtype {array.dtype}; this buffer stores uint8 frames (integers "
                    "0..255): convert float frames in [0, 1] with (frame * 255).round().astype(np.uint8)"
                )
            if array.size and (array.min() < 0 or array.max() > 255):
                raise ValueError(f"{name} has values in [{array.min()}, {array.max()}]; uint8 frames hold 0..255")
            return array.astype(np.uint8)
        array = _checked(name, array, shape, "fiub", finite=False)
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
            stored = array.astype(np.float32)
        if not np.all(np.isfinite(stored)):
            bad = np.count_nonzero(~np.isfinite(stored))
            raise ValueError(f"{name} contains NaN or infinity (or values beyond float32): "
                             f"{bad} of {stored.size} values")
        return stored

    def _check_action(self, action, shape: tuple[int, ...]) -> np.ndarray:
        """``action`` of ``shape`` (batch dimensions first) in the stored dtype."""
        if self.action_kind == "discrete":
            array = _checked("action", action, shape, "iu", finite=False)
            high = self.n_actions
            if array.size and (array.min() < 0 or (high is not None and array.max() >= high)):
                allowed = f"0..{high - 1}" if high is not None else "non-negative"
                raise ValueError(f"action holds indices in [{array.min()}, {array.max()}]; allowed: {allowed}")
            return array.astype(np.int64)
        if self.action_kind == "multibinary":
            array = _checked("action", action, shape, "fiub", finite=False)
            if array.dtype.kind != "b" and not np.all((array == 0) | (array == 1)):
                others = np.unique(array[(array != 0) & (array != 1)])
                raise ValueError(f"a multi-label action holds only 0 and 1, got {others[:5].tolist()}")
            return array.astype(bool)
        array = _checked("action", action, shape, "fiu", finite=True)
        return array.astype(np.float32)

    def _check_steps(self, reward, terminated, truncated, shape: tuple[int, ...]):
        """Rewards (float32) and the two end flags (bool), each of ``shape``."""
        reward = _checked("reward", reward, shape, "fiub", finite=True).astype(np.float32)
        terminated = _checked("terminated", terminated, shape, "biu", finite=False).astype(bool)
        truncated = _checked("truncated", truncated, shape, "biu", finite=False).astype(bool)
        return reward, terminated, truncated

    # -- adding -------------------------------------------------------------------------

    def start_episode(self, obs) -> None:
        """Begin an episode at its reset observation ``obs`` ``(*obs_shape)``.

        An episode still open is kept as it is, cut off (no flag on its last step), as when
        collection stops at a step budget.
        """
        obs = self._check_obs("obs", obs, self.obs_shape)
        self._make_room(1)
        no_action = np.zeros((1, *self.action_shape), self.action.dtype)
        self._append(obs[None], no_action, np.zeros(1, np.float32), np.zeros(1, bool), np.zeros(1, bool),
                     starts_episode=True)
        self._open = True

    def add(self, action, reward, next_obs, terminated: bool, truncated: bool = False) -> None:
        """Extend the open episode by one transition: ``action`` ``(*action_shape)`` was taken,
        then ``reward``, ``next_obs`` ``(*obs_shape)`` and the flags came back. A step with
        ``terminated`` or ``truncated`` set closes the episode."""
        if not self._open:
            ended = " (the last one has ended)" if self._episode_starts else ""
            raise RuntimeError(f"no open episode{ended}: call start_episode(obs) with the reset observation first")
        # check every field before writing any, so a rejected step changes nothing
        next_obs = self._check_obs("next_obs", next_obs, self.obs_shape)
        action = self._check_action(action, self.action_shape)
        reward, terminated, truncated = self._check_steps(reward, terminated, truncated, ())
        length = self._end - self._episode_starts[-1]
        if length + 1 > self.capacity:
            raise ValueError(f"the open episode would reach {length + 1} steps, more than the capacity "
                             f"{self.capacity}: use a larger capacity or a time limit")
        self._make_room(1)
        self._append(next_obs[None], action[None], reward[None], terminated[None], truncated[None],
                     starts_episode=False)
        if terminated or truncated:
            self._open = False

    def add_episode(self, obs, action, reward, terminated, truncated=None) -> None:
        """Store a whole episode of ``T`` transitions at once.

        Args:
            obs: ``(T + 1, *obs_shape)``: the reset observation, then the one after each step.
            action: ``(T, *action_shape)``, the action taken at each step.
            reward: ``(T,)``; terminated, truncated: ``(T,)`` (truncated all false if omitted).

        Only the last step may carry a flag; without one the episode is stored as cut off. An
        open episode is kept as it is (cut off); the new one is stored closed.
        """
        obs = np.asarray(obs)
        if obs.ndim != len(self.obs_shape) + 1 or obs.shape[0] < 1:
            raise ValueError(f"obs must hold the reset observation and one per step, shape "
                             f"(T + 1, *{self.obs_shape}); got {obs.shape}")
        n = obs.shape[0] - 1
        if truncated is None:
            truncated = np.zeros(n, dtype=bool)
        for name, value in (("action", action), ("reward", reward), ("terminated", terminated),
                            ("truncated", truncated)):
            if np.ndim(value) == 0 or len(value) != n:
                raise ValueError(f"{name} has shape {np.shape(value)} but obs has {n + 1} observations: an "
                                 "episode of T steps has T + 1 observations and T actions, rewards and flags")
        obs = self._check_obs("obs", obs, (n + 1, *self.obs_shape))
        action = self._check_action(action, (n, *self.action_shape))
        reward, terminated, truncated = self._check_steps(reward, terminated, truncated, (n,))
        early = np.flatnonzero((terminated | truncated)[:-1])
        if len(early):
            raise ValueError(f"the episode ends (terminated or truncated) at step {early[0]} of {n}: "
                             "only its last step may carry a flag")
        if n + 1 > self.capacity:
            raise ValueError(f"an episode of {n} transitions needs {n + 1} steps, more than the capacity "
                             f"{self.capacity}")
        self._make_room(n + 1)
        no_action = np.zeros((1, *self.action_shape), self.action.dtype)
        self._append(obs, np.concatenate([no_action, action]), np.concatenate([[0.0], reward]).astype(np.float32),
                     np.concatenate([[False], terminated]), np.concatenate([[False], truncated]),
                     starts_episode=True)
        self._open = False  # add() extends only episodes begun with start_episode()

    def _make_room(self, n: int) -> None:
        """Drop the oldest whole episodes until ``n`` more steps fit (callers checked they can)."""
        while len(self) + n > self.capacity:
            self._episode_starts.popleft()
            self._first = self._episode_starts[0] if self._episode_starts else self._end

    def _append(self, obs, action, reward, terminated, truncated, starts_episode: bool) -> None:
        """Write ``n`` checked steps (leading dimension ``n``) after the newest stored step;
        with ``starts_episode`` the first of them begins a new episode."""
        n = len(reward)
        slots = (self._end + np.arange(n)) % self.capacity
        if starts_episode:
            self._episode_starts.append(self._end)
        self.obs[slots], self.action[slots], self.reward[slots] = obs, action, reward
        self.terminated[slots], self.truncated[slots] = terminated, truncated
        self.is_first[slots] = np.arange(n) == 0 if starts_episode else False
        self._end += n

    # -- reading ------------------------------------------------------------------------

    def sample(self, batch_size: int, length: int, device: torch.device | str = "cpu") -> SequenceBatch:
        """``batch_size`` chunks of ``length`` consecutive steps, their starts drawn uniformly with
        replacement by the buffer's own generator, as a :class:`SequenceBatch` on ``device``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if length < 1:
            raise ValueError(f"chunk length must be at least 1, got {length}")
        if length > len(self):
            raise ValueError(f"cannot sample chunks of {length} steps: the buffer holds {len(self)} steps")
        starts = self._first + self.rng.integers(0, len(self) - length + 1, size=batch_size)
        slots = (starts[:, None] + np.arange(length)[None, :]) % self.capacity
        arrays = (self.obs, self.action, self.reward, self.terminated, self.truncated, self.is_first)
        batch = SequenceBatch(*(torch.from_numpy(array[slots]) for array in arrays)).to(device)
        if self.action_kind == "multibinary":  # bool on the way to the device, float32 for models
            batch = replace(batch, action=batch.action.float())
        return batch

    def _episode_between(self, start: int, stop: int) -> Episode:
        slots = np.arange(start, stop) % self.capacity
        steps = slots[1:]
        return Episode(self.obs[slots], self.action[steps], self.reward[steps],
                       self.terminated[steps], self.truncated[steps])

    def episode(self, index: int) -> Episode:
        """Episode ``index`` (0 the oldest stored, -1 the newest) as NumPy arrays (copies)."""
        n = self.num_episodes
        if not -n <= index < n:
            raise IndexError(f"episode {index} is out of range: the buffer holds {n} episodes")
        index %= n
        stop = self._episode_starts[index + 1] if index + 1 < n else self._end
        return self._episode_between(self._episode_starts[index], stop)

    def episodes(self) -> Iterator[Episode]:
        """Every stored episode, oldest first (the newest may be open or cut off)."""
        bounds = [*self._episode_starts, self._end]
        for start, stop in zip(bounds[:-1], bounds[1:]):
            yield self._episode_between(start, stop)

    # -- files --------------------------------------------------------------------------

    def _chronological(self, array: np.ndarray) -> np.ndarray:
        """The stored rows of ``array``, oldest first (a view unless they wrap around)."""
        first, size = self._first % self.capacity, len(self)
        if first + size <= self.capacity:
            return array[first : first + size]
        return np.concatenate([array[first:], array[: first + size - self.capacity]])

    def save(self, path: str | os.PathLike, compress: bool = False) -> Path:
        """Write the episodes, the open-episode state and the sampling state to ``path`` (.npz),
        atomically. ``compress=True`` shrinks frames several times over but is slow."""
        path = Path(path)
        meta = {
            "kind": "SequenceBuffer",
            "format": _SEQUENCE_FORMAT,
            "capacity": self.capacity,
            "obs_shape": list(self.obs_shape),
            "obs_dtype": self.obs.dtype.str,
            "action_kind": self.action_kind,
            "action_shape": list(self.action_shape),
            "n_actions": self.n_actions,
            "open": self._open,
            "rng_state": self.rng.bit_generator.state,
        }
        arrays = {key: self._chronological(getattr(self, key)) for key in _STEP_FIELDS}
        starts = np.array(self._episode_starts, dtype=np.int64) - self._first
        write = np.savez_compressed if compress else np.savez
        with atomic_write(path, "wb") as handle:
            write(handle, meta=np.array(json.dumps(meta)), episode_starts=starts, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SequenceBuffer":
        """Read a buffer written by :meth:`save`; a missing or malformed file raises a clear error."""
        path = Path(path)
        arrays = _read_npz(path, "sequence buffer", ("meta", *_STEP_FIELDS, "episode_starts"))
        try:
            meta = json.loads(str(arrays["meta"]))
            if not isinstance(meta, dict):
                raise TypeError(f"expected a JSON object, got {type(meta).__name__}")
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} has malformed sequence buffer metadata: {error!r}") from error
        if meta.get("kind") != "SequenceBuffer" or meta.get("format") != _SEQUENCE_FORMAT:
            raise ValueError(f"{path} holds {meta.get('kind')!r} format {meta.get('format')!r}, expected "
                             f"'SequenceBuffer' format {_SEQUENCE_FORMAT}")
        try:
            buffer = cls(meta["capacity"], tuple(meta["obs_shape"]), np.dtype(meta["obs_dtype"]),
                         meta["action_kind"], tuple(meta["action_shape"]), meta["n_actions"])
            buffer.rng.bit_generator.state = meta["rng_state"]
            is_open = meta["open"]
            if not isinstance(is_open, bool):
                raise TypeError(f"'open' must be true or false, got {is_open!r}")
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} has malformed sequence buffer metadata: {error!r}") from error
        size = arrays["reward"].shape[0] if arrays["reward"].ndim else -1
        for key in _STEP_FIELDS:
            stored = getattr(buffer, key)
            shape = (size, *stored.shape[1:])
            if arrays[key].shape != shape or arrays[key].dtype != stored.dtype:
                raise ValueError(f"{path}: array '{key}' is {arrays[key].dtype}{list(arrays[key].shape)}, "
                                 f"the metadata implies {stored.dtype}{list(shape)}")
        if size > buffer.capacity:
            raise ValueError(f"{path}: {size} steps do not fit the capacity {buffer.capacity}")
        starts = arrays["episode_starts"]
        well_formed = (
            starts.ndim == 1 and starts.dtype.kind in "iu" and (len(starts) > 0) == (size > 0)
            and (size == 0 or (starts[0] == 0 and np.all(np.diff(starts) > 0) and starts[-1] < size))
        )
        if not well_formed or (is_open and size == 0):
            raise ValueError(f"{path}: episode_starts {starts[:10].tolist()} do not split {size} steps into "
                             f"episodes{' (an open episode in an empty buffer)' if is_open else ''}")
        last = np.zeros(size, dtype=bool)  # each episode's last step, the only one that may end it
        last[starts[1:] - 1] = True
        last[-1:] = True
        flagged = np.flatnonzero((arrays["terminated"] | arrays["truncated"]) & ~last)
        if len(flagged):
            raise ValueError(f"{path}: steps {flagged[:10].tolist()} end an episode that goes on after them")
        for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), size]):
            buffer._append(*(arrays[key][start:stop] for key in _STEP_FIELDS), starts_episode=True)
        buffer._open = is_open
        return buffer
