"""The MDN-RNN: likelihood, temperature sampling, masking across episodes, the NaN guard, and
V + M behind the world-model protocol."""

import math

import numpy as np
import pytest
import torch

from wmbook.buffers import SequenceBuffer
from wmbook.models.base import WorldModel
from wmbook.models.mdn_rnn import (MDNOutput, MDNRNN, MDNRNNConfig, VisionMemoryModel, mdn_nll, sample_mdn,
                                   train_mdn_rnn)
from wmbook.models.vae import ConvVAE, VAEConfig


def two_peaks(batch: int = 4000) -> MDNOutput:
    """A fixed mixture over 1-D z: 0.8 at -2 (sigma 0.1), 0.2 at +2 (sigma 0.5)."""
    logit_pi = torch.log(torch.tensor([[0.8, 0.2]])).expand(batch, 2)
    mu = torch.tensor([[[-2.0], [2.0]]]).expand(batch, 2, 1)
    log_sigma = torch.log(torch.tensor([[[0.1], [0.5]]])).expand(batch, 2, 1)
    return MDNOutput(logit_pi, mu, log_sigma, torch.zeros(batch), torch.zeros(batch))


def test_nll_matches_the_mixture_density():
    out = two_peaks(1)
    x = torch.tensor([[0.3]])
    density = 0.8 * math.exp(-0.5 * (2.3 / 0.1) ** 2) / (0.1 * math.sqrt(2 * math.pi)) \
        + 0.2 * math.exp(-0.5 * (1.7 / 0.5) ** 2) / (0.5 * math.sqrt(2 * math.pi))
    assert mdn_nll(out, x).item() == pytest.approx(-math.log(density), rel=1e-5)


def test_temperature_sharpens_and_flattens_the_mixture():
    out = two_peaks()
    g = torch.Generator().manual_seed(0)
    share = {tau: (sample_mdn(out, tau, g) > 0).float().mean().item() for tau in (0.1, 1.0, 3.0)}
    # logits / tau: a cold mixture almost always picks the likelier peak, a hot one evens out
    assert share[0.1] < 0.01 and 0.17 < share[1.0] < 0.23 and share[3.0] > 0.3
    # sigma * sqrt(tau): the spread around the likelier peak grows with tau
    near = {tau: sample_mdn(out, tau, torch.Generator().manual_seed(1)) for tau in (0.25, 1.0)}
    spread = {tau: z[z < 0].std().item() for tau, z in near.items()}
    assert spread[0.25] == pytest.approx(0.05, rel=0.1) and spread[1.0] == pytest.approx(0.1, rel=0.1)
    with pytest.raises(ValueError, match="temperature"):
        sample_mdn(out, 0.0)


def episode_buffer(n_episodes: int = 30, seed: int = 0) -> SequenceBuffer:
    """Latent episodes of a 2-D system: z_0' = z_0 + 0.2 (a - 0.5), z_1 counts the steps; an
    episode ends on reaching z_1 = 6 (so the done head can read it from z)."""
    rng = np.random.default_rng(seed)
    buffer = SequenceBuffer(1000, (2,), np.float32, n_actions=2, seed=seed)
    for _ in range(n_episodes):
        z = [np.array([rng.normal(), 0.0], np.float32)]
        actions = rng.integers(0, 2, 6)
        for a in actions:
            z.append(z[-1] + np.array([0.2 * (a - 0.5), 1.0], np.float32))
        terminated = np.zeros(6, bool)
        terminated[-1] = True
        buffer.add_episode(np.stack(z), actions, np.ones(6, np.float32), terminated)
    return buffer


def test_training_learns_dynamics_and_done():
    torch.manual_seed(0)
    model = MDNRNN(MDNRNNConfig(latent_dim=2, action_dim=2, hidden_dim=32, num_mixtures=3, learning_rate=3e-3))
    history = train_mdn_rnn(model, episode_buffer(), updates=300, batch_size=16, chunk_length=8)
    assert np.mean(history.nll[-20:]) < np.mean(history.nll[:20]) - 2.0
    assert np.mean(history.done_bce[-20:]) < 0.5 * np.mean(history.done_bce[:20])


