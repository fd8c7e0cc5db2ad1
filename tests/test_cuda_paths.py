"""The CUDA side of the training loops: mixed precision, gradient scaling and host-to-GPU copies.

Most tests run on the CPU with the GPU's answers forced: ``amp_dtype`` is made to answer
bfloat16 or float16 as a GPU would, so that the real ``torch.autocast`` and ``GradScaler`` run
on the CPU inside the real loops; ``Tensor.pin_memory`` and ``Tensor.to`` are replaced to see
how ``to_device`` copies to "cuda". The tests at the end need a GPU and are skipped without one.
"""

import dataclasses
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wmbook import rollout
from wmbook.buffers import replay, sequence
from wmbook import device as dev
from wmbook.agents import (
    DQNAgent, DQNConfig, DynaConfig, DynaPlanner, dqn, dyna, train_dqn, train_dyna_dqn)
from wmbook.buffers import Transitions
from wmbook.checkpoint import load_checkpoint, save_checkpoint
from wmbook.device import amp_dtype, seed_everything, to_device
from wmbook.envs import collect_transitions, make_env
from wmbook.models import DynamicsConfig, DynamicsModel, TrainConfig, dynamics, ensemble, training
from wmbook.models.dynamics import evaluate_dynamics
from wmbook.models.training import train_dynamics
from wmbook.models.ensemble import DynamicsEnsemble, train_ensemble

from helpers import assert_same_state, state_of

SMALL = DynamicsConfig(hidden_size=32, n_layers=2)
QUICK = TrainConfig(epochs=2, batch_size=128, lr=2e-2, seed=0)  # 16 steps
TINY_DQN = DQNConfig(hidden_size=16, n_layers=1, batch_size=16)
TINY_DYNA = DynaConfig(imagined_updates=2, model_updates=10, model_hidden_size=16, model_layers=1,
                       model_batch_size=128)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on busy cores


@pytest.fixture(scope="module")
def data(cartpole_data):
    """1,024 training and 512 validation transitions."""
    train, val = cartpole_data
    return train.index(slice(0, 1024)), val.index(slice(0, 512))


@pytest.fixture(scope="module")
def real_buffer():
    """400 random-policy CartPole transitions (sampling advances the buffer's generator)."""
    return collect_transitions(make_env("CartPole-v1"), 400, seed=0)


def _model(seed: int = 0) -> DynamicsModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DynamicsModel(SMALL)


