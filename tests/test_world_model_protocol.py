"""wmbook.models.base and wmbook.rollout.imagine: one interface for Markov and recurrent world
models, latent helpers, and identical numbers for the MLP models of Chapters 1-3."""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pytest
import torch

from wmbook.models import (
    DecodingWorldModel,
    DynamicsConfig,
    DynamicsEnsemble,
    DynamicsModel,
    MarkovWorldModel,
    PredictAdapter,
    Prediction,
    Step,
    WorldModel,
    as_world_model,
    latent_batch_size,
    latent_cat,
    latent_detach,
    latent_index,
    latent_map,
    latent_stack,
    latent_to,
    latent_where,
    reset_first,
)
from wmbook.rollout import Rollout, imagine

OBS_DIM = 2


class CounterState(NamedTuple):
    count: torch.Tensor  # (B,) a hidden counter: no observation shows it
    last: torch.Tensor   # (B, OBS_DIM) the last real observation


class CounterModel(torch.nn.Module):
    """A recurrent toy world model with known dynamics.

    ``observe`` adds 1 to a hidden counter (after starting it over at 0 on ``is_first`` rows)
    and remembers the observation; ``imagine_step`` adds ``gain`` times the action (an index,
    or the sum of a vector action) and rewards the new count. The episode continues with
    probability ``p_continue`` while the count is below ``limit``, and surely ends from there.
    ``features`` are ``[last, count]``, ``decode`` the last observation. ``action_shape`` ``()``
    takes int64 indices ``(B,)``, ``(n,)`` float vectors ``(B, n)``; anything else is refused,
    so a caller that hands over the wrong kind of action fails loudly.
    """

    def __init__(self, action_shape=(), gain=1.0, limit=float("inf"), p_continue=1.0, nan=False):
        super().__init__()
        self.action_shape = tuple(action_shape)
        self.gain = torch.nn.Parameter(torch.tensor(float(gain)))
        self.limit, self.p_continue, self.nan = limit, p_continue, nan

    def initial_state(self, batch_size, device=None):
        return CounterState(torch.zeros(batch_size, device=device),
                            torch.zeros(batch_size, OBS_DIM, device=device))

    def observe(self, latent, action, obs, is_first):
        latent = reset_first(self, latent, is_first)
        return CounterState(latent.count + 1, obs.to(torch.float32))

    def imagine_step(self, latent, action):
        batch = latent.count.shape[0]
        if self.action_shape == ():
            if action.dtype != torch.int64 or action.shape != (batch,):
                raise TypeError(f"expected int64 actions ({batch},), "
                                f"got {action.dtype} {tuple(action.shape)}")
            total = action.to(torch.float32)
        else:
            if not action.is_floating_point() or action.shape != (batch, *self.action_shape):
                raise TypeError(f"expected float actions {(batch, *self.action_shape)}, "
                                f"got {action.dtype} {tuple(action.shape)}")
            total = action.sum(-1)
        count = latent.count + self.gain * total
        reward = count.clone() if not self.nan else torch.full_like(count, float("nan"))
        continuation = torch.where(count >= self.limit, 0.0, self.p_continue)
        return Step(CounterState(count, latent.last), reward, continuation)

    def features(self, latent):
        return torch.cat([latent.last, latent.count[:, None]], -1)

    def decode(self, latent):
        return latent.last


class PredictOnly:
    """Has only ``predict``: moves the state by ``action + 1``, done probability 0.25."""

    def predict(self, obs, action):
        batch = obs.shape[0]
        return Prediction(obs + (action.float() + 1)[:, None], obs[:, 0], torch.full((batch,), 0.25))


def _observe_sequence(model, observations, is_first):
    """Filter ``observations`` ``(B, T, OBS_DIM)`` one step at a time; ``is_first`` ``(B, T)``."""
    batch, steps = observations.shape[:2]
    latent = model.initial_state(batch)
    for t in range(steps):
        previous_action = None if t == 0 else torch.zeros(batch, dtype=torch.long)
        latent = model.observe(latent, previous_action, observations[:, t], is_first[:, t])
    return latent