def test_chunks_across_episodes_are_masked_and_state_restarts():
    torch.manual_seed(0)
    model = MDNRNN(MDNRNNConfig(latent_dim=2, action_dim=2, hidden_dim=8, num_mixtures=2))
    z = torch.randn(1, 4, 2)
    action = torch.tensor([[0, 1, 0, 1]])
    reward = torch.ones(1, 4)
    terminated = torch.zeros(1, 4, dtype=torch.bool)
    is_first = torch.tensor([[True, False, True, False]])
    base = model.sequence_loss(z, action, reward, terminated, is_first)["nll"]
    # the loss is the mean of the two episodes' own steps: nothing crosses the boundary
    z3 = z.clone()
    z3[0, 0] += 5.0
    changed = model.sequence_loss(z3, action, reward, terminated, is_first)["nll"]
    one_step = model.sequence_loss(z[:, 2:], action[:, 2:], reward[:, 2:], terminated[:, 2:], is_first[:, 2:])
    first_only = model.sequence_loss(z[:, :2], action[:, :2], reward[:, :2], terminated[:, :2], is_first[:, :2])
    assert torch.allclose(base, (one_step["nll"] + first_only["nll"]) / 2, atol=1e-5)
    assert not torch.allclose(changed, base)


def test_nan_loss_names_the_update():
    torch.manual_seed(0)
    model = MDNRNN(MDNRNNConfig(latent_dim=2, action_dim=2, hidden_dim=8, num_mixtures=2))
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match="update 7"):
        train_mdn_rnn(model, episode_buffer(), updates=3, start_update=7)


def test_log_sigma_is_clamped():
    model = MDNRNN(MDNRNNConfig(latent_dim=2, action_dim=2, hidden_dim=8, num_mixtures=2,
                                log_sigma_min=-3.0, log_sigma_max=1.0))
    with torch.no_grad():
        model.head.bias.fill_(50.0)
    out = model.heads(torch.zeros(3, 8))
    assert out.log_sigma.max().item() == 1.0
    with torch.no_grad():
        model.head.bias.fill_(-50.0)
    assert model.heads(torch.zeros(3, 8)).log_sigma.min().item() == -3.0


def test_vision_memory_model_meets_the_protocol():
    torch.manual_seed(0)
    vae = ConvVAE(VAEConfig(latent_dim=4, hidden_dims=(16,), channels=(4, 8), image_size=16))
    mdn = MDNRNN(MDNRNNConfig(latent_dim=4, action_dim=2, hidden_dim=8, num_mixtures=2))
    world = VisionMemoryModel(vae, mdn, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert isinstance(world, WorldModel)
    frames = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    first = torch.ones(3, dtype=torch.bool)
    latent = world.observe(world.initial_state(3), None, frames, first)
    assert world.features(latent).shape == (3, 4 + 8) and world.feature_dim == 12
    assert torch.equal(latent.h, torch.zeros(3, 8))  # nothing remembered yet
    step = world.imagine_step(latent, torch.tensor([0, 1, 0]))
    assert step.latent.z.shape == (3, 4) and step.done_prob.shape == (3,)
    assert ((0 <= step.done_prob) & (step.done_prob <= 1)).all()
    assert world.decode(step.latent).dtype == torch.uint8
    # a row marked first forgets its memory; the others keep it
    later = world.observe(step.latent, torch.tensor([1, 1, 1]), frames, torch.tensor([True, False, False]))
    assert torch.equal(later.h[0], torch.zeros(8)) and not torch.equal(later.h[1], torch.zeros(8))
    # the same generator state gives the same dream
    a = VisionMemoryModel(vae, mdn, generator=torch.Generator().manual_seed(5)).imagine_step(latent, torch.tensor([0, 1, 0]))
    b = VisionMemoryModel(vae, mdn, generator=torch.Generator().manual_seed(5)).imagine_step(latent, torch.tensor([0, 1, 0]))
    assert torch.equal(a.latent.z, b.latent.z)
