"""The RSSM of Chapter 5: shapes, the protocol, KL balancing with free bits, two-hot and symlog."""

from __future__ import annotations

import math

import pytest
import torch

from wmbook.models.base import WorldModel, latent_detach
from wmbook.models.rssm import RSSM, RSSMConfig, RSSMState, TwoHot, symexp, symlog
from wmbook.rollout import imagine


def small(**overrides) -> RSSM:
    torch.manual_seed(0)
    return RSSM(RSSMConfig(obs_dim=4, action_dim=2, deter=16, stoch=4, classes=5, hidden=16, **overrides))


def chunk(batch: int = 3, length: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, length, 4, generator=g)
    action = torch.randint(0, 2, (batch, length), generator=g)
    reward = torch.ones(batch, length)
    terminated = torch.zeros(batch, length, dtype=torch.bool)
    terminated[0, 3] = True
    is_first = torch.zeros(batch, length, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[0, 4] = True
    return obs, action, reward, terminated, is_first


def test_shapes_and_protocol():
    model = small()
    assert isinstance(model, WorldModel)
    latent = model.initial_state(3)
    assert latent.h.shape == (3, 16) and latent.z.shape == (3, 20)
    obs = torch.randn(3, 4)
    latent = model.observe(latent, None, obs, torch.ones(3, dtype=torch.bool))
    assert model.features(latent).shape == (3, 36)
    # a sampled categorical z is one one-hot per variable
    assert torch.allclose(latent.z.reshape(3, 4, 5).sum(-1), torch.ones(3, 4))
    assert torch.allclose(latent.z.reshape(3, 4, 5).max(-1).values, torch.ones(3, 4))
    step = model.imagine_step(latent, torch.tensor([0, 1, 1]))
    assert step.reward.shape == (3,) and step.continuation.shape == (3,)
    assert ((step.continuation > 0) & (step.continuation < 1)).all()
    assert model.decode(step.latent).shape == (3, 4)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        model.imagine_step(latent, torch.zeros(3, 2))


def test_observe_sequence_shapes_and_reset_at_first_steps():
    model = small()
    obs, action, _, _, is_first = chunk()
    post = model.observe_sequence(obs, action, is_first)
    assert post.h.shape == (3, 6, 16) and post.z.shape == (3, 6, 20)
    assert post.post.shape == post.prior.shape == (3, 6, 4, 5)
    assert post.features().shape == (3, 6, 36)
    # at an is_first step the deterministic state does not depend on what came before
    torch.manual_seed(1)
    again = model.observe_sequence(torch.cat([torch.randn(3, 4, 4), obs[:, 4:]], 1), action, is_first)
    assert torch.allclose(again.h[0, 4], post.h[0, 4])
    assert not torch.allclose(again.h[1, 4], post.h[1, 4])


def test_imagine_with_gradients_through_the_rssm():
    model = small()
    start = model.observe(model.initial_state(5), None, torch.randn(5, 4), torch.ones(5, dtype=torch.bool))
    weight = torch.zeros(36, 2, requires_grad=True)
    rollout = imagine(model, None, 7, policy=lambda f: (f @ weight).argmax(-1), start_latent=latent_detach(start),
                      grad=True)
    assert rollout.features.shape == (5, 8, 36) and rollout.rewards.shape == (5, 7)
    assert isinstance(rollout.latents, RSSMState) and rollout.latents.h.shape == (5, 8, 16)
    rollout.rewards.sum().backward()
    assert model.reward_head[0][0].weight.grad is not None


def test_kl_free_bits_and_balance():
    model = small()
    post = torch.randn(2, 4, 5)
    assert torch.allclose(model.kl(post, post), torch.zeros(2), atol=1e-6)
    prior = torch.randn(2, 4, 5) * 3
    kl = model.kl(post, prior)
    # against the exact sum of categorical KLs
    q, p = post.softmax(-1), prior.softmax(-1)
    assert torch.allclose(kl, (q * (q.log() - p.log())).sum((-2, -1)), atol=1e-5)
    term, raw = model.kl_loss(post, prior)
    c = model.config
    assert torch.allclose(raw, kl)
    assert torch.allclose(term, c.dyn_scale * kl.clamp(min=1.0) + c.rep_scale * kl.clamp(min=1.0), atol=1e-5)
    # below the free bits the KL term is constant: no gradient reaches the posterior
    close = post + 0.01 * torch.randn(2, 4, 5)
    post_param = post.clone().requires_grad_(True)
    term, raw = model.kl_loss(post_param, close)
    assert (raw < 1.0).all()
    term.sum().backward()
    assert torch.count_nonzero(post_param.grad) == 0
    # above them, the balance weighs the two stop-gradient directions differently
    post_param = post.clone().requires_grad_(True)
    prior_param = prior.clone().requires_grad_(True)
    model.kl_loss(post_param, prior_param)[0].sum().backward()
    assert post_param.grad.abs().sum() > 0 and prior_param.grad.abs().sum() > 0
    plain = small(kl_balance=False, free_bits=0.0)
    term, raw = plain.kl_loss(post, prior)
    assert torch.allclose(term, raw)


def test_kl_balance_gradient_ratio():
    """With balancing, d(term)/d(post) is rep_scale times d KL/d(post): the posterior moves slowly."""
    model = small(free_bits=0.0)
    post = torch.randn(1, 4, 5, requires_grad=True)
    prior = torch.randn(1, 4, 5)
    model.kl_loss(post, prior)[0].sum().backward()
    balanced = post.grad.clone()
    post.grad = None
    model.kl(post, prior).sum().backward()
    assert torch.allclose(balanced, model.config.rep_scale * post.grad, atol=1e-6)


def test_unimix_bounds_probabilities():
    model = small()
    logits = model._dist_params(torch.tensor([[100.0] + [0.0] * 19]))
    probs = logits.softmax(-1)
    assert probs.min() >= 0.01 / 5 - 1e-7


def test_straight_through_gradient_reaches_logits():
    model = small()
    params = torch.randn(2, 4, 5, requires_grad=True)
    z = model._sample(params)
    assert torch.allclose(z.detach(), z.detach().round(), atol=1e-6)
    (z * torch.arange(20.0)).sum().backward()
    assert params.grad.abs().sum() > 0


def test_twohot_round_trip_and_symlog():
    twohot = TwoHot(255)
    values = torch.tensor([-300.0, -2.5, -1.0, 0.0, 0.3, 1.0, 7.0, 99.0, 1234.5])
    weights = twohot.encode(values)
    assert torch.allclose(weights.sum(-1), torch.ones(len(values)))
    assert ((weights > 0).sum(-1) <= 2).all()
    decoded = symexp((weights * twohot.bins).sum(-1))
    assert torch.allclose(decoded, values, rtol=1e-4, atol=1e-4)
    # logits equal to the log of the target decode to the value, and minimise the loss
    logits = torch.log(weights + 1e-12)
    assert torch.allclose(twohot.decode(logits), values, rtol=1e-3, atol=1e-3)
    assert (twohot.loss(logits, values) <= twohot.loss(torch.zeros_like(logits), values)).all()
    x = torch.linspace(-50, 50, 101)
    assert torch.allclose(symexp(symlog(x)), x, atol=1e-4)


def test_world_model_loss_parts_and_training_reduces_it():
    model = small()
    data = chunk(batch=8, length=10, seed=3)
    losses, _ = model.loss(*data)
    assert set(losses.as_floats()) == {"total", "recon", "reward", "cont", "kl", "kl_loss"}
    assert all(math.isfinite(v) for v in losses.as_floats().values())
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = float(losses.total.detach())
    for _ in range(60):
        losses, _ = model.loss(*data)
        opt.zero_grad()
        losses.total.backward()
        opt.step()
    assert float(losses.total.detach()) < 0.7 * first


@pytest.mark.parametrize("overrides", [dict(discrete=False, unimix=0.0), dict(symlog_obs=False),
                                       dict(twohot_reward=False), dict(kl_balance=False, free_bits=0.0)])
def test_switches_off_still_give_finite_losses(overrides):
    model = small(**overrides)
    losses, post = model.loss(*chunk())
    assert math.isfinite(float(losses.total.detach()))
    losses.total.backward()
    if not overrides.get("discrete", True):
        assert post.post.shape == (3, 6, 40)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="unimix"):
        RSSM(RSSMConfig(obs_dim=4, action_dim=2, unimix=1.5))
    with pytest.raises(ValueError, match="obs_dim"):
        small().encode(torch.zeros(2, 3))
