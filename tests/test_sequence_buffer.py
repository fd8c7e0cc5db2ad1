"""wmbook.buffers.SequenceBuffer: whole episodes, Dreamer-style chunks, eviction, checks, files."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from wmbook.buffers import Episode, ReplayBuffer, SequenceBatch, SequenceBuffer

FIELDS = ("obs", "action", "reward", "terminated", "truncated", "is_first")


def _episode(first: float, n: int, end: str | None = "terminated", obs_dim: int = 2):
    """An episode of ``n`` transitions whose observations count up from ``first`` (obs ``(n + 1, obs_dim)``).

    Action ``k`` is ``(first + k) % 3`` and reward ``k`` is ``first + k + 1``: the value of the
    observation it arrives at, so every field can be traced back to its step.
    """
    values = first + np.arange(n + 1, dtype=np.float32)
    obs = np.repeat(values[:, None], obs_dim, axis=1)
    action = (first + np.arange(n)).astype(np.int64) % 3
    reward = values[1:].copy()
    terminated = np.zeros(n, bool)
    truncated = np.zeros(n, bool)
    if n and end == "terminated":
        terminated[-1] = True
    if n and end == "truncated":
        truncated[-1] = True
    return obs, action, reward, terminated, truncated


def _add_stepwise(buffer: SequenceBuffer, obs, action, reward, terminated, truncated) -> None:
    buffer.start_episode(obs[0])
    for k in range(len(action)):
        buffer.add(action[k], reward[k], obs[k + 1], terminated[k], truncated[k])


def _state(buffer: SequenceBuffer):
    """Everything a rejected add must leave alone."""
    arrays = tuple(getattr(buffer, name).copy() for name in FIELDS)
    return arrays, len(buffer), buffer.num_episodes, buffer.episode_open, buffer.rng.bit_generator.state


def _assert_same_state(a, b):
    for x, y in zip(a[0], b[0]):
        assert np.array_equal(x, y)
    assert a[1:] == b[1:]


# -- layout and the Dreamer convention --------------------------------------------------


def test_one_episode_follows_the_dreamer_convention():
    buffer = SequenceBuffer(20, (2,), seed=0)
    _add_stepwise(buffer, *_episode(10.0, 3))
    assert len(buffer) == 4  # reset observation + one per transition
    assert buffer.num_episodes == 1 and not buffer.episode_open
    batch = buffer.sample(2, 4)  # the only chunk of 4 steps is the whole episode
    assert isinstance(batch, SequenceBatch) and len(batch) == 2 and batch.length == 4
    assert batch.obs[0, :, 0].tolist() == [10, 11, 12, 13]
    assert batch.action[0].tolist() == [0, 10 % 3, 11 % 3, 12 % 3]  # a_{t-1}; zero at the start
    assert batch.reward[0].tolist() == [0, 11, 12, 13]  # r_t arrives with o_t
    assert batch.terminated[0].tolist() == [False, False, False, True]
    assert batch.truncated[0].tolist() == [False] * 4
    assert batch.is_first[0].tolist() == [True, False, False, False]


def test_sample_shapes_and_dtypes_for_vectors_and_discrete_actions():
    buffer = SequenceBuffer(50, (2,), seed=0)
    buffer.add_episode(*_episode(0.0, 20))
    batch = buffer.sample(5, 7)
    assert batch.obs.shape == (5, 7, 2) and batch.obs.dtype == torch.float32
    assert batch.action.shape == (5, 7) and batch.action.dtype == torch.int64
    assert batch.reward.shape == (5, 7) and batch.reward.dtype == torch.float32
    for name in ("terminated", "truncated", "is_first"):
        assert getattr(batch, name).shape == (5, 7) and getattr(batch, name).dtype == torch.bool
    assert torch.equal(batch.float_obs(), batch.obs)  # float observations come back unchanged
    assert buffer.sample(3, 2, device="meta").obs.device.type == "meta"


def test_add_episode_equals_adding_step_by_step():
    stepwise, whole = SequenceBuffer(30, (2,), seed=4), SequenceBuffer(30, (2,), seed=4)
    for first, n, end in [(0.0, 4, "terminated"), (100.0, 6, "truncated"), (200.0, 3, None)]:
        _add_stepwise(stepwise, *_episode(first, n, end))
        whole.add_episode(*_episode(first, n, end))
    for name in FIELDS:
        assert np.array_equal(getattr(stepwise, name), getattr(whole, name)), name
    a, b = stepwise.sample(8, 5), whole.sample(8, 5)
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert stepwise.episode_open and not whole.episode_open  # add_episode stores a closed episode


def test_chunks_cross_episode_boundaries_with_is_first_at_the_restart():
    buffer = SequenceBuffer(20, (2,), seed=0)
    buffer.add_episode(*_episode(0.0, 2))  # steps 0, 1, 2
    buffer.add_episode(*_episode(50.0, 1, "truncated"))  # steps 50, 51
    batch = buffer.sample(1, 5)  # only chunk: both short episodes together
    assert batch.obs[0, :, 0].tolist() == [0, 1, 2, 50, 51]
    assert batch.is_first[0].tolist() == [True, False, False, True, False]
    assert batch.action[0].tolist() == [0, 0, 1, 0, 50 % 3]
    assert batch.reward[0].tolist() == [0, 1, 2, 0, 51]
    assert batch.terminated[0].tolist() == [False, False, True, False, False]
    assert batch.truncated[0].tolist() == [False, False, False, False, True]


def test_episode_returns_the_add_episode_layout():
    buffer = SequenceBuffer(30, (2,))
    arrays = _episode(5.0, 4, "truncated")
    buffer.add_episode(*_episode(0.0, 2))
    buffer.add_episode(*arrays)
    episode = buffer.episode(-1)
    assert isinstance(episode, Episode) and len(episode) == 4
    for name, expected in zip(("obs", "action", "reward", "terminated", "truncated"), arrays):
        assert np.array_equal(getattr(episode, name), expected), name
    assert episode.action.dtype == np.int64
    assert [len(e) for e in buffer.episodes()] == [2, 4]
    assert buffer.episode(0).obs[:, 0].tolist() == [0, 1, 2]
    with pytest.raises(IndexError, match="episode 2 is out of range"):
        buffer.episode(2)


def test_start_episode_while_one_is_open_keeps_it_cut_off():
    buffer = SequenceBuffer(20, (2,))
    obs, action, reward, _, _ = _episode(0.0, 3, None)
    buffer.start_episode(obs[0])
    buffer.add(action[0], reward[0], obs[1], False)
    buffer.start_episode(np.full(2, 40.0))
    assert buffer.num_episodes == 2 and buffer.episode_open
    cut = buffer.episode(0)
    assert len(cut) == 1 and not cut.terminated.any() and not cut.truncated.any()
    assert buffer.episode(1).obs.tolist() == [[40.0, 40.0]]


# -- sampling ---------------------------------------------------------------------------


def test_sample_is_uniform_over_every_valid_start_and_stays_contiguous():
    buffer = SequenceBuffer(40, (1,), seed=1)
    for first, n in [(0.0, 4), (10.0, 0), (20.0, 6)]:  # 5 + 1 + 7 = 13 steps
        buffer.add_episode(*_episode(first, n, obs_dim=1))
    stored = np.concatenate([e.obs[:, 0] for e in buffer.episodes()])
    batch = buffer.sample(4000, 4)
    first_values = batch.obs[:, 0, 0].numpy()
    counts = np.array([(first_values == v).sum() for v in stored[: 13 - 4 + 1]])
    assert counts.sum() == 4000  # no chunk starts in the last 3 steps (it would run past the data)
    assert counts.min() > 4000 / 10 * 0.8 and counts.max() < 4000 / 10 * 1.2
    positions = np.searchsorted(stored, first_values)  # stored values increase: position of each start
    assert np.array_equal(batch.obs[:, :, 0].numpy(), stored[positions[:, None] + np.arange(4)])


def test_sample_is_reproducible_given_the_seed():
    def filled(seed):
        buffer = SequenceBuffer(60, (2,), seed=seed)
        for first in (0.0, 100.0, 200.0):
            buffer.add_episode(*_episode(first, 12))
        return buffer

    a, b, c = filled(3), filled(3), filled(4)
    for _ in range(3):
        assert torch.equal(a.sample(16, 6).obs, b.sample(16, 6).obs)
    assert not torch.equal(filled(3).sample(16, 6).obs, c.sample(16, 6).obs)


def test_sample_errors():
    buffer = SequenceBuffer(20, (2,))
    buffer.add_episode(*_episode(0.0, 3))  # 4 steps
    with pytest.raises(ValueError, match="chunks of 5 steps: the buffer holds 4 steps"):
        buffer.sample(2, 5)
    with pytest.raises(ValueError, match="batch_size"):
        buffer.sample(0, 2)
    with pytest.raises(ValueError, match="length"):
        buffer.sample(2, 0)
    with pytest.raises(ValueError, match="holds 0 steps"):
        SequenceBuffer(5, (2,)).sample(1, 1)


# -- frames and action kinds ------------------------------------------------------------


def test_uint8_frames_come_back_as_uint8_and_float_obs_scales_them():
    buffer = SequenceBuffer(30, (64, 64, 3), obs_dtype=np.uint8, seed=0)
    frames = np.random.default_rng(0).integers(0, 256, size=(9, 64, 64, 3), dtype=np.uint8)
    buffer.add_episode(frames, np.zeros(8, np.int64), np.ones(8), np.eye(8, dtype=bool)[-1], np.zeros(8, bool))
    batch = buffer.sample(3, 9)
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (3, 9, 64, 64, 3)
    assert np.array_equal(batch.obs[0].numpy(), frames)
    scaled = batch.float_obs()
    assert scaled.dtype == torch.float32 and scaled.min() >= 0 and scaled.max() <= 1
    assert torch.equal(scaled, batch.obs.float() / 255)
    assert batch.obs.dtype == torch.uint8  # float_obs leaves the batch as it was


def test_frame_observation_storage_is_one_copy():
    n = 1000
    buffer = SequenceBuffer(n, (64, 64, 3), obs_dtype=np.uint8)
    assert buffer.obs.nbytes == n * 64 * 64 * 3  # 12 KiB per step, no next_obs copy
    # beside it, per step: an int64 action, a float32 reward and three bool flags
    others = (buffer.action, buffer.reward, buffer.terminated, buffer.truncated, buffer.is_first)
    assert sum(array.nbytes for array in others) == n * (8 + 4 + 3)


def test_multibinary_actions_are_stored_as_bool_and_returned_as_float():
    buffer = SequenceBuffer(20, (2,), action_kind="multibinary", action_shape=(3,), seed=0)
    labels = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]])
    buffer.add_episode(_episode(0.0, 3)[0], labels, np.zeros(3), np.zeros(3, bool), np.zeros(3, bool))
    assert buffer.action.dtype == np.bool_
    batch = buffer.sample(1, 4)
    assert batch.action.dtype == torch.float32 and batch.action.shape == (1, 4, 3)
    assert batch.action[0].tolist() == [[0, 0, 0], [1, 0, 1], [0, 0, 0], [1, 1, 1]]
    buffer.start_episode(np.zeros(2))
    buffer.add(np.array([True, False, True]), 0.0, np.ones(2), False)  # bools are fine too
    buffer.add(np.array([0.0, 1.0, 1.0]), 0.0, np.ones(2), False)  # and floats that are exactly 0 or 1
    assert buffer.episode(-1).action.tolist() == [[True, False, True], [False, True, True]]
    before = _state(buffer)
    with pytest.raises(ValueError, match=r"only 0 and 1, got \[2\]"):
        buffer.add(np.array([0, 2, 1]), 0.0, np.ones(2), False)
    with pytest.raises(ValueError, match=r"only 0 and 1, got \[0.5\]"):
        buffer.add(np.array([0.5, 1.0, 0.0]), 0.0, np.ones(2), False)
    with pytest.raises(ValueError, match="action has shape"):
        buffer.add(np.array([0, 1]), 0.0, np.ones(2), False)
    _assert_same_state(before, _state(buffer))


def test_continuous_actions():
    buffer = SequenceBuffer(20, (2,), action_kind="continuous", action_shape=(2,), seed=0)
    buffer.start_episode(np.zeros(2))
    buffer.add(np.array([0.5, -0.25]), 1.0, np.ones(2), True)
    batch = buffer.sample(1, 2)
    assert batch.action.dtype == torch.float32 and batch.action[0].tolist() == [[0, 0], [0.5, -0.25]]
    buffer.start_episode(np.zeros(2))
    with pytest.raises(ValueError, match="action contains NaN"):
        buffer.add(np.array([np.nan, 0.0]), 1.0, np.ones(2), False)


def test_discrete_actions_must_be_integer_indices_in_range():
    buffer = SequenceBuffer(20, (2,), n_actions=3)
    buffer.start_episode(np.zeros(2))
    before = _state(buffer)
    with pytest.raises(TypeError, match="action has dtype float64"):
        buffer.add(1.0, 0.0, np.ones(2), False)
    with pytest.raises(ValueError, match=r"indices in \[3, 3\]; allowed: 0..2"):
        buffer.add(3, 0.0, np.ones(2), False)
    with pytest.raises(ValueError, match="allowed: non-negative"):
        SequenceBuffer(20, (2,)).add_episode(np.zeros((2, 2)), np.array([-1]), np.zeros(1), np.zeros(1, bool))
    _assert_same_state(before, _state(buffer))
    buffer.add(np.int32(2), 0.0, np.ones(2), False)  # any integer type is fine
    assert buffer.episode(0).action.tolist() == [2]


# -- checks -----------------------------------------------------------------------------


def test_frames_are_checked_for_dtype_range_and_shape():
    buffer = SequenceBuffer(10, (4, 4, 3), obs_dtype=np.uint8)
    with pytest.raises(TypeError, match="obs has dtype float32; this buffer stores uint8 frames"):
        buffer.start_episode(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"values in \[256, 256\]; uint8 frames hold 0..255"):
        buffer.start_episode(np.full((4, 4, 3), 256))
    negative = np.zeros((4, 4, 3), np.int16)
    negative[0, 0, 0] = -1
    with pytest.raises(ValueError, match=r"values in \[-1, 0\]"):
        buffer.start_episode(negative)
    with pytest.raises(ValueError, match=r"obs has shape \(3, 4, 4\)"):
        buffer.start_episode(np.zeros((3, 4, 4), np.uint8))
    assert len(buffer) == 0 and buffer.num_episodes == 0
    buffer.start_episode(np.full((4, 4, 3), 255, np.int64))  # integer frames within 0..255 are fine
    assert buffer.obs[0].max() == 255 and buffer.obs.dtype == np.uint8


@pytest.mark.parametrize("field", ["reward", "next_obs"])
def test_non_finite_values_are_refused_and_change_nothing(field):
    buffer = SequenceBuffer(10, (2,))
    buffer.start_episode(np.zeros(2))
    before = _state(buffer)
    args = {"action": 0, "reward": 1.0, "next_obs": np.ones(2), "terminated": False}
    args[field] = np.nan if field == "reward" else np.array([0.0, np.inf])
    with pytest.raises(ValueError, match=f"^{field} contains NaN"):
        buffer.add(**args)
    _assert_same_state(before, _state(buffer))


def test_float32_overflow_is_refused():
    buffer = SequenceBuffer(10, (2,))
    with pytest.raises(ValueError, match="beyond float32"):
        buffer.start_episode(np.array([1e39, 0.0]))


def test_add_needs_an_open_episode():
    buffer = SequenceBuffer(10, (2,))
    with pytest.raises(RuntimeError, match=r"^no open episode: call start_episode"):
        buffer.add(0, 1.0, np.ones(2), False)
    buffer.start_episode(np.zeros(2))
    buffer.add(0, 1.0, np.ones(2), terminated=True)
    with pytest.raises(RuntimeError, match=r"no open episode \(the last one has ended\)"):
        buffer.add(0, 1.0, np.ones(2), False)
    assert len(buffer) == 2


def test_add_episode_checks():
    buffer = SequenceBuffer(10, (2,))
    obs, action, reward, terminated, truncated = _episode(0.0, 4)
    with pytest.raises(ValueError, match=r"reward has shape \(3,\) but obs has 5 observations"):
        buffer.add_episode(obs, action, reward[:3], terminated, truncated)
    with pytest.raises(ValueError, match=r"action has shape \(4,\) but obs has 4 observations"):
        buffer.add_episode(obs[:4], action, reward, terminated, truncated)
    with pytest.raises(ValueError, match=r"action has shape \(4, 1\), this buffer stores action of shape \(4,\)"):
        buffer.add_episode(obs, action[:, None], reward, terminated, truncated)
    early = terminated.copy()
    early[1] = True
    with pytest.raises(ValueError, match="ends .* at step 1 of 4: only its last step"):
        buffer.add_episode(obs, action, reward, early, truncated)
    with pytest.raises(ValueError, match="reset observation and one per step"):
        buffer.add_episode(obs[0], action, reward, terminated, truncated)
    with pytest.raises(ValueError, match="needs 12 steps, more than the capacity 10"):
        buffer.add_episode(*_episode(0.0, 11))
    assert len(buffer) == 0 and buffer.num_episodes == 0
    buffer.add_episode(np.zeros((1, 2)), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool))  # T = 0
    assert len(buffer) == 1 and len(buffer.episode(0)) == 0


def test_constructor_checks():
    with pytest.raises(ValueError, match="capacity"):
        SequenceBuffer(0, (2,))
    with pytest.raises(ValueError, match="obs_dtype"):
        SequenceBuffer(5, (2,), obs_dtype=np.float64)
    with pytest.raises(ValueError, match="action_kind"):
        SequenceBuffer(5, (2,), action_kind="categorical")
    with pytest.raises(ValueError, match="action_shape must be"):
        SequenceBuffer(5, (2,), action_kind="discrete", action_shape=(3,))
    with pytest.raises(ValueError, match=r"multibinary actions need a shape"):
        SequenceBuffer(5, (2,), action_kind="multibinary")
    with pytest.raises(ValueError, match="n_actions"):
        SequenceBuffer(5, (2,), action_kind="continuous", action_shape=(2,), n_actions=3)


# -- eviction ---------------------------------------------------------------------------


def test_full_buffer_drops_the_oldest_whole_episodes_first():
    buffer = SequenceBuffer(10, (1,), seed=0)
    for first in (0.0, 10.0, 20.0):  # episodes of 4 steps: the third does not fit beside two
        buffer.add_episode(*_episode(first, 3, obs_dim=1))
    assert len(buffer) == 8 and buffer.num_episodes == 2
    assert [e.obs[0, 0] for e in buffer.episodes()] == [10, 20]
    buffer.add_episode(*_episode(30.0, 1, obs_dim=1))  # 2 more steps fit: nothing dropped
    assert len(buffer) == 10 and [e.obs[0, 0] for e in buffer.episodes()] == [10, 20, 30]
    buffer.add_episode(*_episode(40.0, 4, obs_dim=1))  # 5 steps: two episodes must go
    assert [e.obs[0, 0] for e in buffer.episodes()] == [30, 40] and len(buffer) == 7
    # the ring has wrapped; chunks still read consecutive steps in order
    batch = buffer.sample(1, 7)
    assert batch.obs[0, :, 0].tolist() == [30, 31, 40, 41, 42, 43, 44]
    assert batch.is_first[0].tolist() == [True, False, True, False, False, False, False]


def test_step_by_step_eviction_keeps_the_open_episode():
    buffer = SequenceBuffer(6, (1,))
    buffer.add_episode(*_episode(0.0, 2, obs_dim=1))  # 3 steps
    obs, action, reward, terminated, truncated = _episode(10.0, 5, None, obs_dim=1)
    buffer.start_episode(obs[0])
    for k in range(5):  # the 4th added step needs the room of the first episode
        buffer.add(action[k], reward[k], obs[k + 1], False)
    assert buffer.num_episodes == 1 and len(buffer) == 6
    assert buffer.episode(0).obs[:, 0].tolist() == [10, 11, 12, 13, 14, 15]
    before = _state(buffer)
    with pytest.raises(ValueError, match="would reach 7 steps, more than the capacity 6"):
        buffer.add(0, 0.0, np.ones(1), False)
    _assert_same_state(before, _state(buffer))
    buffer.add_episode(*_episode(20.0, 1, obs_dim=1))  # closes and drops the long episode
    assert [e.obs[0, 0] for e in buffer.episodes()] == [20]


# -- Gymnasium spaces -------------------------------------------------------------------


def test_for_spaces():
    frames = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    vectors = gym.spaces.Box(-1, 1, (8,), np.float64)
    discrete = SequenceBuffer.for_spaces(frames, gym.spaces.Discrete(4), 10, seed=1)
    assert discrete.obs.dtype == np.uint8 and discrete.obs_shape == (64, 64, 3)
    assert discrete.action_kind == "discrete" and discrete.n_actions == 4 and discrete.action_shape == ()
    labels = SequenceBuffer.for_spaces(vectors, gym.spaces.MultiBinary(7), 10)
    assert labels.obs.dtype == np.float32 and labels.action_kind == "multibinary"
    assert labels.action_shape == (7,) and labels.action.dtype == np.bool_
    box = SequenceBuffer.for_spaces(vectors, gym.spaces.Box(-1, 1, (2,)), 10)
    assert box.action_kind == "continuous" and box.action_shape == (2,) and box.action.dtype == np.float32
    with pytest.raises(TypeError, match="unsupported action space"):
        SequenceBuffer.for_spaces(vectors, gym.spaces.MultiDiscrete([2, 3]), 10)
    with pytest.raises(TypeError, match="observation_space must be a gymnasium Box"):
        SequenceBuffer.for_spaces(gym.spaces.Discrete(3), gym.spaces.Discrete(2), 10)
    with pytest.raises(ValueError, match="must start at 0"):
        SequenceBuffer.for_spaces(vectors, gym.spaces.Discrete(3, start=1), 10)


def test_collected_cartpole_episodes_match_the_environment():
    env = gym.make("CartPole-v1")
    buffer = SequenceBuffer.for_spaces(env.observation_space, env.action_space, 500, seed=0)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    buffer.start_episode(obs)
    lengths, length = [], 0
    for _ in range(200):
        action = int(rng.integers(2))
        obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(action, reward, obs, terminated, truncated)
        length += 1
        if terminated or truncated:
            lengths.append(length)
            length = 0
            obs, _ = env.reset()
            buffer.start_episode(obs)
    assert [len(e) for e in buffer.episodes()][:-1] == lengths
    assert all(e.terminated[-1] for e in list(buffer.episodes())[:-1])
    assert len(buffer) == 200 + buffer.num_episodes


# -- files ------------------------------------------------------------------------------


def _wrapped_buffer(seed: int = 3) -> SequenceBuffer:
    buffer = SequenceBuffer(12, (2,), action_kind="multibinary", action_shape=(2,), seed=seed)
    rng = np.random.default_rng(seed)
    for first in (0.0, 10.0, 20.0, 30.0):  # 5 steps each: the ring wraps and drops episodes
        obs, _, reward, terminated, truncated = _episode(first, 4)
        buffer.add_episode(obs, rng.integers(0, 2, size=(4, 2)), reward, terminated, truncated)
    buffer.start_episode(np.full(2, 90.0))
    buffer.add(np.array([1, 1]), 9.0, np.full(2, 91.0), False)
    return buffer


def test_save_load_round_trip_contents_sampling_and_open_episode(tmp_path):
    original = _wrapped_buffer()
    original.sample(4, 3)  # advance the sampling generator
    path = original.save(tmp_path / "sub" / "episodes.npz")
    assert [p.name for p in path.parent.iterdir()] == ["episodes.npz"]  # no temporary files left
    loaded = SequenceBuffer.load(path)
    assert len(loaded) == len(original) == 12 and loaded.num_episodes == original.num_episodes == 3
    assert loaded.episode_open and loaded.action_kind == "multibinary" and loaded.action_shape == (2,)
    for a, b in zip(original.episodes(), loaded.episodes()):
        for name in ("obs", "action", "reward", "terminated", "truncated"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for _ in range(2):
        first, second = original.sample(6, 5), loaded.sample(6, 5)
        for name in FIELDS:
            assert torch.equal(getattr(first, name), getattr(second, name)), name
    for buffer in (original, loaded):  # both go on with the open episode and evict alike
        buffer.add(np.array([0, 1]), 1.0, np.full(2, 92.0), True)
    assert [e.obs[0, 0] for e in loaded.episodes()] == [e.obs[0, 0] for e in original.episodes()] == [30, 90]


def test_save_load_frames_compressed(tmp_path):
    buffer = SequenceBuffer(10, (3, 8, 8), obs_dtype=np.uint8, n_actions=2)
    frames = np.arange(4 * 3 * 8 * 8).reshape(4, 3, 8, 8) % 256
    buffer.add_episode(frames, np.array([0, 1, 1]), np.ones(3), np.array([False, False, True]))
    loaded = SequenceBuffer.load(buffer.save(tmp_path / "frames.npz", compress=True))
    assert loaded.obs.dtype == np.uint8 and loaded.n_actions == 2 and not loaded.episode_open
    assert np.array_equal(loaded.episode(0).obs, frames)


def test_load_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sequence buffer file"):
        SequenceBuffer.load(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz sequence buffer"):
        SequenceBuffer.load(junk)
    replay = ReplayBuffer(4, (2,))
    replay.add(np.zeros(2), 0, 1.0, np.ones(2), False)
    with pytest.raises(ValueError, match="not a wmbook sequence buffer: missing episode_starts"):
        SequenceBuffer.load(replay.save(tmp_path / "replay.npz"))


def _rewrite(path, **changes):
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def _meta(path) -> dict:
    with np.load(path) as data:
        return json.loads(str(data["meta"]))


@pytest.mark.parametrize("change, message", [
    (lambda p: {"meta": np.array("{oops")}, "malformed sequence buffer metadata"),
    (lambda p: {"meta": np.array(json.dumps({**_meta(p), "format": 7}))}, "format 7"),
    (lambda p: {"meta": np.array(json.dumps({**_meta(p), "action_kind": "joystick"}))}, "action_kind"),
    (lambda p: {"meta": np.array(json.dumps({k: v for k, v in _meta(p).items() if k != "rng_state"}))},
     "rng_state"),
    (lambda p: {"obs": np.zeros((12, 3), np.float32)}, r"array 'obs' is float32\[12, 3\].*float32\[12, 2\]"),
    (lambda p: {"action": np.zeros((12, 2), np.float32)}, "array 'action' is float32"),
    (lambda p: {"episode_starts": np.array([0, 7, 5])}, "do not split 12 steps"),
    (lambda p: {"episode_starts": np.array([1, 5])}, "do not split 12 steps"),
    (lambda p: {"terminated": np.eye(12, dtype=bool)[0]}, r"steps \[0\] end an episode"),
])
def test_load_malformed_contents(tmp_path, change, message):
    path = _wrapped_buffer().save(tmp_path / "b.npz")
    _rewrite(path, **change(path))
    with pytest.raises(ValueError, match=message):
        SequenceBuffer.load(path)


def test_load_rejects_more_steps_than_capacity(tmp_path):
    path = _wrapped_buffer().save(tmp_path / "b.npz")
    _rewrite(path, meta=np.array(json.dumps({**_meta(path), "capacity": 8})))
    with pytest.raises(ValueError, match="12 steps do not fit the capacity 8"):
        SequenceBuffer.load(path)
