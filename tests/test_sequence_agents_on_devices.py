"""The sequence-model agents of Chapters 4 and 5 train on every device at hand.

Each test runs on the CPU and, where there is one, on a CUDA GPU: a short run must keep every
parameter on the device it was given, produce finite losses and returns, and (on the CPU)
repeat exactly under the same seed. Chapter 6's world model has its CUDA test beside its others.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from wmbook.agents.dreamer import DreamerConfig
from wmbook.agents.dreamer_trainer import train_dreamer
from wmbook.agents.ppo import PPO, Batch, BernoulliHead, PPOConfig, train_ppo

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

TINY_DREAMER = DreamerConfig(total_steps=300, prefill=100, replay_ratio=0.1, batch_size=4, seq_len=8,
                             deter=16, stoch=4, classes=4, hidden=16, ac_hidden=16, horizon=5,
                             imagine_starts=16, bins=41, eval_every=150, eval_episodes=2)


def _on(module: torch.nn.Module, device: str) -> bool:
    return all(p.device.type == device for p in module.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_dreamer_trains_on_the_device(device):
    result = train_dreamer(TINY_DREAMER, device=device, progress=False)
    assert _on(result.agent, device)
    assert result.eval_steps == [150, 300] and np.isfinite(result.eval_returns).all()
    assert result.gradient_updates > 0
    assert all(np.isfinite(values).all() for values in result.history.values())


def test_dreamer_repeats_under_the_same_seed():
    first = train_dreamer(TINY_DREAMER, progress=False)
    second = train_dreamer(TINY_DREAMER, progress=False)
    assert first.eval_returns == second.eval_returns
    assert first.history["env_step"] == second.history["env_step"]


@pytest.mark.parametrize("device", DEVICES)
def test_ppo_trains_on_the_device(device):
    config = PPOConfig(total_timesteps=512, num_envs=4, n_steps=32, batch_size=64, n_epochs=2,
                       eval_every=256, eval_episodes=2)
    result = train_ppo(config, device=device, progress=False)
    assert _on(result.ppo.net, device)
    assert result.eval_steps == [256, 512] and np.isfinite(result.eval_returns).all()


@pytest.mark.parametrize("device", DEVICES)
def test_bernoulli_ppo_learns_a_multi_label_bandit_on_the_device(device):
    """Chapter 6's head: PPO updates on the device move 1 to 3 active labels towards the
    rewarded ones (labels 0 and 1 pay +1 each, every other active label costs 1)."""
    n, obs_dim, labels = 256, 4, 10
    config = PPOConfig(batch_size=64, n_epochs=4, learning_rate=3e-3, anneal=False)
    ppo = PPO(obs_dim, BernoulliHead(labels), config, device)
    obs = torch.ones(n, obs_dim, device=device)
    payoff = -torch.ones(labels, device=device)
    payoff[:2] = 1.0
    for step in range(30):
        actions, log_probs, values = ppo.net.act(obs, ppo.generator)
        assert actions.shape == (n, labels) and actions.device.type == device
        active = actions.sum(-1)
        assert bool(((active >= 1) & (active <= 3)).all())
        rewards = (actions * payoff).sum(-1)
        losses = ppo.update(Batch(obs, actions, log_probs, rewards - values, rewards), step)
        assert all(np.isfinite(v) for v in losses.values())
    greedy, _, _ = ppo.net.act(obs[:1], greedy=True)
    assert _on(ppo.net, device)
    assert greedy[0, :2].tolist() == [1.0, 1.0] and greedy[0, 2:].sum().item() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_vmc_trainer_with_iterative_memory_trains_and_resumes_on_the_device(device, tmp_path):
    """V + M + C from pixels, with M going on training on the controller's own episodes: the
    models stay on the device, and a run resumed from its checkpoint ends like one never stopped
    (with deterministic kernels, so that cuDNN's LSTM and convolutions repeat too)."""
    from test_world_model_ppo import tiny

    from wmbook.agents.world_model_ppo import WorldModelPPOTrainer
    from wmbook.device import set_deterministic

    torch.set_num_threads(1)
    set_deterministic()
    try:
        whole = WorldModelPPOTrainer(tiny(tmp_path / "whole"), device=device)
        expected = whole.train()
        WorldModelPPOTrainer(tiny(tmp_path / "cut"), device=device).train(max_iterations=2)
        resumed = WorldModelPPOTrainer(tiny(tmp_path / "cut"), device=device)
        resumed.load(tmp_path / "cut" / "checkpoint.pt")
        got = resumed.train()
    finally:
        set_deterministic(False)
    assert _on(whole.vae, device) and _on(whole.mdn, device) and _on(whole.ppo.net, device)
    assert any("mdn/nll" in m and m["iteration"] > 0 for m in whole.metrics)  # M was refreshed
    assert got.final_returns == expected.final_returns and got.episode_returns == expected.episode_returns
    for p, q in zip(whole.mdn.parameters(), resumed.mdn.parameters()):
        assert torch.equal(p, q)
