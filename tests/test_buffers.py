"""wmbook.buffers: the replay ring, its checks, sampling and .npz round trip."""

import json

import numpy as np
import pytest
import torch

from wmbook.buffers import ReplayBuffer, Transitions


def _transition(i: int, obs_dim: int = 3):
    """A recognisable transition number ``i``."""
    obs = np.full(obs_dim, float(i), dtype=np.float32)
    return obs, i % 2, float(i) / 10, obs + 0.5, i % 5 == 4, i % 7 == 6


def _filled(capacity: int, n: int, seed: int = 0) -> ReplayBuffer:
    buffer = ReplayBuffer(capacity, (3,), seed=seed)
    for i in range(n):
        buffer.add(*_transition(i))
    return buffer


# -- adding -----------------------------------------------------------------------------


def test_add_len_and_full():
    buffer = ReplayBuffer(3, (3,))
    assert len(buffer) == 0 and not buffer.full
    buffer.add(*_transition(0))
    assert len(buffer) == 1 and not buffer.full
    buffer.add(*_transition(1))
    buffer.add(*_transition(2))
    assert len(buffer) == 3 and buffer.full
    buffer.add(*_transition(3))
    assert len(buffer) == 3 and buffer.full
    assert "3/3" in repr(buffer)


def test_all_returns_every_field_in_order():
    buffer = _filled(10, 4)
    data = buffer.all()
    assert isinstance(data, Transitions) and len(data) == 4
    assert data.obs[:, 0].tolist() == [0, 1, 2, 3]
    assert data.next_obs[:, 0].tolist() == [0.5, 1.5, 2.5, 3.5]
    assert data.action.tolist() == [0, 1, 0, 1]
    assert data.reward.tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert data.terminated.tolist() == [False, False, False, False]
    assert data.truncated.tolist() == [False, False, False, False]


def test_wrap_around_overwrites_oldest_and_all_stays_chronological():
    buffer = _filled(4, 11)
    data = buffer.all()
    assert len(data) == 4
    assert data.obs[:, 0].tolist() == [7, 8, 9, 10]
    assert data.reward.tolist() == pytest.approx([0.7, 0.8, 0.9, 1.0])
    assert data.action.tolist() == [1, 0, 1, 0]
    assert data.terminated.tolist() == [False, False, True, False]  # 9 % 5 == 4
    assert data.truncated.tolist() == [False, False, False, False]


def _batch(start: int, n: int):
    idx = np.arange(start, start + n)
    obs = np.repeat(idx[:, None], 3, axis=1).astype(np.float32)
    return obs, idx % 2, idx / 10, obs + 0.5, idx % 5 == 4, idx % 7 == 6


def test_add_batch_matches_repeated_add():
    one_by_one = _filled(5, 8)
    batched = ReplayBuffer(5, (3,))
    batched.add_batch(*_batch(0, 3))
    batched.add_batch(*_batch(3, 5))
    a, b = one_by_one.all(), batched.all()
    for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert len(batched) == 5 and batched.full


def test_add_batch_larger_than_capacity_keeps_the_newest():
    buffer = ReplayBuffer(4, (3,))
    buffer.add(*_transition(100))
    buffer.add_batch(*_batch(0, 10))
    data = buffer.all()
    assert len(buffer) == 4
    assert data.obs[:, 0].tolist() == [6, 7, 8, 9]
    assert data.action.tolist() == [0, 1, 0, 1]
    buffer.add(*_transition(10))
    assert buffer.all().obs[:, 0].tolist() == [7, 8, 9, 10]


def test_add_batch_truncated_defaults_to_false():
    buffer = ReplayBuffer(5, (3,))
    obs, action, reward, next_obs, terminated, _ = _batch(0, 5)
    buffer.add_batch(obs, action, reward, next_obs, np.ones(5, bool))
    assert not buffer.all().truncated.any()
    assert buffer.all().terminated.all()