def _steps(train: Transitions, config: TrainConfig) -> int:
    return config.epochs * (len(train) // config.batch_size)


def _force_gpu_precision(monkeypatch, dtype: torch.dtype) -> None:
    """Make every device, the CPU included, answer ``dtype`` to amp_dtype, as a GPU would."""
    monkeypatch.setattr(dev, "amp_dtype", lambda device: dtype)


def _spy_autocast(monkeypatch) -> list[tuple[str, torch.dtype]]:
    """Record (device type, dtype) of every torch.autocast entered; the real one still runs."""
    calls, real = [], torch.autocast

    def spy(device_type, dtype=None, **kwargs):
        calls.append((device_type, dtype))
        return real(device_type, dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    return calls


def _record_dtypes(module: torch.nn.Module, device_type: str = "cpu") -> list[tuple[bool, torch.dtype]]:
    """(autocast on?, output dtype) of every forward pass of ``module``."""
    seen = []
    module.register_forward_hook(
        lambda m, inputs, output: seen.append((torch.is_autocast_enabled(device_type), output.dtype)))
    return seen


class RecordingScaler(torch.amp.GradScaler):
    """The real GradScaler, noting each call and the scale it starts from."""

    events: list[str] = []
    made: list["RecordingScaler"] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.first_scale = None
        RecordingScaler.made.append(self)

    def scale(self, outputs):
        if self.first_scale is None:
            self.first_scale = self.get_scale()
        self.events.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.events.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.events.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.events.append("update")
        return super().update(new_scale)


@pytest.fixture
def recording_scaler(monkeypatch):
    """Every scaler grad_scaler makes is a RecordingScaler; gradient clipping is noted too."""
    RecordingScaler.events, RecordingScaler.made = [], []
    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(*args, **kwargs):
        RecordingScaler.events.append("clip")
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    return RecordingScaler


# -- mixed precision in train_dynamics ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_steps_run_under_autocast_and_validation_in_float32(data, monkeypatch, dtype):
    train, val = data
    _force_gpu_precision(monkeypatch, dtype)
    calls = _spy_autocast(monkeypatch)
    losses, real_loss = [], training.batch_loss
    monkeypatch.setattr(training, "batch_loss", lambda m, b: losses.append(real_loss(m, b)) or losses[-1])
    model = _model()
    seen = _record_dtypes(model.trunk)
    history = train_dynamics(model, train, val, QUICK, progress=False)

    steps = _steps(train, QUICK)
    assert calls == [("cpu", dtype)] * steps  # once per training step, in the GPU's dtype
    assert seen.count((True, dtype)) == steps
    assert seen.count((False, torch.float32)) == 1 + QUICK.epochs  # before training, each epoch
    assert len(seen) == steps + 1 + QUICK.epochs
    # losses stay float32 under autocast, and so do weights and normalisation statistics
    assert all(total.dtype == torch.float32 for total, _ in losses)
    assert all(part.dtype == torch.float32 for _, parts in losses for part in parts.values())
    assert all(value.dtype == torch.float32 for value in model.state_dict().values())
    assert all(torch.isfinite(value).all() for value in model.state_dict().values())
    assert history.best_val < 0.5 * history.initial_val


@pytest.mark.parametrize(("dtype", "active"), [(torch.float16, True), (torch.bfloat16, False)])
def test_float16_scales_the_loss_and_unscales_before_clipping(data, monkeypatch, recording_scaler,
                                                              dtype, active):
    train, val = data
    _force_gpu_precision(monkeypatch, dtype)
    history = train_dynamics(_model(), train, val, QUICK, progress=False)
    assert [scaler.is_enabled() for scaler in recording_scaler.made] == [active]
    # every step: scale the loss, unscale the gradients, clip, step (or skip), update the scale
    expected = ["scale", "unscale_", "clip", "step", "update"] * _steps(train, QUICK)
    assert recording_scaler.events == expected
    if active:
        assert recording_scaler.made[0].get_scale() > 1.0
    assert history.best_val < 0.5 * history.initial_val


def test_an_active_scaler_changes_no_weight_so_clipping_sees_true_gradients(data, monkeypatch):
    """A scale of 2**16 multiplies and divides gradients exactly: with unscale_ before clipping,
    a float32 run with an active scaler equals one without, step for step, even while the
    clipping bites. Clipping scaled gradients would shrink every step 65,536 times over."""
    train, val = data
    config = dataclasses.replace(QUICK, grad_clip=0.05)
    norms, real_clip = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda *a, **k: norms.append(real_clip(*a, **k).item()) or norms[-1])
    plain = _model()
    train_dynamics(plain, train, val, config, progress=False)
    plain_norms, norms[:] = list(norms), []
    monkeypatch.setattr(training, "grad_scaler",
                        lambda device, enabled=True: torch.amp.GradScaler("cpu", enabled=True))
    scaled = _model()
    train_dynamics(scaled, train, val, config, progress=False)
    assert max(plain_norms) > config.grad_clip  # clipping did bite
    assert norms == plain_norms
    assert_same_state(state_of(scaled), state_of(plain))


def test_mixed_precision_off_never_enters_autocast_even_on_a_gpu(data, monkeypatch, recording_scaler):
    train, val = data
    plain = _model()
    train_dynamics(plain, train, val, QUICK, progress=False)
    _force_gpu_precision(monkeypatch, torch.float16)
    calls = _spy_autocast(monkeypatch)
    switched_off = _model()
    train_dynamics(switched_off, train, val, dataclasses.replace(QUICK, mixed_precision=False),
                   progress=False)
    assert calls == []
    assert not any(scaler.is_enabled() for scaler in recording_scaler.made)
    assert_same_state(state_of(switched_off), state_of(plain))


@pytest.mark.parametrize("windows", [False, True])
def test_on_the_cpu_mixed_precision_on_and_off_give_identical_weights(monkeypatch, windows):
    calls = _spy_autocast(monkeypatch)
    buffer = collect_transitions(make_env("CartPole-v1"), 600, seed=3)
    data = buffer.windows(3) if windows else buffer.all()  # multi-step loss too
    train, val = data.index(slice(0, len(data) - 100)), data.index(slice(len(data) - 100, None))
    runs = []
    for mixed in (True, False):
        model = _model(5)
        history = train_dynamics(model, train, val, dataclasses.replace(QUICK, mixed_precision=mixed),
                                 progress=False)
        runs.append((state_of(model), history.val["total"]))
    assert calls == []  # autocast is never entered on the CPU
    assert_same_state(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_on_the_cpu_dyna_refits_are_identical_with_mixed_precision_on_and_off():
    states = []
    for mixed in (True, False):
        config = dataclasses.replace(TINY_DYNA, model_mixed_precision=mixed)
        buffer = collect_transitions(make_env("CartPole-v1"), 400, seed=0)  # its own sampling state
        torch.manual_seed(0)
        agent = DQNAgent(4, 2, TINY_DQN)
        planner = DynaPlanner(config, TINY_DQN, 4, 2)
        planner(50, agent, buffer)
        states.append((state_of(planner.model), state_of(agent.q)))
    assert_same_state(states[0][0], states[1][0])
    assert_same_state(states[0][1], states[1][1])


# -- checkpoints with a gradient scaler -------------------------------------------------


class Interrupted(Exception):
    pass


def _train_interrupted_after_first_epoch(model, train, val, config, path, monkeypatch, device="cpu"):
    real_save = training.save_state

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(training, "save_state", save_then_stop)
    with pytest.raises(Interrupted):
        train_dynamics(model, train, val, config, device=device, progress=False, checkpoint_path=path)
    monkeypatch.setattr(training, "save_state", real_save)


def test_checkpoint_carries_the_grad_scaler_state_and_resumes_exactly(data, tmp_path, monkeypatch,
                                                                      recording_scaler):
    train, val = data
    config = dataclasses.replace(QUICK, epochs=3)
    _force_gpu_precision(monkeypatch, torch.float16)
    uninterrupted = _model()
    train_dynamics(uninterrupted, train, val, config, progress=False)

    path = tmp_path / "training.pt"
    _train_interrupted_after_first_epoch(_model(), train, val, config, path, monkeypatch)
    saved = load_checkpoint(path, "DynamicsTraining")["states"]["scaler"]
    assert saved["scale"] == recording_scaler.made[-1].get_scale() > 1.0
    assert {"growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= set(saved)

    resumed = _model(seed=99)  # other starting weights: everything must come from the file
    train_dynamics(resumed, train, val, config, progress=False, checkpoint_path=path)
    assert recording_scaler.made[-1].first_scale == saved["scale"]
    assert_same_state(state_of(resumed), state_of(uninterrupted))


def test_resume_starts_from_the_saved_scale(data, tmp_path, monkeypatch, recording_scaler):
    train, val = data
    config = dataclasses.replace(QUICK, epochs=3)
    _force_gpu_precision(monkeypatch, torch.float16)
    path = tmp_path / "training.pt"
    _train_interrupted_after_first_epoch(_model(), train, val, config, path, monkeypatch)
    state = load_checkpoint(path, "DynamicsTraining")
    state["states"]["scaler"]["scale"] = 1024.0  # as if float16 gradients had overflowed six times
    save_checkpoint(path, "DynamicsTraining", {k: v for k, v in state.items() if k not in ("kind", "format")})
    train_dynamics(_model(), train, val, config, progress=False, checkpoint_path=path)
    assert recording_scaler.made[-1].first_scale == 1024.0


def test_a_checkpoint_without_scaler_state_resumes_with_a_fresh_scaler(data, tmp_path, monkeypatch,
                                                                        recording_scaler):
    train, val = data
    config = dataclasses.replace(QUICK, epochs=3)
    path = tmp_path / "training.pt"
    _train_interrupted_after_first_epoch(_model(), train, val, config, path, monkeypatch)
    assert load_checkpoint(path, "DynamicsTraining")["states"]["scaler"] == {}  # saved without an active scaler
    _force_gpu_precision(monkeypatch, torch.float16)  # now resumed where a scaler is active
    history = train_dynamics(_model(), train, val, config, progress=False, checkpoint_path=path)
    assert history.epochs == 3 and all(np.isfinite(history.val["total"]))
    assert recording_scaler.made[-1].is_enabled()
    assert recording_scaler.made[-1].first_scale == 2.0**16  # torch's starting scale


# -- the agents: DQN stays float32, Dyna's refits use autocast ----------------------------


def test_dqn_never_enters_autocast(monkeypatch, real_buffer):
    _force_gpu_precision(monkeypatch, torch.bfloat16)
    calls = _spy_autocast(monkeypatch)
    agent = DQNAgent(4, 2, TINY_DQN)
    seen = _record_dtypes(agent.q)
    losses = [agent.update(real_buffer.sample(16, agent.device)) for _ in range(5)]
    agent.greedy(torch.as_tensor(real_buffer.obs[:3]))
    assert calls == []
    assert seen == [(False, torch.float32)] * 6
    assert all(np.isfinite(losses))


@pytest.mark.parametrize("mixed", [True, False])
def test_dyna_refits_under_autocast_while_its_dqn_updates_stay_float32(monkeypatch, real_buffer, mixed):
    _force_gpu_precision(monkeypatch, torch.bfloat16)
    calls = _spy_autocast(monkeypatch)
    agent = DQNAgent(4, 2, TINY_DQN)
    q_dtypes = _record_dtypes(agent.q)
    planner = DynaPlanner(dataclasses.replace(TINY_DYNA, model_mixed_precision=mixed), TINY_DQN, 4, 2)
    planner(50, agent, real_buffer)
    n_val = len(real_buffer) // 10
    steps_per_epoch = (len(real_buffer) - n_val) // TINY_DYNA.model_batch_size
    refit_steps = -(-TINY_DYNA.model_updates // steps_per_epoch) * steps_per_epoch
    assert calls == ([("cpu", torch.bfloat16)] * refit_steps if mixed else [])
    assert agent.updates == TINY_DYNA.imagined_updates
    assert q_dtypes and set(q_dtypes) == {(False, torch.float32)}  # greedy actions and updates


# -- host-to-device copies --------------------------------------------------------------


@pytest.fixture
def fake_cuda_copies(monkeypatch):
    """Replace pin_memory and .to so that copies "to cuda" can run here; return the log."""
    log = []

    def pin_memory(self):
        pinned = self.clone()
        log.append(("pin", pinned))
        return pinned

    def to(self, *args, **kwargs):
        log.append(("to", self, args, kwargs))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    return log


def test_to_device_pins_host_tensors_and_copies_them_without_blocking(fake_cuda_copies):
    to_device({"a": torch.ones(2), "b": [np.zeros(3, dtype=np.float32)]}, "cuda")
    assert [entry[0] for entry in fake_cuda_copies] == ["pin", "to", "pin", "to"]
    for (_, pinned), (_, copied, args, kwargs) in zip(fake_cuda_copies[::2], fake_cuda_copies[1::2]):
        assert copied is pinned  # the GPU copies from the pinned copy
        assert args == (torch.device("cuda"),) and kwargs == {"non_blocking": True}


def test_to_device_copies_to_the_cpu_and_between_devices_without_pinning(fake_cuda_copies):
    to_device(torch.ones(2), "cpu")
    to_device(torch.ones(2, device="meta"), "cuda:1")  # not host memory: nothing to pin
    assert [entry[0] for entry in fake_cuda_copies] == ["to", "to"]
    assert [(entry[2], entry[3]) for entry in fake_cuda_copies] == [
        ((torch.device("cpu"),), {}), ((torch.device("cuda", 1),), {})]


def test_minibatches_reach_the_gpu_through_pinned_memory(real_buffer, fake_cuda_copies):
    real_buffer.sample(8, "cuda")  # what DQN's updates and Dyna's branches draw
    n_fields = len(dataclasses.fields(Transitions))
    assert [entry[0] for entry in fake_cuda_copies] == ["pin", "to"] * n_fields
    assert all(entry[3] == {"non_blocking": True} for entry in fake_cuda_copies[1::2])


def test_every_host_to_device_copy_in_the_loops_goes_through_to_device(data, real_buffer, monkeypatch):
    """Each ``Tensor.to`` that names a device in the package's own code is made inside
    to_device: no loop copies host data to the GPU without pinning it."""
    moves, depth = [], [0]

    def counted_to_device(*args, **kwargs):
        depth[0] += 1
        try:
            return real_to_device(*args, **kwargs)
        finally:
            depth[0] -= 1

    real_to_device = dev.to_device
    for module in (dev, replay, sequence, dynamics, training, ensemble, dqn, dyna, rollout):
        monkeypatch.setattr(module, "to_device", counted_to_device)
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if isinstance(target, (str, torch.device)) and caller.startswith("wmbook"):
            moves.append((caller, depth[0] > 0))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    train, val = data
    train_dynamics(_model(), train, val, QUICK, progress=False)
    train_ensemble(DynamicsEnsemble(SMALL, 2), train, val, dataclasses.replace(QUICK, epochs=1),
                   progress=False)
    agent = DQNAgent(4, 2, TINY_DQN)
    agent.update(real_buffer.sample(16, agent.device))
    agent.greedy(torch.as_tensor(real_buffer.obs[:1]))
    DynaPlanner(TINY_DYNA, TINY_DQN, 4, 2).refit(real_buffer, 50)
    assert len(moves) > 50
    assert [caller for caller, inside in moves if not inside] == []


def test_an_ensemble_moves_its_data_once_not_once_per_member(data, monkeypatch):
    train, val = data
    moved, real_to = [], Transitions.to

    def to(self, device):
        moved.append(len(self))
        return real_to(self, device)

    def train_member(member, member_train, member_val, config, device, progress):
        moved.append(("member", member_train.obs.device, member_val.obs.device))

    monkeypatch.setattr(Transitions, "to", to)
    monkeypatch.setattr(ensemble, "train_dynamics", train_member)
    train_ensemble(DynamicsEnsemble(SMALL, 3), train, val, QUICK, device="meta", progress=False)
    assert moved[:2] == [len(train), len(val)]  # both sets, once, before any member
    assert moved[2:] == [("member", torch.device("meta"), torch.device("meta"))] * 3


# -- on a real GPU ----------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@needs_cuda
def test_cuda_to_device_delivers_the_data_intact():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    moved = to_device({"x": values, "y": [torch.arange(5)]}, CUDA)
    assert moved["x"].device.type == "cuda" and moved["y"][0].device.type == "cuda"
    assert np.array_equal(moved["x"].cpu().numpy(), values)  # .cpu() waits for the copy
    assert torch.equal(moved["y"][0].cpu(), torch.arange(5))


@needs_cuda
def test_cuda_dynamics_training_learns_under_mixed_precision(data):
    train, val = data
    seed_everything(0)
    results = {}
    for mixed in (True, False):
        model = _model()
        seen = _record_dtypes(model.trunk, "cuda")
        config = dataclasses.replace(QUICK, epochs=4, mixed_precision=mixed)
        history = train_dynamics(model, train, val, config, device=CUDA, progress=False)
        training_dtypes = {dtype for on, dtype in seen if on}
        assert training_dtypes == ({amp_dtype(CUDA)} if mixed else set())
        assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())
        assert all(np.isfinite(history.train["total"])) and all(np.isfinite(history.val["total"]))
        assert history.best_val < 0.5 * history.initial_val
        results[mixed] = evaluate_dynamics(model, val).next_state_mse
    assert results[True] < 0.5 and results[False] < 0.5
    assert results[True] < 2 * results[False]  # low precision costs little accuracy


@needs_cuda
def test_cuda_float16_with_a_grad_scaler_learns_and_resumes(data, tmp_path, monkeypatch, recording_scaler):
    train, val = data
    config = dataclasses.replace(QUICK, epochs=3)
    monkeypatch.setattr(dev, "amp_dtype", lambda device: torch.float16)  # as on a pre-Ampere GPU
    path = tmp_path / "training.pt"
    _train_interrupted_after_first_epoch(_model(), train, val, config, path, monkeypatch, CUDA)
    saved = load_checkpoint(path, "DynamicsTraining")["states"]["scaler"]
    assert saved["scale"] > 1.0
    model = _model()
    history = train_dynamics(model, train, val, config, device=CUDA, progress=False, checkpoint_path=path)
    assert recording_scaler.made[-1].is_enabled()
    assert recording_scaler.made[-1].first_scale == saved["scale"]
    assert history.epochs == 3 and all(np.isfinite(history.val["total"]))
    assert history.best_val < 0.5 * history.initial_val
    assert all(torch.isfinite(p).all() for p in model.parameters())


@needs_cuda
def test_cuda_ensemble_trains_every_member(data):
    train, val = data
    seed_everything(0)
    members = DynamicsEnsemble(SMALL, 2)
    histories = train_ensemble(members, train, val, QUICK, device=CUDA, progress=False)
    assert all(h.best_val < 0.5 * h.initial_val for h in histories)
    assert all(p.device.type == "cuda" for p in members.parameters())


@needs_cuda
def test_cuda_dqn_updates_fit_a_fixed_batch(real_buffer):
    seed_everything(0)
    agent = DQNAgent(4, 2, dataclasses.replace(TINY_DQN, hidden_size=32, learning_rate=3e-3), CUDA)
    batch = real_buffer.sample(64, CUDA)
    assert batch.obs.device.type == "cuda"
    losses = [agent.update(batch) for _ in range(100)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.25 * losses[0]
    assert agent.greedy(torch.as_tensor(real_buffer.obs[:5])).device.type == "cuda"
    with torch.no_grad():
        target = batch.reward + TINY_DQN.gamma * (1 - batch.terminated.float()) * agent.target(
            batch.next_obs).max(-1).values
        q_taken = agent.q(batch.obs).gather(1, batch.action[:, None]).squeeze(1)
    assert F.smooth_l1_loss(q_taken, target).item() < 0.25 * losses[0]


def _state_error(model: DynamicsModel, data: Transitions) -> float:
    """Mean squared error of predicted next states, in the environment's units."""
    with torch.no_grad():
        return (model.predict(data.obs, data.action).next_obs - data.next_obs).pow(2).mean().item()


@needs_cuda
def test_cuda_dyna_step_refits_the_model_and_makes_k_updates(real_buffer):
    seed_everything(0)
    agent = DQNAgent(4, 2, TINY_DQN, CUDA)
    planner = DynaPlanner(dataclasses.replace(TINY_DYNA, model_updates=60), TINY_DQN, 4, 2, CUDA)
    everything = real_buffer.all(CUDA)
    before = _state_error(planner.model, everything)
    planner(50, agent, real_buffer)
    after = _state_error(planner.model, everything)
    assert planner.refits == 1 and agent.updates == TINY_DYNA.imagined_updates
    assert planner.imagined == TINY_DYNA.imagined_updates * TINY_DQN.batch_size
    assert np.isfinite(after) and after < 0.5 * before
    assert all(p.device.type == "cuda" and torch.isfinite(p).all() for p in agent.q.parameters())


@needs_cuda
def test_cuda_dyna_dqn_runs_end_to_end():
    config = DQNConfig(total_steps=400, learning_starts=200, eval_every=200, eval_episodes=2,
                       hidden_size=16, n_layers=1, batch_size=16)
    result, planner = train_dyna_dqn(config, dataclasses.replace(TINY_DYNA, model_every=100), CUDA,
                                     progress=False)
    assert result.eval_steps == [200, 400] and all(np.isfinite(result.eval_returns))
    assert result.gradient_updates == 200 * (1 + TINY_DYNA.imagined_updates)
    assert planner.refits == 2
    plain = train_dqn(config, CUDA, progress=False)
    assert plain.gradient_updates == 200