# -- the interface ------------------------------------------------------------------------------


def test_every_kind_of_model_meets_the_interface():
    config = DynamicsConfig(hidden_size=8, n_layers=1)
    for model in (DynamicsModel(config), DynamicsEnsemble(config, n_members=2), CounterModel()):
        assert isinstance(model, WorldModel) and isinstance(model, DecodingWorldModel)
        assert as_world_model(model) is model
    adapted = as_world_model(PredictOnly(), obs_dim=3)
    assert isinstance(adapted, PredictAdapter) and isinstance(adapted, MarkovWorldModel)
    assert isinstance(adapted, WorldModel)
    assert adapted.initial_state(2).shape == (2, 3)
    assert not isinstance(PredictOnly(), WorldModel)


def test_a_non_model_is_refused_naming_what_it_lacks():
    class HalfModel:
        def features(self, latent):
            return latent

    with pytest.raises(TypeError,
                       match="HalfModel is not a world model: it lacks initial_state, observe, imagine_step"):
        as_world_model(HalfModel())
    with pytest.raises(ValueError, match="PredictAdapter has no config.obs_dim"):
        PredictAdapter(PredictOnly()).initial_state(2)


def test_mlp_model_as_a_markov_world_model(trained_model):
    model = trained_model[0]
    obs = torch.tensor([[0.0, 0.1, -0.02, 0.3], [0.5, -0.1, 0.01, 0.0]])
    latent = model.observe(model.initial_state(2), None, obs, torch.tensor([True, False]))
    assert latent is obs and model.features(latent) is obs and model.decode(latent) is obs
    assert model.initial_state(3).shape == (3, 4) and model.action_shape == ()
    action = torch.tensor([0, 1])
    step = model.imagine_step(latent, action)
    expected = model.predict(obs, action)
    # the very tensors predict returns: no rounding through 1 - (1 - p)
    assert torch.equal(step.latent, expected.next_obs) and torch.equal(step.reward, expected.reward)
    assert torch.equal(step.done_prob, expected.done_prob) and step.disagreement is None
    assert torch.equal(step.continuation, 1 - expected.done_prob)


def test_step_holds_exactly_one_of_continuation_and_done_prob():
    p = torch.tensor([1e-9, 0.3, 0.999])
    from_done = Step(torch.zeros(3, 1), torch.zeros(3), done_prob=p)
    assert from_done.done_prob is p and torch.equal(from_done.continuation, 1 - p)
    from_continuation = Step(torch.zeros(3, 1), torch.zeros(3), 1 - p)
    assert torch.equal(from_continuation.done_prob, 1 - (1 - p))
    assert from_continuation.done_prob[0] != p[0]  # why the model's own number is kept
    with pytest.raises(ValueError, match="exactly one of `continuation` and `done_prob`"):
        Step(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match="exactly one"):
        Step(torch.zeros(3, 1), torch.zeros(3), 1 - p, done_prob=p)


# -- latent helpers -----------------------------------------------------------------------------


@dataclass
class Belief:
    h: torch.Tensor
    parts: dict


def _nested(batch=3, offset=0.0):
    base = torch.arange(batch, dtype=torch.float32) + offset
    return Belief(h=base[:, None].repeat(1, 4),
                  parts={"z": [base[:, None, None].repeat(1, 2, 2)], "none": None})


def test_latent_map_keeps_any_nesting_and_combines_latents():
    latent = _nested()
    doubled = latent_map(lambda x: 2 * x, latent)
    assert isinstance(doubled, Belief) and doubled.parts["none"] is None
    assert torch.equal(doubled.h, 2 * latent.h)
    assert torch.equal(doubled.parts["z"][0], 2 * latent.parts["z"][0])
    summed = latent_map(torch.add, latent, _nested(offset=10.0))
    assert torch.equal(summed.h[:, 0], torch.tensor([10.0, 12.0, 14.0]))
    state = CounterState(torch.ones(2), torch.zeros(2, OBS_DIM))
    assert isinstance(latent_map(torch.neg, state), CounterState)


