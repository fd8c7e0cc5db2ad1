"""Single transitions for Q-learning and one-step models: :class:`ReplayBuffer` keeps
``capacity`` transitions in preallocated NumPy arrays (a ring: the oldest transition is
overwritten once it is full), adds in O(1), samples transitions or windows of consecutive
transitions uniformly into torch tensors on any device, and round-trips through ``.npz``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from wmbook.checkpoint import atomic_write
from wmbook.device import to_device

_BUFFER_FORMAT = 1
_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


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


def checked(name: str, value, shape: tuple[int, ...], kinds: str, finite: bool) -> np.ndarray:
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


def _all_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether rows ``a[i]`` and ``b[i]`` are equal value for value (``(n, ...)`` -> ``(n,)``)."""
    same = a == b
    return np.all(same, axis=tuple(range(1, same.ndim)))


def read_npz(path: Path, kind: str, required: tuple[str, ...]) -> dict[str, np.ndarray]:
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

    Args:
        capacity: how many transitions to keep; older ones are overwritten.
        obs_shape: shape of one observation, e.g. ``(4,)`` for CartPole.
        action_shape: shape of one action: ``()`` for a discrete action index.
        action_dtype: ``np.int64`` for discrete actions, ``np.float32`` for continuous ones.
        seed: seed of the buffer's own sampling generator (used by :meth:`sample`).
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
        self.next_obs = np.zeros((self.capacity, *self.obs_shape), dtype=np.float32)
        self.terminated = np.zeros(self.capacity, dtype=bool)
        self.truncated = np.zeros(self.capacity, dtype=bool)
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
        """Bytes held by the storage."""
        return sum(getattr(self, key).nbytes for key in (*_FIELDS, "_continues"))

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
        values = (
            checked("obs", obs, self.obs_shape, "fiub", True),
            checked("action", action, self.action_shape, self._action_kinds(), True),
            checked("reward", reward, (), "fiub", True),
            checked("next_obs", next_obs, self.obs_shape, "fiub", True),
            checked("terminated", terminated, (), "biu", False),
            checked("truncated", truncated, (), "biu", False),
        )
        self._write(*(value[None] for value in values))

    def add_batch(self, obs, action, reward, next_obs, terminated, truncated=None) -> None:
        """Store ``B`` transitions at once (leading dimension ``B`` on every argument)."""
        obs = np.asarray(obs)
        n = obs.shape[0] if obs.ndim else 0
        if truncated is None:
            truncated = np.zeros(n, dtype=bool)
        arrays = (
            checked("obs", obs, (n, *self.obs_shape), "fiub", True),
            checked("action", action, (n, *self.action_shape), self._action_kinds(), True),
            checked("reward", reward, (n,), "fiub", True),
            checked("next_obs", next_obs, (n, *self.obs_shape), "fiub", True),
            checked("terminated", terminated, (n,), "biu", False),
            checked("truncated", truncated, (n,), "biu", False),
        )
        # only the newest `capacity` transitions survive
        self._write(*(value[-self.capacity :] for value in arrays))

    def _write(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        """Put ``n <= capacity`` checked transitions (leading dimension ``n``) after the newest,
        and note which of them go on with the next one (consecutiveness is read off the data,
        at the stored precision: each ``next_obs`` is the following ``obs``, with no end between)."""
        n = len(reward)
        if n == 0:
            return
        obs, next_obs = np.asarray(obs, dtype=np.float32), np.asarray(next_obs, dtype=np.float32)
        ended = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        if self._size and n < self.capacity:  # the newest stored transition precedes this batch
            previous = (self._next - 1) % self.capacity
            self._continues[previous] = not (self.terminated[previous] or self.truncated[previous]) \
                and bool(np.all(self.next_obs[previous] == obs[0]))
        slots = (self._next + np.arange(n)) % self.capacity
        for key, value in zip(_FIELDS, (obs, action, reward, next_obs, terminated, truncated)):
            getattr(self, key)[slots] = value
        continues = np.zeros(n, dtype=bool)
        continues[:-1] = ~ended[:-1] & _all_equal(next_obs[:-1], obs[1:])
        self._continues[slots] = continues
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    # -- reading ------------------------------------------------------------------------

    def _gather(self, idx: np.ndarray, device: torch.device | str) -> Transitions:
        return Transitions(*(torch.from_numpy(getattr(self, key)[idx]) for key in _FIELDS)).to(device)

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

    def windows(self, length: int, device: torch.device | str = "cpu") -> Transitions:
        """Every run of ``length`` consecutive transitions of one episode, as ``Transitions``
        of shape ``(N, length, ...)``, oldest first.

        A window may end with an episode's last transition but never crosses an episode end.
        Consecutiveness is checked on the data (each ``next_obs`` is the following ``obs``), so
        separately collected batches are never joined. All ``N`` windows are built at once,
        about ``length`` times the memory of the buffer.
        """
        if length < 1:
            raise ValueError(f"window length must be at least 1, got {length}")
        order = self.chronological_indices()
        joined = self._continues[order[:-1]]
        # a window starting at position p needs links p -> p+1, ..., p+length-2 all joined
        broken = np.concatenate([[0], np.cumsum(~joined)])
        starts = np.arange(max(0, self._size - length + 1))
        starts = starts[broken[starts + length - 1] - broken[starts] == 0]
        return self._gather(order[starts[:, None] + np.arange(length)[None, :]], device)

    # -- files --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the buffer (contents, position and sampling state) to ``path`` (.npz), atomically."""
        path = Path(path)
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
            np.savez_compressed(handle, meta=np.array(json.dumps(meta)), **{key: getattr(self, key) for key in _FIELDS})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReplayBuffer":
        """Read a buffer written by :meth:`save`; a missing or malformed file raises a clear error."""
        path = Path(path)
        arrays = read_npz(path, "replay buffer", ("meta", *_FIELDS))
        try:
            meta = json.loads(str(arrays["meta"]))
            buffer = cls(meta["capacity"], tuple(meta["obs_shape"]), tuple(meta["action_shape"]),
                         np.dtype(meta["action_dtype"]))
            size, next_slot = int(meta["size"]), int(meta["next"])
            buffer.rng.bit_generator.state = meta["rng_state"]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} has malformed buffer metadata: {error!r}") from error
        if meta.get("format") != _BUFFER_FORMAT:
            raise ValueError(f"{path} has buffer format {meta.get('format')!r}, expected {_BUFFER_FORMAT}")
        for key in _FIELDS:
            expected = getattr(buffer, key)
            if arrays[key].shape != expected.shape or arrays[key].dtype != expected.dtype:
                raise ValueError(
                    f"{path}: array '{key}' is {arrays[key].dtype}{list(arrays[key].shape)}, the "
                    f"metadata implies {expected.dtype}{list(expected.shape)}"
                )
        if not (0 <= size <= buffer.capacity and 0 <= next_slot < buffer.capacity
                and (size in (next_slot, buffer.capacity))):
            raise ValueError(f"{path}: size {size} / position {next_slot} do not fit capacity {buffer.capacity}")
        order = (next_slot - size + np.arange(size)) % buffer.capacity  # oldest first
        # rewriting the transitions in their slots rebuilds the links exactly as they were
        buffer._next = int(order[0]) if size else next_slot
        buffer._write(*(arrays[key][order] for key in _FIELDS))
        return buffer
