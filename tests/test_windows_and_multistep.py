"""Windows of consecutive transitions (ReplayBuffer.windows, Transitions.step / flatten) and the
multi-step loss that trains a world model on its own predictions (multistep_loss, train_dynamics)."""

import numpy as np
import pytest
import torch

from wmbook.buffers import ReplayBuffer, Transitions
from wmbook.device import seed_everything
from wmbook.envs import buffer_for, collect_transitions, make_env
from wmbook.models import DynamicsConfig, DynamicsModel, TrainConfig, multistep_loss, train_dynamics
from wmbook.models.dynamics import LOSS_COMPONENTS, batch_loss
from wmbook.models.training import _mean_losses

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
SMALL = DynamicsConfig(hidden_size=32, n_layers=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on busy cores


# -- hand-built buffers -----------------------------------------------------------------


def _add_episodes(buffer: ReplayBuffer, episodes, start: float = 0.0, gap: float = 100.0) -> float:
    """Add episodes given as ``(length, end)`` with ``end`` in {"terminated", "truncated", None}.

    Within an episode the state counts up by one per step (``next_obs`` of a step is the ``obs``
    of the next); a new episode starts ``gap`` further on. Returns the next free value.
    """
    value = start
    for length, end in episodes:
        for t in range(length):
            last = t == length - 1
            obs = np.full(buffer.obs_shape, value, dtype=np.float32)
            buffer.add(obs, int(value) % 2, value / 10, obs + 1, last and end == "terminated",
                       last and end == "truncated")
            value += 1
        value += gap
    return value


def _expected_count(lengths, k: int) -> int:
    return sum(max(0, length - k + 1) for length in lengths)


def _assert_consecutive_within_one_episode(windows: Transitions):
    if windows.obs.shape[0] == 0:
        return
    assert torch.equal(windows.next_obs[:, :-1], windows.obs[:, 1:])
    ended = windows.terminated | windows.truncated
    assert not ended[:, :-1].any(), "only the last step of a window may end an episode"


EPISODES = [(3, "terminated"), (1, "truncated"), (5, "terminated"), (2, "truncated"), (4, None)]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_window_count_and_shapes_for_known_episodes(k):
    buffer = ReplayBuffer(100, (3,))
    _add_episodes(buffer, EPISODES)
    windows = buffer.windows(k)
    n = _expected_count([length for length, _ in EPISODES], k)
    assert windows.obs.shape == windows.next_obs.shape == (n, k, 3)
    assert windows.action.shape == windows.reward.shape == (n, k)
    assert windows.terminated.shape == windows.truncated.shape == (n, k)
    assert windows.action.dtype == torch.int64 and windows.terminated.dtype == torch.bool
    _assert_consecutive_within_one_episode(windows)


def test_windows_are_oldest_first_and_hold_the_stored_values():
    buffer = ReplayBuffer(100, (2,))
    _add_episodes(buffer, [(3, "terminated"), (4, None)], gap=10.0)
    windows = buffer.windows(2)
    # episode 1 holds states 0, 1, 2; episode 2 holds 13, 14, 15, 16
    assert windows.obs[:, 0, 0].tolist() == [0, 1, 13, 14, 15]
    assert windows.obs[:, 1, 0].tolist() == [1, 2, 14, 15, 16]
    assert windows.reward[:, 0].tolist() == pytest.approx([0.0, 0.1, 1.3, 1.4, 1.5])
    assert windows.action[:, 0].tolist() == [0, 1, 1, 0, 1]
    # the window ending the first episode keeps its termination on the last step
    assert windows.terminated.tolist() == [[False, False], [False, True], *[[False, False]] * 3]


def test_episode_end_breaks_windows_even_when_the_states_line_up():
    buffer = ReplayBuffer(100, (3,))
    # gap 0: the next episode's first obs equals the previous last next_obs, only the flag separates them
    _add_episodes(buffer, [(3, "terminated"), (3, "truncated"), (3, None)], gap=0.0)
    assert torch.equal(buffer.all().next_obs[:-1], buffer.all().obs[1:])
    assert buffer.windows(2).obs.shape[0] == 3 * 2
    assert buffer.windows(3).obs.shape[0] == 3
    assert buffer.windows(4).obs.shape[0] == 0


def test_a_break_in_the_data_without_an_end_flag_splits_windows():
    buffer = ReplayBuffer(100, (3,))
    after = _add_episodes(buffer, [(4, None)])   # cut off mid-episode, no flag
    _add_episodes(buffer, [(4, None)], start=after)
    assert buffer.windows(2).obs.shape[0] == 3 + 3
    assert buffer.windows(5).obs.shape[0] == 0


def test_windows_never_cross_episode_ends_in_collected_data():
    env = make_env("CartPole-v1")
    buffer = collect_transitions(env, 600, seed=3)
    ended = (buffer.all().terminated | buffer.all().truncated).numpy()
    assert ended.sum() >= 10  # random CartPole episodes are short
    starts = np.concatenate([[0], np.flatnonzero(ended) + 1])
    lengths = np.diff(np.concatenate([starts, [len(buffer)]]))
    lengths = lengths[lengths > 0]
    for k in (2, 8):
        windows = buffer.windows(k)
        assert windows.obs.shape == (_expected_count(lengths, k), k, 4)
        _assert_consecutive_within_one_episode(windows)
        # a window may end with an episode's last (terminal) transition
        assert windows.terminated[:, -1].any()


def test_separately_collected_batches_are_not_joined():
    env = make_env("CartPole-v1")
    buffer = buffer_for(env, 1000)
    collect_transitions(env, 40, seed=0, buffer=buffer)
    first = buffer.all()
    assert not (first.terminated[-1] or first.truncated[-1]), "setup: the first batch must stop mid-episode"
    last_obs, last_next_obs = first.obs[-1], first.next_obs[-1]
    collect_transitions(env, 40, seed=1, buffer=buffer)
    data = buffer.all()
    cut = np.zeros(len(data), dtype=bool)
    cut[len(first) - 1] = True  # the first batch ended here without a flag
    ends = (data.terminated | data.truncated).numpy() | cut
    starts = np.concatenate([[0], np.flatnonzero(ends) + 1])
    lengths = [n for n in np.diff(np.concatenate([starts, [len(data)]])) if n > 0]
    for k in (2, 3):
        windows = buffer.windows(k)
        assert windows.obs.shape[0] == _expected_count(lengths, k)
        _assert_consecutive_within_one_episode(windows)
        # no window continues from the first batch's last transition into the second batch
        at_last = (windows.obs[:, :-1] == last_obs).all(-1) & (windows.next_obs[:, :-1] == last_next_obs).all(-1)
        assert not at_last.any()


def test_windows_of_a_wrapped_ring_are_chronological():
    buffer = ReplayBuffer(6, (3,))
    _add_episodes(buffer, [(4, "terminated"), (6, None)])  # 10 added: the oldest 4 are gone
    assert buffer.full and buffer.chronological_indices()[0] != 0
    assert buffer.all().obs[:, 0].tolist() == [104 + t for t in range(6)]
    windows = buffer.windows(3)
    assert windows.obs[:, 0, 0].tolist() == [104, 105, 106, 107]
    _assert_consecutive_within_one_episode(windows)
    # a window spanning the episode boundary inside the ring is also excluded
    buffer = ReplayBuffer(7, (3,))
    _add_episodes(buffer, [(5, "terminated"), (5, None)])  # ring keeps 3, 4 | 105..109
    assert buffer.windows(2).obs[:, 0, 0].tolist() == [3, 105, 106, 107, 108]


def test_length_one_equals_all():
    buffer = ReplayBuffer(8, (3,))
    _add_episodes(buffer, EPISODES)  # 15 transitions into 8 slots: wrapped
    one, every = buffer.windows(1), buffer.all()
    for name in FIELDS:
        assert getattr(one, name).shape[:2] == (len(every), 1)
        assert torch.equal(getattr(one, name)[:, 0], getattr(every, name)), name


def test_windows_longer_than_the_buffer_or_of_an_empty_buffer_are_empty():
    buffer = ReplayBuffer(10, (3,))
    assert buffer.windows(3).obs.shape == (0, 3, 3)
    _add_episodes(buffer, [(4, None)])
    assert buffer.windows(5).obs.shape == (0, 5, 3)


@pytest.mark.parametrize("length", [0, -1])
def test_bad_window_length_raises(length):
    buffer = ReplayBuffer(10, (3,))
    _add_episodes(buffer, [(4, None)])
    with pytest.raises(ValueError, match="length"):
        buffer.windows(length)


@pytest.mark.parametrize("obs_shape", [(2, 2), ()])
def test_windows_of_non_vector_observations(obs_shape):
    buffer = ReplayBuffer(10, obs_shape)
    _add_episodes(buffer, [(3, "terminated"), (3, None)])
    windows = buffer.windows(2)
    assert windows.obs.shape == (4, 2, *obs_shape)


# -- Transitions.step / flatten ---------------------------------------------------------


def test_step_and_flatten():
    buffer = ReplayBuffer(100, (3,))
    _add_episodes(buffer, [(5, "terminated"), (4, None)])
    windows = buffer.windows(3)  # 3 + 2 windows
    assert len(windows) == 5
    for t in range(3):
        step = windows.step(t)
        assert len(step) == 5 and step.obs.shape == (5, 3) and step.reward.shape == (5,)
        for name in FIELDS:
            assert torch.equal(getattr(step, name), getattr(windows, name)[:, t]), name
    assert windows.step(1).obs[:, 0].tolist() == [1, 2, 3, 106, 107]
    flat = windows.flatten()
    assert len(flat) == 15 and flat.obs.shape == (15, 3) and flat.terminated.shape == (15,)
    # window after window, each in time order
    assert flat.obs[:, 0].tolist() == [0, 1, 2, 1, 2, 3, 2, 3, 4, 105, 106, 107, 106, 107, 108]
    assert flat.terminated.tolist() == [False] * 8 + [True] + [False] * 6
    single = buffer.all()
    assert single.flatten() is single


# -- multistep_loss ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def window_data():
    """(train, val) replay buffers of random CartPole play, to cut windows from."""
    train = collect_transitions(make_env("CartPole-v1"), 1500, seed=0)
    val = collect_transitions(make_env("CartPole-v1"), 500, seed=1)
    return train, val


def _fitted(data: Transitions, seed: int = 0) -> DynamicsModel:
    seed_everything(seed)
    model = DynamicsModel(SMALL)
    model.fit_normalizers(data)
    return model.eval()


def test_one_step_windows_give_the_one_step_loss(window_data):
    buffer, _ = window_data
    model = _fitted(buffer.all())
    total, parts = multistep_loss(model, buffer.windows(1))
    expected_total, expected_parts = model.loss(buffer.all())
    assert set(parts) == set(LOSS_COMPONENTS)
    assert total.item() == pytest.approx(expected_total.item(), rel=1e-5)
    for key in LOSS_COMPONENTS:
        assert parts[key].item() == pytest.approx(expected_parts[key].item(), rel=1e-5), key


def _hand_multistep(model, windows, detach=False):
    """The multi-step loss written out: real first state, then the model's own predictions."""
    k = windows.obs.shape[1]
    obs, totals = windows.obs[:, 0], []
    for t in range(k):
        real = windows.step(t)
        fed = Transitions(obs, real.action, real.reward, real.next_obs, real.terminated, real.truncated)
        delta_z, _, _ = model(fed.obs, fed.action)
        totals.append(model.loss(fed)[0])
        obs = obs + model.delta_norm.inverse(delta_z)
        if detach:
            obs = obs.detach()
    return sum(totals) / k


def test_later_steps_start_from_the_models_own_prediction(window_data):
    buffer, _ = window_data
    windows = buffer.windows(4).index(slice(0, 200))
    model = _fitted(buffer.all())
    total, _ = multistep_loss(model, windows)
    assert total.item() == pytest.approx(_hand_multistep(model, windows).item(), rel=1e-5)
    # an untrained model drifts, so feeding it real states instead would give another number
    teacher_forced = model.loss(windows.flatten())[0]
    assert abs(total.item() - teacher_forced.item()) > 1e-3 * teacher_forced.item()


def test_an_exact_model_has_zero_multistep_error_and_a_biased_one_compounds(window_data):
    """A model that predicts the exact change gets the real state back at every step; one whose
    change is off by ``c`` (normalised units) drifts by ``t * c`` before step ``t``, so its error
    there is ``(t + 1) * c``: a next-state loss of ``c**2 * (1 + 4 + 9) / 3`` over 3 steps."""
    buffer, _ = window_data
    windows = buffer.windows(3).index(slice(0, 100))

    class Oracle(DynamicsModel):
        """Call ``t`` returns the real change of step ``t`` of ``windows``, plus ``offset``."""

        offset, calls = 0.0, 0

        def forward(self, obs, action):
            real = windows.step(self.calls)
            self.calls += 1
            delta_z = self.delta_norm(real.next_obs - real.obs) + self.offset
            zeros = torch.zeros(len(obs))
            return delta_z, zeros, zeros

    oracle = Oracle(SMALL)
    oracle.fit_normalizers(buffer.all())
    assert multistep_loss(oracle, windows)[1]["next_state"].item() == pytest.approx(0.0, abs=1e-8)
    oracle.offset, oracle.calls = 0.1, 0
    loss = multistep_loss(oracle, windows)[1]["next_state"].item()
    assert oracle.calls == 3
    assert loss == pytest.approx(0.01 * (1 + 4 + 9) / 3, rel=1e-3)  # teacher forcing would give 0.01


def test_gradients_flow_back_through_the_rollout(window_data):
    buffer, _ = window_data
    windows = buffer.windows(3).index(slice(0, 64))
    model = _fitted(buffer.all())
    total, _ = multistep_loss(model, windows)
    detached = _hand_multistep(model, windows, detach=True)
    assert total.item() == pytest.approx(detached.item(), rel=1e-5)  # same value ...
    grads = torch.autograd.grad(total, list(model.parameters()))
    grads_detached = torch.autograd.grad(detached, list(model.parameters()))
    # ... but backpropagating through the fed-back predictions changes the gradient
    difference = sum((a - b).abs().sum() for a, b in zip(grads, grads_detached))
    assert difference > 1e-4 * sum(g.abs().sum() for g in grads)


def test_batch_loss_dispatches_on_the_shape(window_data):
    buffer, _ = window_data
    model = _fitted(buffer.all())
    windows = buffer.windows(3).index(slice(0, 50))
    assert batch_loss(model, windows)[0].item() == pytest.approx(multistep_loss(model, windows)[0].item())
    single = buffer.all().index(slice(0, 50))
    assert batch_loss(model, single)[0].item() == pytest.approx(model.loss(single)[0].item())


def test_train_dynamics_on_windows_reduces_the_multistep_validation_loss(window_data):
    train_buffer, val_buffer = window_data
    train, val = train_buffer.windows(4), val_buffer.windows(4)
    seed_everything(0)
    model = DynamicsModel(SMALL)
    history = train_dynamics(model, train, val, TrainConfig(epochs=4, batch_size=64, patience=4),
                             progress=False)
    assert np.isfinite(history.initial_val)
    assert history.best_val < 0.5 * history.initial_val
    assert history.best_epoch >= 0 and history.epochs == 4
    # validation is scored with the multi-step loss, and the model ends with the best weights
    with torch.no_grad():
        assert multistep_loss(model, val)[0].item() == pytest.approx(history.best_val, rel=1e-4)
        assert _mean_losses(model, val)["total"] == pytest.approx(history.best_val, rel=1e-4)
        assert model.loss(val.flatten())[0].item() != pytest.approx(history.best_val, rel=1e-3)
