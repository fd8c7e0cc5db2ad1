"""The interface every world model of the book meets, so that one ``imagine`` and one dream
environment serve them all.

A world model keeps a *latent state* per batch row and offers four operations:

* ``initial_state(batch_size, device)``: the latent before anything has been observed;
* ``observe(latent, action, obs, is_first)``: filter one real observation into the latent (the
  posterior). ``action`` is the action taken *before* ``obs`` (``None`` when every row is a
  first step); rows where ``is_first`` is true start over from ``initial_state`` before
  filtering, as in Dreamer, so one batch can hold episodes that began at different times;
* ``imagine_step(latent, action)``: one step without observing (the prior), returning a
  :class:`Step` with the next latent, the reward and the probability of *not* terminating;
* ``features(latent)``: the ``(B, F)`` vector a policy or value function sees.

A model that can render what it imagines also offers ``decode(latent)``, an observation
``(B, ...)``. A model may declare ``action_shape``, the shape of one row's action, so that
callers can check actions before they reach it.

Latents. A latent is a tensor or a container of tensors (a NamedTuple, tuple, list, dict or
dataclass, nested as deep as needed), every tensor with the batch dimension first: the MLP
model's latent is the observation ``(B, obs_dim)``, an MDN-RNN's might be ``(z, h, c)``, an
RSSM's ``(h, z)``. :func:`latent_map` and the helpers built on it index, stack, detach and move
any of them.

Actions, one row each: integer indices ``(B,)`` for ``Discrete`` spaces, float 0/1 ``(B, n)``
for ``MultiBinary(n)`` (several labels at once, e.g. which surgical instruments act), float
``(B, *shape)`` for ``Box``.

Why a :class:`typing.Protocol` rather than an abstract base class: the models of later chapters
are ``nn.Module`` subclasses of very different make, and structural typing lets each meet the
interface by having the methods, without inheriting from or registering with anything here. The
shared code for models whose state *is* the observation lives in the mixin
:class:`MarkovWorldModel`, which the Chapter 1-3 models inherit, and :class:`PredictAdapter`
lifts any object with a ``predict(obs, action)`` method to the interface.
``isinstance(model, WorldModel)`` checks only that the methods exist, not their signatures.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import torch

# A tensor, or a (nested) NamedTuple, tuple, list, dict or dataclass of tensors, batch first.
Latent = Any


# -- latent helpers -------------------------------------------------------------------------


def latent_map(fn: Callable[..., torch.Tensor], latent: Latent, *others: Latent) -> Latent:
    """Apply ``fn`` to every tensor of ``latent`` and return a latent of the same structure.

    With ``others`` (latents of the same structure), ``fn`` receives the matching tensors of
    all of them, e.g. ``latent_map(torch.add, a, b)``. ``None`` entries are kept as they are.
    """
    if isinstance(latent, torch.Tensor):
        for other in others:
            if not isinstance(other, torch.Tensor):
                raise TypeError(f"latents differ in structure: a tensor against {type(other).__name__}")
        return fn(latent, *others)
    if latent is None:
        return None
    _check_same_kind(latent, others)
    if isinstance(latent, tuple) and hasattr(latent, "_fields"):  # a NamedTuple
        return type(latent)(*(latent_map(fn, *parts) for parts in zip(latent, *others)))
    if isinstance(latent, (tuple, list)):
        return type(latent)(latent_map(fn, *parts) for parts in zip(latent, *others))
    if isinstance(latent, dict):
        return {key: latent_map(fn, value, *(other[key] for other in others))
                for key, value in latent.items()}
    if dataclasses.is_dataclass(latent) and not isinstance(latent, type):
        names = [f.name for f in dataclasses.fields(latent) if f.init]
        return dataclasses.replace(latent, **{
            name: latent_map(fn, getattr(latent, name), *(getattr(other, name) for other in others))
            for name in names})
    raise TypeError(f"a latent holds tensors in tuples, lists, dicts or dataclasses; "
                    f"found {type(latent).__name__}")


def _check_same_kind(latent: Latent, others: tuple) -> None:
    for other in others:
        if type(other) is not type(latent):
            raise TypeError(f"latents differ in structure: {type(latent).__name__} against "
                            f"{type(other).__name__}")
        if isinstance(latent, (tuple, list)) and len(other) != len(latent):
            raise TypeError(f"latents differ in structure: {len(latent)} parts against {len(other)}")
        if isinstance(latent, dict) and other.keys() != latent.keys():
            raise TypeError(f"latents differ in structure: keys {sorted(latent)} against {sorted(other)}")


def latent_tensors(latent: Latent) -> list[torch.Tensor]:
    """Every tensor of ``latent``, in a fixed order."""
    found: list[torch.Tensor] = []

    def collect(x: torch.Tensor) -> torch.Tensor:
        found.append(x)
        return x
    latent_map(collect, latent)
    return found


def latent_batch_size(latent: Latent) -> int:
    """The batch size ``B`` shared by every tensor of ``latent``; an error if they disagree."""
    sizes = {tuple(x.shape[:1]) for x in latent_tensors(latent)}
    if len(sizes) != 1 or () in sizes:
        shapes = [tuple(x.shape) for x in latent_tensors(latent)]
        raise ValueError(f"every tensor of a latent needs the same batch dimension first, "
                         f"got shapes {shapes}")
    return sizes.pop()[0]


def latent_index(latent: Latent, index) -> Latent:
    """Rows ``index`` (an int, slice, boolean mask or index tensor) of every tensor."""
    return latent_map(lambda x: x[index], latent)


def latent_stack(latents: Iterable[Latent], dim: int = 1) -> Latent:
    """Stack latents of the same structure along a new ``dim`` (1: ``(B, T, ...)`` sequences)."""
    latents = list(latents)
    if not latents:
        raise ValueError("latent_stack needs at least one latent")
    return latent_map(lambda *xs: torch.stack(xs, dim), *latents)


def latent_cat(latents: Iterable[Latent], dim: int = 0) -> Latent:
    """Concatenate latents of the same structure along ``dim`` (0: join batches)."""
    latents = list(latents)
    if not latents:
        raise ValueError("latent_cat needs at least one latent")
    return latent_map(lambda *xs: torch.cat(xs, dim), *latents)


def latent_detach(latent: Latent) -> Latent:
    """The latent cut from the autograd graph (e.g. imagination starts from detached posteriors)."""
    return latent_map(torch.Tensor.detach, latent)


def latent_to(latent: Latent, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> Latent:
    """The latent on ``device``; with ``dtype``, its floating-point tensors cast to it."""
    def move(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, dtype) if dtype is not None and x.is_floating_point() else x.to(device)
    return latent_map(move, latent)


def latent_where(condition: torch.Tensor, where_true: Latent, where_false: Latent) -> Latent:
    """Row by row, ``where_true`` where ``condition`` ``(B,)`` holds, else ``where_false``."""
    if condition.ndim != 1:
        raise ValueError(f"condition must have shape (B,), got {tuple(condition.shape)}")

    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[:1] != condition.shape or b.shape[:1] != condition.shape:
            raise ValueError(f"condition {tuple(condition.shape)} does not match latent rows "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        mask = condition.to(device=a.device, dtype=torch.bool).reshape(-1, *([1] * (a.ndim - 1)))
        return torch.where(mask, a, b)
    return latent_map(pick, where_true, where_false)


def reset_first(model: "WorldModel", latent: Latent, is_first: torch.Tensor) -> Latent:
    """``latent`` with the rows where ``is_first`` ``(B,)`` holds replaced by the model's
    ``initial_state``: the first thing ``observe`` does (Dreamer's convention)."""
    if is_first.dtype != torch.bool or is_first.ndim != 1:
        raise ValueError(f"is_first must be a (B,) bool tensor, got {tuple(is_first.shape)} {is_first.dtype}")
    if not is_first.any():
        return latent
    tensors = latent_tensors(latent)
    initial = model.initial_state(len(is_first), tensors[0].device if tensors else is_first.device)
    return latent_where(is_first, initial, latent)


# -- the interface ----------------------------------------------------------------------------


class Step:
    """One imagined step of a batch of ``B`` latents.

    Attributes:
        latent: the next latent.
        reward: ``(B,)`` predicted reward of the step.
        continuation: ``(B,)`` probability that the episode does *not* terminate at this step.
        done_prob: ``(B,)`` probability that it does, ``1 - continuation``.
        disagreement: ``(B,)`` an uncertainty score (an ensemble's spread), or ``None``.

    Give exactly one of ``continuation`` or ``done_prob``: whichever the model's head predicts
    is kept exactly, and the other is derived from it (``1 - (1 - p)`` is not always ``p`` in
    floating point, and Chapters 1-3 compare termination probabilities exactly).
    """

    __slots__ = ("latent", "reward", "disagreement", "_continuation", "_done_prob")

    def __init__(self, latent: Latent, reward: torch.Tensor, continuation: torch.Tensor | None = None, *,
                 done_prob: torch.Tensor | None = None, disagreement: torch.Tensor | None = None):
        if (continuation is None) == (done_prob is None):
            raise ValueError("give exactly one of `continuation` and `done_prob`")
        self.latent, self.reward, self.disagreement = latent, reward, disagreement
        self._continuation, self._done_prob = continuation, done_prob

    @property
    def continuation(self) -> torch.Tensor:
        return self._continuation if self._continuation is not None else 1 - self._done_prob

    @property
    def done_prob(self) -> torch.Tensor:
        return self._done_prob if self._done_prob is not None else 1 - self._continuation

    def __repr__(self) -> str:
        return (f"Step(reward={tuple(self.reward.shape)}, continuation={tuple(self.continuation.shape)}, "
                f"disagreement={'None' if self.disagreement is None else tuple(self.disagreement.shape)})")


@runtime_checkable
class WorldModel(Protocol):
    """A world model with a latent state; see the module docstring for the conventions."""

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> Latent:
        """The latent of ``batch_size`` rows before any observation."""
        ...

    def observe(self, latent: Latent, action: torch.Tensor | None, obs: torch.Tensor,
                is_first: torch.Tensor) -> Latent:
        """Filter ``obs`` ``(B, ...)``, reached by ``action`` ``(B, ...)`` (``None``: all rows
        first), into ``latent``; rows where ``is_first`` ``(B,)`` bool holds start over."""
        ...

    def imagine_step(self, latent: Latent, action: torch.Tensor) -> Step:
        """Advance ``latent`` by ``action`` ``(B, ...)`` without observing."""
        ...

    def features(self, latent: Latent) -> torch.Tensor:
        """The ``(B, F)`` vector a policy sees."""
        ...


@runtime_checkable
class DecodingWorldModel(WorldModel, Protocol):
    """A world model that can also render its latent as an observation."""

    def decode(self, latent: Latent) -> torch.Tensor:
        """The observation ``(B, ...)`` the model expects for ``latent``."""
        ...


class MarkovWorldModel:
    """The interface for a model whose state is the observation itself, built on its
    ``predict(obs (B, obs_dim), action (B,) int) -> Prediction`` (the models of Chapters 1-3).

    The latent is the observation: ``observe`` returns ``obs`` (a Markov state needs no history,
    so ``is_first`` changes nothing), ``features`` and ``decode`` return the latent, and
    ``imagine_step`` is one ``predict`` call, its numbers unchanged. Actions are integer
    indices ``(B,)``.
    """

    action_shape: tuple[int, ...] = ()

    def _state_dim(self) -> int:
        obs_dim = getattr(getattr(self, "config", None), "obs_dim", None)
        if obs_dim is None:
            raise ValueError(f"{type(self).__name__} has no config.obs_dim to size an initial state")
        return int(obs_dim)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Zeros ``(batch_size, obs_dim)``; ``observe`` replaces them by the first observation."""
        return torch.zeros(batch_size, self._state_dim(), device=device)

    def observe(self, latent: torch.Tensor, action: torch.Tensor | None, obs: torch.Tensor,
                is_first: torch.Tensor) -> torch.Tensor:
        """The observation ``(B, obs_dim)`` is the new latent."""
        if obs.ndim != 2:
            raise ValueError(f"obs must have shape (B, obs_dim), got {tuple(obs.shape)}")
        if is_first.shape != obs.shape[:1]:
            raise ValueError(f"is_first must have shape ({obs.shape[0]},) to match obs, "
                             f"got {tuple(is_first.shape)}")
        return obs

    def imagine_step(self, latent: torch.Tensor, action: torch.Tensor) -> Step:
        """``predict(latent, action)`` as a :class:`Step`; ``done_prob`` is the model's own."""
        prediction = self.predict(latent, action)
        return Step(prediction.next_obs, prediction.reward, done_prob=prediction.done_prob,
                    disagreement=prediction.disagreement)

    def features(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return latent


class PredictAdapter(MarkovWorldModel):
    """Any object with ``predict(obs, action)`` (and optionally ``parameters()`` and
    ``config``) seen through the :class:`WorldModel` interface, as :class:`MarkovWorldModel`.

    ``obs_dim`` sizes ``initial_state`` when the model has no ``config.obs_dim``.
    """

    def __init__(self, model, obs_dim: int | None = None):
        if not callable(getattr(model, "predict", None)):
            raise TypeError(f"{type(model).__name__} has no predict(obs, action) method to adapt")
        self.model, self.config = model, getattr(model, "config", None)
        self._obs_dim = obs_dim

    def _state_dim(self) -> int:
        return self._obs_dim if self._obs_dim is not None else super()._state_dim()

    def predict(self, obs: torch.Tensor, action: torch.Tensor):
        return self.model.predict(obs, action)

    def parameters(self):
        parameters = getattr(self.model, "parameters", None)
        return parameters() if callable(parameters) else iter(())


def as_world_model(model, obs_dim: int | None = None) -> WorldModel:
    """``model`` itself if it meets :class:`WorldModel`, else a :class:`PredictAdapter` of its
    ``predict`` method (``obs_dim`` as there); a ``TypeError`` naming what is missing otherwise."""
    if isinstance(model, (MarkovWorldModel, WorldModel)):  # the first test is the cheap one
        return model
    if callable(getattr(model, "predict", None)):
        return PredictAdapter(model, obs_dim)
    missing = [name for name in ("initial_state", "observe", "imagine_step", "features")
               if not callable(getattr(model, name, None))]
    raise TypeError(f"{type(model).__name__} is not a world model: it lacks {', '.join(missing)} "
                    f"(and has no predict(obs, action) to adapt)")


def model_device(model) -> torch.device:
    """The device of the model's first parameter or buffer; the CPU for a model with neither."""
    for method in ("parameters", "buffers"):
        tensors = getattr(model, method, None)
        if callable(tensors):
            first = next(iter(tensors()), None)
            if first is not None:
                return first.device
    return torch.device("cpu")


def model_dtype(model) -> torch.dtype:
    """The floating-point dtype of the model's first parameter; ``float32`` otherwise."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return first.dtype if first is not None and first.is_floating_point() else torch.float32