def test_add_batch_rejects_mismatched_lengths_without_writing():
    buffer = ReplayBuffer(5, (3,))
    obs, action, reward, next_obs, terminated, truncated = _batch(0, 4)
    with pytest.raises(ValueError, match="reward"):
        buffer.add_batch(obs, action, reward[:3], next_obs, terminated, truncated)
    assert len(buffer) == 0


# -- checks -----------------------------------------------------------------------------


def test_wrong_obs_shape_raises_naming_obs():
    buffer = ReplayBuffer(4, (3,))
    with pytest.raises(ValueError, match=r"obs has shape \(4,\).*\(3,\)"):
        buffer.add(np.zeros(4), 0, 1.0, np.zeros(3), False)
    with pytest.raises(ValueError, match="next_obs"):
        buffer.add(np.zeros(3), 0, 1.0, np.zeros((1, 3)), False)
    assert len(buffer) == 0


def test_float_action_rejected_for_discrete_buffer():
    buffer = ReplayBuffer(4, (3,))
    with pytest.raises(TypeError, match="action.*float"):
        buffer.add(np.zeros(3), 1.0, 1.0, np.zeros(3), False)
    buffer.add(np.zeros(3), np.int32(1), 1.0, np.zeros(3), False)  # any integer type is fine
    assert buffer.all().action.dtype == torch.int64


def test_continuous_buffer_accepts_float_actions():
    buffer = ReplayBuffer(4, (3,), action_shape=(2,), action_dtype=np.float32)
    buffer.add(np.zeros(3), np.array([0.5, -0.5]), 1.0, np.zeros(3), False)
    assert buffer.all().action.tolist() == [[0.5, -0.5]]
    with pytest.raises(ValueError, match="action"):
        buffer.add(np.zeros(3), np.array([0.5]), 1.0, np.zeros(3), False)
    with pytest.raises(ValueError, match="action"):
        buffer.add(np.zeros(3), np.array([np.nan, 0.0]), 1.0, np.zeros(3), False)


@pytest.mark.parametrize("field", ["obs", "next_obs", "reward"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_rejected_naming_the_field(field, bad):
    buffer = ReplayBuffer(4, (3,))
    args = {"obs": np.zeros(3), "action": 0, "reward": 1.0, "next_obs": np.zeros(3), "terminated": False}
    if field == "reward":
        args["reward"] = bad
    else:
        args[field] = np.array([0.0, bad, 0.0])
    with pytest.raises(ValueError, match=f"^{field} contains NaN"):
        buffer.add(**args)
    assert len(buffer) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("obs", np.array(["a", "b", "c"])), ("reward", "1.0"), ("terminated", 0.5), ("action", np.array("x"))],
)
def test_wrong_dtype_raises_type_error_naming_the_field(field, value):
    buffer = ReplayBuffer(4, (3,))
    args = {"obs": np.zeros(3), "action": 0, "reward": 1.0, "next_obs": np.zeros(3), "terminated": False}
    args[field] = value
    with pytest.raises(TypeError, match=f"^{field} has dtype"):
        buffer.add(**args)


def test_constructor_rejects_bad_capacity_and_action_dtype():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, (3,))
    with pytest.raises(ValueError, match="action_dtype"):
        ReplayBuffer(4, (3,), action_dtype=np.bool_)


def test_rejected_add_leaves_a_full_buffer_unchanged():
    buffer = _filled(3, 3)
    before = buffer.all().obs.clone()
    with pytest.raises(TypeError):
        buffer.add(np.full(3, 99.0), 0.5, 1.0, np.zeros(3), False)  # float action: rejected
    assert len(buffer) == 3
    assert torch.equal(buffer.all().obs, before)


# -- sampling ---------------------------------------------------------------------------


