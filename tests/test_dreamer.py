"""The Dreamer agent of Chapter 5: lambda-returns, return normalisation, the NaN guard, resume,
and the command line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from wmbook.agents.dreamer import Dreamer, DreamerConfig, ReturnScale, lambda_returns
from wmbook.agents.dreamer_trainer import main, train_dreamer
from wmbook.buffers import SequenceBuffer

TINY = DreamerConfig(total_steps=160, prefill=60, replay_ratio=0.25, batch_size=4, seq_len=8,
                     deter=16, stoch=4, classes=4, hidden=16, ac_hidden=16, horizon=4,
                     eval_every=80, eval_episodes=2, checkpoint_every=40, seed=3)


def test_lambda_returns_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    continues = torch.tensor([[1.0, 0.5, 1.0]])
    gamma, lam = 0.9, 0.8
    # backwards from R_3 = V_3 = 40:
    r2 = 3 + 0.9 * 1.0 * (0.2 * 40 + 0.8 * 40)            # 39.0
    r1 = 2 + 0.9 * 0.5 * (0.2 * 30 + 0.8 * r2)           # 18.74
    r0 = 1 + 0.9 * 1.0 * (0.2 * 20 + 0.8 * r1)           # 18.0928
    expected = torch.tensor([[r0, r1, r2]])
    assert torch.allclose(lambda_returns(rewards, values, continues, gamma, lam), expected)
    assert r2 == pytest.approx(39.0) and r0 == pytest.approx(18.0928)
    # lam = 0: one-step TD targets
    td = rewards + gamma * continues * values[:, 1:]
    assert torch.allclose(lambda_returns(rewards, values, continues, gamma, 0.0), td)
    with pytest.raises(ValueError, match="values"):
        lambda_returns(rewards, values[:, :3], continues, gamma, lam)


def test_percentile_return_normalisation():
    scale = ReturnScale(0.05, 0.95, decay=0.5)
    returns = torch.arange(101.0)  # 5th percentile 5, 95th 95: range 90
    assert float(scale.update(returns)) == pytest.approx(90.0)
    # the EMA moves half way towards a new range of 10
    assert float(scale.update(returns / 9)) == pytest.approx(0.5 * 90 + 0.5 * 10)
    # small ranges are not blown up: the divisor never goes below 1
    small = ReturnScale(decay=0.0)
    assert float(small.update(torch.linspace(0, 0.2, 50))) == 1.0
    with pytest.raises(ValueError, match="percentiles"):
        ReturnScale(0.9, 0.1)


def _batch(buffer_seed: int = 0):
    buffer = SequenceBuffer(200, (4,), n_actions=2, seed=buffer_seed)
    g = torch.Generator().manual_seed(buffer_seed)
    for _ in range(4):
        buffer.start_episode(torch.randn(4, generator=g).numpy())
        for t in range(20):
            buffer.add(int(t % 2), 1.0, torch.randn(4, generator=g).numpy(), terminated=t == 19)
    return buffer.sample(4, 8)


def test_update_runs_and_nan_world_model_loss_names_the_step():
    torch.manual_seed(0)
    agent = Dreamer(4, 2, TINY)
    metrics = agent.update(_batch(), env_step=7)
    assert {"recon", "reward", "cont", "kl", "actor", "critic", "entropy"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    with torch.no_grad():
        agent.world_model.decoder[-1].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="environment step 1234 .update 2."):
        agent.update(_batch(), env_step=1234)


def test_slow_critic_trails_the_critic():
    torch.manual_seed(0)
    agent = Dreamer(4, 2, TINY)
    before = [p.clone() for p in agent.slow_critic.parameters()]
    for _ in range(3):
        agent.update(_batch())
    moved = [(p - b).abs().sum() for p, b in zip(agent.slow_critic.parameters(), before)]
    assert sum(moved) > 0
    gap = sum((s - c).abs().sum() for s, c in zip(agent.slow_critic.parameters(), agent.critic.parameters()))
    assert gap > 0


def _weights(result) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in result.agent.state_dict().items()}


def test_same_seed_same_run_and_resume_equals_uninterrupted(tmp_path):
    whole = train_dreamer(TINY, progress=False, checkpoint=tmp_path / "whole.pt")
    again = train_dreamer(TINY, progress=False)
    assert whole.eval_returns == again.eval_returns
    first = train_dreamer(TINY, progress=False, checkpoint=tmp_path / "part.pt", stop_at=50)
    assert first.env_steps < TINY.total_steps
    resumed = train_dreamer(TINY, progress=False, checkpoint=tmp_path / "part.pt", resume=tmp_path / "part.pt")
    assert resumed.env_steps == whole.env_steps == TINY.total_steps
    assert resumed.gradient_updates == whole.gradient_updates > 0
    assert resumed.eval_returns == whole.eval_returns
    assert resumed.history["recon"] == whole.history["recon"]
    w, r = _weights(whole), _weights(resumed)
    assert all(torch.equal(w[k], r[k]) for k in w)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--total-steps", "120", "--eval-every", "60", "--no-progress", "--out", str(out),
                 "--device", "cpu", "--replay-ratio", "0.02"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["env_steps"] == 120 and data["eval_steps"] == [60, 120]
    assert (out / "checkpoint.pt").is_file()
    assert main(["--resume", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: no checkpoint") and "Traceback" not in err
    assert main(["--env", "Pendulum-v1", "--total-steps", "10", "--out", str(out), "--no-progress"]) == 2
    assert "discrete action space" in capsys.readouterr().err
    assert main(["--total-steps", "0", "--out", str(out)]) == 2
    assert "total_steps must be positive" in capsys.readouterr().err


def test_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match="gamma"):
        dataclasses.replace(TINY, gamma=1.5).check()


def test_the_greedy_policy_carries_each_episodes_state_from_its_first_step():
    """Evaluation (wmbook.evaluation.evaluate) with Dreamer's recurrent state: is_first only at the
    first step, every row stepped together, the same returns from the same starts."""
    from wmbook.agents.dreamer import GreedyDreamer
    from wmbook.evaluation import evaluate

    torch.manual_seed(0)
    agent = Dreamer(4, 2, TINY)
    calls = []
    act = agent.act

    def spy(latent, action, obs, is_first, greedy=False):
        calls.append((len(obs), bool(is_first.all()), bool(is_first.any())))
        return act(latent, action, obs, is_first, greedy=greedy)

    agent.act = spy
    returns = evaluate(GreedyDreamer(agent), episodes=3, seed=11)
    assert returns.shape == (3,) and all(1 <= r <= 500 for r in returns)
    assert calls[0] == (3, True, True) and all(c == (3, False, False) for c in calls[1:])
    assert len(calls) == max(returns)  # one call per step of the longest episode
    assert evaluate(GreedyDreamer(agent), episodes=3, seed=11).tolist() == returns.tolist()