def test_latent_structure_errors_are_named():
    with pytest.raises(TypeError, match="latents differ in structure: keys"):
        latent_map(torch.add, {"a": torch.zeros(1)}, {"b": torch.zeros(1)})
    with pytest.raises(TypeError, match="latents differ in structure: 2 parts against 1"):
        latent_map(torch.add, (torch.zeros(1), torch.zeros(1)), (torch.zeros(1),))
    with pytest.raises(TypeError, match="found str"):
        latent_map(torch.neg, {"a": "text"})
    with pytest.raises(ValueError, match=r"same batch dimension first, got shapes \[\(3, 4\), \(2, 2, 2\)\]"):
        latent_batch_size(Belief(torch.zeros(3, 4), {"z": [torch.zeros(2, 2, 2)]}))


def test_latent_index_stack_cat_detach_and_to():
    latent = _nested()
    assert latent_batch_size(latent) == 3
    row = latent_index(latent, slice(1, 2))
    assert latent_batch_size(row) == 1 and torch.equal(row.h, latent.h[1:2])
    sequence = latent_stack([latent, _nested(offset=5.0)], dim=1)
    assert sequence.h.shape == (3, 2, 4) and sequence.parts["z"][0].shape == (3, 2, 2, 2)
    assert torch.equal(latent_index(sequence, (slice(None), 1)).h, _nested(offset=5.0).h)
    joined = latent_cat([latent, row])
    assert latent_batch_size(joined) == 4 and torch.equal(joined.h[3], latent.h[1])
    tracked = latent_map(lambda x: x.clone().requires_grad_(), latent)
    assert not latent_detach(tracked).h.requires_grad and tracked.h.requires_grad
    moved = latent_to(CounterState(torch.ones(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.int64)),
                      "cpu", torch.float32)
    assert moved.count.dtype == torch.float32 and moved.last.dtype == torch.int64  # integers stay integers


def test_latent_where_and_reset_first_change_only_the_first_rows():
    model = CounterModel()
    latent = CounterState(torch.tensor([5.0, 5.0, 5.0]), torch.ones(3, OBS_DIM))
    reset = reset_first(model, latent, torch.tensor([False, True, False]))
    assert reset.count.tolist() == [5.0, 0.0, 5.0]
    assert reset.last.tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    assert reset_first(model, latent, torch.zeros(3, dtype=torch.bool)) is latent
    picked = latent_where(torch.tensor([True, False]), torch.ones(2, 3), torch.zeros(2, 3))
    assert picked.tolist() == [[1.0] * 3, [0.0] * 3]
    with pytest.raises(ValueError, match=r"is_first must be a \(B,\) bool tensor"):
        reset_first(model, latent, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"condition \(2,\) does not match latent rows"):
        latent_where(torch.tensor([True, False]), torch.ones(3, 1), torch.zeros(3, 1))


# -- recurrent state through observe and imagine ------------------------------------------------