def test_sample_shapes_dtypes_and_device():
    buffer = ReplayBuffer(50, (3,), seed=1)
    buffer.add_batch(*_batch(0, 20))
    batch = buffer.sample(64)
    assert len(batch) == 64
    assert batch.obs.shape == (64, 3) and batch.obs.dtype == torch.float32
    assert batch.next_obs.shape == (64, 3) and batch.next_obs.dtype == torch.float32
    assert batch.action.shape == (64,) and batch.action.dtype == torch.int64
    assert batch.reward.shape == (64,) and batch.reward.dtype == torch.float32
    assert batch.terminated.dtype == torch.bool and batch.truncated.dtype == torch.bool
    assert all(t.device.type == "cpu" for t in (batch.obs, batch.action, batch.reward))
    # every sample is a stored transition, fields kept together, only from the filled part
    ids = batch.obs[:, 0]
    assert torch.all((ids >= 0) & (ids < 20))
    assert torch.equal(batch.next_obs, batch.obs + 0.5)
    assert torch.allclose(batch.reward, ids / 10)
    assert torch.equal(batch.action, ids.long() % 2)
    on_meta = buffer.sample(4, device="meta")
    assert on_meta.obs.device.type == "meta"


def test_sample_draws_from_the_whole_buffer():
    buffer = ReplayBuffer(10, (3,), seed=0)
    buffer.add_batch(*_batch(0, 10))
    ids = set(buffer.sample(500).obs[:, 0].long().tolist())
    assert ids == set(range(10))


def test_sample_is_reproducible_given_the_seed():
    a, b, c = (_filled(20, 15, seed=s) for s in (7, 7, 8))
    for _ in range(3):
        first, second = a.sample(16), b.sample(16)
        assert torch.equal(first.obs, second.obs)
        assert torch.equal(first.action, second.action)
    assert not torch.equal(_filled(20, 15, seed=7).sample(16).obs, c.sample(16).obs)


def test_sample_from_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4, (3,)).sample(2)


def test_sample_rejects_non_positive_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        _filled(4, 2).sample(0)


# -- Transitions ------------------------------------------------------------------------


def test_transitions_index_and_to():
    data = _filled(10, 6).all()
    part = data.index(slice(1, 4))
    assert isinstance(part, Transitions) and len(part) == 3
    assert part.obs[:, 0].tolist() == [1, 2, 3]
    picked = data.index(torch.tensor([5, 0]))
    assert picked.action.tolist() == [1, 0]
    assert picked.reward.tolist() == pytest.approx([0.5, 0.0])
    assert picked.terminated.tolist() == [False, False]
    moved = data.to("meta")
    assert isinstance(moved, Transitions)
    assert all(getattr(moved, f).device.type == "meta"
               for f in ("obs", "action", "reward", "next_obs", "terminated", "truncated"))
    assert data.obs.device.type == "cpu"  # the original is untouched


# -- files ------------------------------------------------------------------------------


def test_save_load_round_trip_contents_position_and_sampling(tmp_path):
    original = ReplayBuffer(6, (3,), seed=3)
    for i in range(9):  # wrapped: position is not 0
        original.add(*_transition(i))
    original.sample(5)  # advance the sampling generator
    path = original.save(tmp_path / "sub" / "buffer.npz")
    assert path.is_file()
    loaded = ReplayBuffer.load(path)
    assert len(loaded) == len(original) and loaded.capacity == 6 and loaded.full
    assert loaded.obs_shape == (3,) and loaded.action_dtype == np.int64
    a, b = original.all(), loaded.all()
    for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for _ in range(2):
        first, second = original.sample(8), loaded.sample(8)
        assert torch.equal(first.obs, second.obs)
    # the position is restored: the next add overwrites the same (oldest) slot in both
    original.add(*_transition(50))
    loaded.add(*_transition(50))
    assert torch.equal(original.all().obs, loaded.all().obs)
    assert loaded.all().obs[:, 0].tolist() == [4, 5, 6, 7, 8, 50]


def test_save_load_partial_continuous_buffer(tmp_path):
    buffer = ReplayBuffer(5, (2,), action_shape=(1,), action_dtype=np.float32, seed=0)
    buffer.add(np.ones(2), np.array([0.25]), 2.0, np.zeros(2), True, False)
    loaded = ReplayBuffer.load(buffer.save(tmp_path / "b.npz"))
    assert len(loaded) == 1 and not loaded.full
    assert loaded.action_dtype == np.float32 and loaded.action_shape == (1,)
    assert loaded.all().action.tolist() == [[0.25]]
    assert loaded.all().terminated.tolist() == [True]


