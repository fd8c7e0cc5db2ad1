"""The surgical world model: shapes, the world-model protocol and DreamEnv, the 1-to-3 sampler,
the confidence-weighted encoding, the dual path and its noise schedule, training, checkpoints."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from surgical_helpers import tiny_config
from wmbook.checkpoint import save_checkpoint
from wmbook.envs import DreamEnv
from wmbook.models.base import WorldModel
from wmbook.surgical.model import (SurgicalTrainConfig, SurgicalWorldModel,
                                    SurgicalWorldModelConfig, WindowSampler, load_world_model,
                                    sample_triplets, train_world_model, window_losses,
                                    world_model_payload)
from wmbook.surgical.data import load_dataset
from wmbook.surgical.experiment import generate

CONFIG = SurgicalWorldModelConfig(embedding_dim=16, hidden_dim=16, action_embed_dim=8,
                                  head_hidden=16, context=8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("surgical_model"))
    generate(config)
    return load_dataset(config.data.root)


def test_sampler_keeps_one_to_three_active():
    probs = torch.tensor([[0.0] * 100, [1.0] * 100, [0.9, 0.2] + [0.0] * 98])
    for seed in range(5):
        actions = sample_triplets(probs, torch.Generator().manual_seed(seed))
        assert actions.sum(1).tolist() == [1, 3, actions[2].sum().item()]
        assert 1 <= actions[2].sum() <= 2 and actions[2, 0] == 1 or actions[2, 1] == 1
    # all zeros: the most probable label is the one kept; deterministic picks the top ones
    probs = torch.tensor([[0.1, 0.3, 0.2] + [0.0] * 97, [0.9, 0.8, 0.7, 0.95] + [0.0] * 96])
    actions = sample_triplets(probs, deterministic=True)
    assert actions[0].nonzero().flatten().tolist() == [1]
    assert actions[1].nonzero().flatten().tolist() == [0, 1, 3]
    # the expected count (1.8): two actions, though only one is above 0.5
    shared = torch.tensor([[0.45, 0.7, 0.4, 0.25] + [0.0] * 96])
    assert sample_triplets(shared, deterministic=True)[0].nonzero().flatten().tolist() == [0, 1]
    # the floor: labels below it are never drawn
    tiny = torch.full((200, 100), 0.01)
    tiny[:, 5] = 0.5
    floored = sample_triplets(tiny, torch.Generator().manual_seed(0), floor=0.05)
    assert floored[:, 5].all() and floored.sum() == 200
    small = 0.03 * torch.rand(500, 100, generator=torch.Generator().manual_seed(0))
    random = sample_triplets(small, torch.Generator().manual_seed(1))
    assert random.sum(1).min() == 1 and random.sum(1).max() == 3
    with pytest.raises(ValueError, match="probs must lie in"):
        sample_triplets(torch.full((1, 100), 1.5))


def test_shapes_protocol_and_dream_env():
    torch.manual_seed(0)
    model = SurgicalWorldModel(CONFIG).eval()
    assert isinstance(model, WorldModel)
    latent = model.initial_state(3)
    obs, action = torch.randn(3, 16), torch.zeros(3, 100)
    action[:, 17] = 1
    latent = model.observe(latent, action, obs, torch.ones(3, dtype=torch.bool))
    assert latent.h.shape == (3, 16) and torch.equal(latent.z, obs)
    prediction = model.predict(latent, action)
    assert prediction.embedding.shape == (3, 16) and prediction.phase_logits.shape == (3, 7)
    assert prediction.rewards.shape == (3, 5) and prediction.done_logit.shape == (3,)
    step = model.imagine_step(latent, action)
    weights = torch.tensor([1.0, 0.5, -0.7, 0.2, 0.3])
    torch.testing.assert_close(step.reward, prediction.rewards @ weights)
    assert model.features(step.latent).shape == (3, 32)
    assert model.next_action_logits(latent.h).shape == (3, 100)
    with pytest.raises(ValueError, match=r"action must have shape \(B, 100\)"):
        model.predict(latent, torch.zeros(3, 99))
    env = DreamEnv(model, start_latents=latent, action_space=gym.spaces.MultiBinary(100),
                   max_episode_steps=4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32,)
    for _ in range(4):
        obs, reward, terminated, truncated, info = env.step(np.eye(100, dtype=np.int8)[17])
    assert truncated or terminated


def test_confidence_weighting_changes_the_encoding():
    model = SurgicalWorldModel(CONFIG)
    conf = model.confidence((2, 3), torch.tensor([[True, False, True], [False, False, False]]))
    assert conf.shape == (2, 3, 2)
    torch.testing.assert_close(conf[0, 0], torch.tensor([0.4, 0.9]))
    torch.testing.assert_close(conf[1, 2], torch.tensor([1.0, 1.0]))
    action = torch.zeros(1, 100)
    action[0, 60] = 1
    true = model.encoder(action, model.confidence((1,), False))
    noisy = model.encoder(action, model.confidence((1,), True))
    assert not torch.allclose(true, noisy)


def test_the_noisy_path_feeds_recognised_actions(dataset):
    torch.manual_seed(0)
    model = SurgicalWorldModel(CONFIG)
    batch = WindowSampler(dataset.train, 9, seed=0).sample(4)
    everywhere = torch.ones(batch["triplets"].shape[:2], dtype=torch.bool)
    clean = window_losses(model, batch)
    noisy = window_losses(model, batch, everywhere)
    assert noisy["embedding"] != clean["embedding"]
    # with full confidence and a perfect recogniser, the two paths are one
    perfect = SurgicalWorldModel(dataclasses.replace(CONFIG, action_confidence=1.0, tool_confidence=1.0))
    perfect.load_state_dict(model.state_dict())
    same = dict(batch, recognised=batch["triplets"])
    for key, value in window_losses(perfect, same, everywhere).items():
        torch.testing.assert_close(value, window_losses(perfect, same)[key])
    # the targets never come from the recogniser: the action loss reads only the true labels
    swapped = dict(batch, recognised=torch.zeros_like(batch["recognised"]))
    assert window_losses(model, swapped, ~everywhere)["action"] == clean["action"]


def test_progressive_noise_schedule():
    config = SurgicalTrainConfig(steps=100, noise_start=0.2, noise_end=0.8, noise_warmup=0.5)
    levels = [config.noise_level(s) for s in range(100)]
    assert levels[0] == pytest.approx(0.2) and levels[50] == pytest.approx(0.8)
    assert levels[99] == pytest.approx(0.8) and np.all(np.diff(levels) >= 0)
    with pytest.raises(ValueError, match="noise_start <= noise_end"):
        SurgicalTrainConfig(noise_start=0.9, noise_end=0.1)


def test_training_learns_is_seeded_and_uses_the_dual_path_only_when_asked(dataset):
    def run(dual, seed=0, steps=40):
        torch.manual_seed(seed)
        model = SurgicalWorldModel(CONFIG)
        config = SurgicalTrainConfig(steps=steps, batch_size=16, dual_path=dual, seed=seed)
        return model, train_world_model(model, dataset.train, config)

    model, history = run(True)
    assert "noisy/embedding" in history.losses and "clean/embedding" in history.losses
    total = history.losses["total"]
    assert np.mean(total[-5:]) < 0.9 * np.mean(total[:5])
    _, again = run(True)
    assert again.losses["total"] == total
    _, clean = run(False, steps=3)
    assert not any(key.startswith("noisy/") for key in clean.losses)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = SurgicalWorldModel(CONFIG).eval()
    path = save_checkpoint(tmp_path / "wm.pt", "SurgicalWorldModel", world_model_payload(model))
    loaded = load_world_model(path)
    latent = model.initial_state(2)
    action = torch.zeros(2, 100)
    torch.testing.assert_close(loaded.predict(latent, action).embedding,
                               model.predict(latent, action).embedding)
    save_checkpoint(tmp_path / "other.pt", "DynamicsModel", {})
    with pytest.raises(ValueError, match="holds a DynamicsModel checkpoint"):
        load_world_model(tmp_path / "other.pt")


def test_dream_starts_are_read_from_real_contexts(dataset):
    from wmbook.surgical.imitation import start_latents

    torch.manual_seed(0)
    model = SurgicalWorldModel(CONFIG).eval()
    latents = start_latents(model, dataset.train, stride=5)
    expected = sum(len(range(0, len(p) - CONFIG.context + 1, 5)) for p in dataset.train)
    assert latents.h.shape == (expected, 16) and latents.z.shape == (expected, CONFIG.embedding_dim)
    torch.testing.assert_close(latents.h, start_latents(model, dataset.train, stride=5).h)
    with pytest.raises(ValueError, match="stride must be positive"):
        start_latents(model, dataset.train, stride=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda(dataset):
    torch.manual_seed(0)
    model = SurgicalWorldModel(CONFIG).cuda()
    history = train_world_model(model, dataset.train, SurgicalTrainConfig(steps=3, batch_size=8))
    assert np.isfinite(history.losses["total"]).all() and next(model.parameters()).is_cuda
    latent = model.initial_state(2, "cuda")
    step = model.imagine_step(latent, torch.zeros(2, 100, device="cuda"))
    assert step.reward.is_cuda
