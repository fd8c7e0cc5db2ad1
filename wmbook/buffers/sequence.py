"""Whole episodes for recurrent world models: :class:`SequenceBuffer` keeps episodes (one
observation per time step, frames as uint8) and samples fixed-length chunks of consecutive time
steps (MDN-RNN, RSSM) as a :class:`SequenceBatch`."""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from wmbook.buffers.replay import checked, read_npz
from wmbook.checkpoint import atomic_write
from wmbook.device import to_device

if TYPE_CHECKING:
    import gymnasium as gym


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
        """Stored time steps (observations), each episode's first included; what capacity counts."""
        return self._end - self._first

    @property
    def num_episodes(self) -> int:
        """Stored episodes, an open or cut-off newest one included."""
        return len(self._episode_starts)

    @property
    def episode_open(self) -> bool:
        """Whether :meth:`add` may extend the newest episode (it has had no flag yet)."""
        return self._open

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
        array = checked(name, array, shape, "fiub", finite=False)
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
            array = checked("action", action, shape, "iu", finite=False)
            high = self.n_actions
            if array.size and (array.min() < 0 or (high is not None and array.max() >= high)):
                allowed = f"0..{high - 1}" if high is not None else "non-negative"
                raise ValueError(f"action holds indices in [{array.min()}, {array.max()}]; allowed: {allowed}")
            return array.astype(np.int64)
        if self.action_kind == "multibinary":
            array = checked("action", action, shape, "fiub", finite=False)
            if array.dtype.kind != "b" and not np.all((array == 0) | (array == 1)):
                others = np.unique(array[(array != 0) & (array != 1)])
                raise ValueError(f"a multi-label action holds only 0 and 1, got {others[:5].tolist()}")
            return array.astype(bool)
        array = checked("action", action, shape, "fiu", finite=True)
        return array.astype(np.float32)

    def _check_steps(self, reward, terminated, truncated, shape: tuple[int, ...]):
        """Rewards (float32) and the two end flags (bool), each of ``shape``."""
        reward = checked("reward", reward, shape, "fiub", finite=True).astype(np.float32)
        terminated = checked("terminated", terminated, shape, "biu", finite=False).astype(bool)
        truncated = checked("truncated", truncated, shape, "biu", finite=False).astype(bool)
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
        arrays = read_npz(path, "sequence buffer", ("meta", *_STEP_FIELDS, "episode_starts"))
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