def test_save_leaves_no_temporary_files(tmp_path):
    _filled(4, 2).save(tmp_path / "b.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["b.npz"]


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no replay buffer"):
        ReplayBuffer.load(tmp_path / "absent.npz")


def test_load_non_npz_file(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_text("not a zip file at all")
    with pytest.raises(ValueError, match="not a readable .npz"):
        ReplayBuffer.load(path)


def test_load_npz_lacking_keys(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, obs=np.zeros((2, 3)), weights=np.ones(3))
    with pytest.raises(ValueError, match="missing meta, action, reward"):
        ReplayBuffer.load(path)


def _resave(path, **changes):
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def test_load_arrays_disagreeing_with_metadata(tmp_path):
    path = _filled(4, 3).save(tmp_path / "b.npz")
    _resave(path, obs=np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"array 'obs' is float32\[5, 3\].*float32\[4, 3\]"):
        ReplayBuffer.load(path)


def test_load_array_with_wrong_dtype(tmp_path):
    path = _filled(4, 3).save(tmp_path / "b.npz")
    _resave(path, action=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="array 'action' is float32"):
        ReplayBuffer.load(path)


def _edit_meta(path, edit):
    """Re-save the buffer file at ``path`` with ``edit`` applied to its metadata dict."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
    edit(meta)
    _resave(path, meta=np.array(json.dumps(meta)))


@pytest.mark.parametrize("edit, message", [
    (lambda meta: meta.update(size=9), "size 9"),                 # more rows than capacity
    (lambda meta: meta.update(format=99), "format 99"),           # an unknown file format
    (lambda meta: meta.pop("rng_state"), "rng_state"),            # no sampling state
])
def test_load_inconsistent_metadata(tmp_path, edit, message):
    path = _filled(4, 3).save(tmp_path / "b.npz")
    _edit_meta(path, edit)
    with pytest.raises(ValueError, match=message):
        ReplayBuffer.load(path)


def test_load_malformed_metadata(tmp_path):
    path = _filled(4, 3).save(tmp_path / "b.npz")
    _resave(path, meta=np.array("{not json"))
    with pytest.raises(ValueError, match="malformed buffer metadata"):
        ReplayBuffer.load(path)


# -- storing each observation once, checked against a plain reference -------------------


class _PlainRing:
    """The buffer's contract written the plain way: a list of whole transitions, each with its
    own copy of ``next_obs``, and the same draws from a generator seeded alike."""

    def __init__(self, capacity: int, seed: int):
        self.capacity, self.slots, self.next, self.size = capacity, [None] * capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, transition) -> None:
        self.slots[self.next] = transition
        self.next = (self.next + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def add_batch(self, transitions: list) -> None:
        for transition in transitions[-self.capacity :]:  # only the newest `capacity` are written
            self.add(transition)

    def all(self) -> list:
        start = self.next if self.size == self.capacity else 0
        return [self.slots[(start + i) % self.capacity] for i in range(self.size)]

    def sample(self, batch_size: int) -> list:
        return [self.slots[i] for i in self.rng.integers(0, self.size, size=batch_size)]

    def windows(self, length: int) -> list:
        data = self.all()

        def goes_on(p):  # same episode, and the data line up
            _, _, _, next_obs, terminated, truncated = data[p]
            return not (terminated or truncated) and bool(np.all(next_obs == data[p + 1][0]))

        return [data[p : p + length] for p in range(len(data) - length + 1)
                if all(goes_on(q) for q in range(p, p + length - 1))]


def _assert_same_transitions(batch: Transitions, expected: list) -> None:
    """``batch`` (``(N, ...)`` or ``(N, k, ...)``) holds ``expected``, float values bit for bit."""
    for column, name in enumerate(("obs", "action", "reward", "next_obs", "terminated", "truncated")):
        values = np.array([[t[column] for t in w] if isinstance(w, list) else w[column] for w in expected])
        got = getattr(batch, name).numpy()
        if got.dtype == np.float32:
            values = values.astype(np.float32)
            assert np.array_equal(got.view(np.uint32), values.reshape(got.shape).view(np.uint32)), name
        else:
            assert np.array_equal(got, values.reshape(got.shape)), name


class _EpisodeSource:
    """Transitions from random-walk episodes, with what makes storage tricky: episode ends and
    data breaks, next episodes that start where the last one ended, and -0.0 beside 0.0."""

    def __init__(self, rng: np.random.Generator, obs_shape: tuple[int, ...]):
        self.rng, self.obs_shape = rng, obs_shape
        self.state = self._fresh()

    def _fresh(self) -> np.ndarray:  # on a grid of halves, so that exact zeros are common
        return (self.rng.integers(-2, 3, size=self.obs_shape) / 2).astype(np.float32)

    def __call__(self):
        rng, obs = self.rng, self.state
        step = rng.choice([0.5, -0.5, 0.0], size=self.obs_shape)
        next_obs = (obs + step).astype(np.float32)
        terminated, truncated = bool(rng.random() < 0.1), bool(rng.random() < 0.05)
        if terminated or truncated or rng.random() < 0.05:  # a new episode or a break in the data
            self.state = next_obs.copy() if rng.random() < 0.3 else self._fresh()
        else:
            self.state = next_obs.copy()
        if rng.random() < 0.1:  # 0.0 becomes -0.0: equal values, different bits
            self.state = np.where(self.state == 0, np.float32(-0.0), self.state)
        return obs, int(rng.integers(3)), np.float32(rng.normal()), next_obs, terminated, truncated


@pytest.mark.parametrize("seed", range(6))
def test_buffer_matches_a_plain_list_of_transitions(seed, tmp_path):
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(1, 25))
    obs_shape = ((2,), (), (2, 2))[seed % 3]
    buffer, plain = ReplayBuffer(capacity, obs_shape, seed=seed), _PlainRing(capacity, seed)
    source = _EpisodeSource(rng, obs_shape)
    for op in range(120):
        if rng.random() < 0.7:
            transition = source()
            buffer.add(*transition)
            plain.add(transition)
        else:  # a batch, sometimes larger than the whole buffer
            batch = [source() for _ in range(int(rng.integers(1, 2 * capacity + 2)))]
            buffer.add_batch(*(np.array(column) for column in zip(*batch)))
            plain.add_batch(batch)
        if op % 40 == 39:  # a file round trip keeps contents, links and sampling state
            buffer = ReplayBuffer.load(buffer.save(tmp_path / f"b{op}.npz"))
        _assert_same_transitions(buffer.all(), plain.all())
        _assert_same_transitions(buffer.sample(5), plain.sample(5))
        length = int(rng.integers(1, 5))
        _assert_same_transitions(buffer.windows(length), plain.windows(length))
        assert len(buffer) == plain.size


def test_a_next_obs_is_returned_bit_for_bit():
    buffer = ReplayBuffer(5, (1,))
    buffer.add(np.array([1.0]), 0, 0.0, np.array([0.0]), False)
    buffer.add(np.array([-0.0]), 0, 0.0, np.array([2.0]), False)  # equal to 0.0, other bits
    data = buffer.all()
    assert np.signbit(data.next_obs[0, 0].item()) == False and np.signbit(data.obs[1, 0].item())  # noqa: E712
    assert buffer.windows(2).obs.shape[0] == 1  # still consecutive for windows: 0.0 == -0.0


# -- file formats -----------------------------------------------------------------------


def test_load_refuses_another_format_naming_it(tmp_path):
    path = _filled(4, 3).save(tmp_path / "b.npz")
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
    _resave(path, meta=np.array(json.dumps({**meta, "format": 2})))
    with pytest.raises(ValueError, match="buffer format 2, expected 1"):
        ReplayBuffer.load(path)