def test_observe_then_imagine_carries_the_hidden_state():
    model = CounterModel()
    observations = torch.arange(12, dtype=torch.float32).reshape(2, 3, OBS_DIM)
    # row 1 starts a new episode at its last observation
    is_first = torch.tensor([[True, False, False], [True, False, True]])
    latent = _observe_sequence(model, observations, is_first)
    assert latent.count.tolist() == [3.0, 1.0]
    actions = torch.tensor([[1, 0], [2, 1]])
    rollout = imagine(model, None, 2, actions=actions, start_latent=latent)
    assert rollout.rewards.tolist() == [[4.0, 4.0], [3.0, 4.0]]
    assert rollout.states.shape == (2, 3, OBS_DIM + 1)
    assert rollout.states[:, :, -1].tolist() == [[3.0, 4.0, 4.0], [1.0, 3.0, 4.0]]
    assert torch.equal(rollout.states[:, 0, :OBS_DIM], observations[:, -1])
    assert isinstance(rollout.latents, CounterState) and rollout.latents.count.shape == (2, 3)
    assert rollout.latents.last.shape == (2, 3, OBS_DIM)
    # starting from the last observation alone (all a Markov model has) forgets the counter
    markov = imagine(model, observations[:, -1], 2, actions=actions)
    assert markov.rewards.tolist() == [[2.0, 2.0], [3.0, 4.0]]


def test_imagine_with_multibinary_actions_and_continuation():
    model = CounterModel(action_shape=(3,), limit=4.0, p_continue=0.75)
    actions = torch.tensor([[[1, 0, 1], [1, 1, 1], [0, 0, 0]],
                            [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], dtype=torch.float32)
    rollout = imagine(model, torch.zeros(2, OBS_DIM), 3, actions=actions)
    # counts start at 1 (one observation), then add the number of active labels
    assert rollout.rewards.tolist() == [[3.0, 6.0, 6.0], [1.0, 2.0, 2.0]]
    assert rollout.continuations.tolist() == [[0.75, 0.0, 0.0], [0.75] * 3]
    assert torch.equal(rollout.done_probs, 1 - rollout.continuations)
    assert rollout.alive.tolist() == [[True, True, False], [True] * 3]
    assert rollout.actions.shape == (2, 3, 3) and rollout.disagreement is None


def test_closed_loop_policy_sees_the_features():
    model = CounterModel()
    seen = []

    def policy(features):
        seen.append(features.clone())
        return (features[:, -1] < 3).long() * 2  # add 2 while the count is below 3

    rollout = imagine(model, torch.zeros(2, OBS_DIM), 4, policy=policy)
    assert rollout.states[:, :, -1].tolist() == [[1.0, 3.0, 3.0, 3.0, 3.0]] * 2
    assert rollout.actions.tolist() == [[2, 0, 0, 0]] * 2
    for t, features in enumerate(seen):
        assert torch.equal(features, rollout.states[:, t])


def test_gradients_flow_only_with_grad_true():
    model = CounterModel(action_shape=(1,), gain=2.0)
    theta = torch.tensor(0.5, requires_grad=True)
    policy = lambda features: theta * torch.ones(len(features), 1)  # noqa: E731
    rollout = imagine(model, torch.zeros(3, OBS_DIM), 4, policy=policy, grad=True)
    # reward at step t is 1 + gain * theta * (t + 1): the sum over 4 steps is 4 + 10 * gain * theta
    assert torch.allclose(rollout.rewards[0], torch.tensor([2.0, 3.0, 4.0, 5.0]))
    rollout.rewards.sum().backward()
    assert model.gain.grad.item() == pytest.approx(3 * 10 * 0.5)
    assert theta.grad.item() == pytest.approx(3 * 10 * 2.0)
    quiet = imagine(model, torch.zeros(3, OBS_DIM), 4, policy=policy)
    assert not quiet.rewards.requires_grad and not quiet.states.requires_grad


def test_imagine_argument_errors_name_the_problem():
    model = CounterModel(action_shape=(3,))
    start = torch.zeros(2, OBS_DIM)
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 4, 3\), got \(2, 4\)"):
        imagine(model, start, 4, actions=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="exactly one of `start_states` .* or `start_latent`"):
        imagine(model, start, 4, actions=torch.zeros(2, 4, 3), start_latent=model.initial_state(2))
    with pytest.raises(ValueError, match="exactly one of `start_states` .* or `start_latent`"):
        imagine(model, None, 4, actions=torch.zeros(2, 4, 3))
    with pytest.raises(TypeError, match="expected int64 actions"):  # the model's own check
        imagine(CounterModel(), start, 2, actions=torch.zeros(2, 2))


# -- identical numbers for the models of Chapters 1-3 -------------------------------------------


def _predict_loop(model, starts, horizon, actions=None, policy=None):
    """What Chapters 1-3 computed: repeated ``predict`` calls."""
    state, states, taken, rewards, done_probs, spread = starts, [starts], [], [], [], []
    for t in range(horizon):
        action = actions[:, t] if actions is not None else policy(state)
        prediction = model.predict(state, action)
        state = prediction.next_obs
        states.append(state), taken.append(action), rewards.append(prediction.reward)
        done_probs.append(prediction.done_prob), spread.append(prediction.disagreement)
    stack = lambda xs: torch.stack(xs, 1) if xs[0] is not None else None  # noqa: E731
    return stack(states), stack(taken), stack(rewards), stack(done_probs), stack(spread)


@torch.no_grad()
def test_mlp_rollouts_equal_repeated_predict_calls(trained_model, cartpole_data):
    model = trained_model[0]
    starts = cartpole_data[1].obs[:64]
    actions = torch.randint(0, 2, (64, 20), generator=torch.Generator().manual_seed(0))
    policy = lambda states: (states[:, 2] + 0.5 * states[:, 3] > 0).long()  # noqa: E731
    for kwargs in ({"actions": actions}, {"policy": policy}):
        rollout = imagine(model, starts, 20, **kwargs)
        states, taken, rewards, done_probs, _ = _predict_loop(model, starts, 20, **kwargs)
        assert torch.equal(rollout.states, states) and torch.equal(rollout.actions, taken)
        assert torch.equal(rollout.rewards, rewards) and torch.equal(rollout.done_probs, done_probs)
        ended = (done_probs > 0.5).long()
        assert torch.equal(rollout.alive, torch.cumsum(ended, 1) - ended == 0)
        assert rollout.latents is rollout.states and rollout.features is rollout.states
        assert not rollout.alive.all() and rollout.alive.any()  # both sides of the mask occur
    # starting from latents is the same thing for a model whose latent is the state
    from_latent = imagine(model, None, 20, actions=actions, start_latent=starts)
    assert torch.equal(from_latent.states, imagine(model, starts, 20, actions=actions).states)


@torch.no_grad()
def test_ensemble_and_predict_only_models_give_the_same_numbers(cartpole_data):
    torch.manual_seed(0)
    ensemble = DynamicsEnsemble(DynamicsConfig(hidden_size=16, n_layers=1), n_members=3)
    starts = cartpole_data[1].obs[:8]
    actions = torch.randint(0, 2, (8, 5), generator=torch.Generator().manual_seed(1))
    rollout = imagine(ensemble, starts, 5, actions=actions)
    states, _, rewards, done_probs, spread = _predict_loop(ensemble, starts, 5, actions=actions)
    assert torch.equal(rollout.states, states) and torch.equal(rollout.rewards, rewards)
    assert torch.equal(rollout.done_probs, done_probs) and torch.equal(rollout.disagreement, spread)
    stub = imagine(PredictOnly(), starts, 5, actions=actions)
    states, _, rewards, done_probs, _ = _predict_loop(PredictOnly(), starts, 5, actions=actions)
    assert torch.equal(stub.states, states) and torch.equal(stub.done_probs, done_probs)
    assert isinstance(stub, Rollout) and stub.horizon == 5


def test_rollout_built_by_hand_keeps_the_old_fields():
    done_probs = torch.tensor([[0.1, 0.9]])
    rollout = Rollout(torch.zeros(1, 3, 2), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2),
                      done_probs, torch.tensor([[True, True]]))
    assert rollout.latents is rollout.states and rollout.disagreement is None
    np.testing.assert_allclose(rollout.continuations.numpy(), [[0.9, 0.1]], rtol=1e-6)
