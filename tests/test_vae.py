"""The convolutional beta-VAE: shapes, deterministic encoding, the two loss terms, and learning."""

import numpy as np
import pytest
import torch

from wmbook.models.vae import ConvVAE, VAEConfig, encode_frames, train_vae

SMALL = VAEConfig(latent_dim=4, hidden_dims=(32,), channels=(4, 8), image_size=16, learning_rate=3e-3)


def blobs(n: int, seed: int = 0) -> np.ndarray:
    """uint8 frames (n, 3, 16, 16): a dark square at a random column on white."""
    rng = np.random.default_rng(seed)
    frames = np.full((n, 3, 16, 16), 255, np.uint8)
    for i, col in enumerate(rng.integers(0, 12, n)):
        frames[i, :, 6:10, col:col + 4] = 0
    return frames


def test_shapes_and_uint8_scaling():
    torch.manual_seed(0)
    vae = ConvVAE(SMALL)
    frames = torch.as_tensor(blobs(5))
    out = vae(frames)
    assert out.logits.shape == (5, 3, 16, 16)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (5, 4)
    pixels = vae.decode(out.z)
    assert pixels.shape == (5, 3, 16, 16) and 0 <= pixels.min() and pixels.max() <= 1
    # uint8 frames are read as intensities in [0, 1]: the same as their float version
    assert torch.allclose(vae.encode(frames), vae.encode(frames.float() / 255))


def test_encode_is_deterministic_and_forward_samples():
    torch.manual_seed(0)
    vae = ConvVAE(SMALL)
    frames = torch.as_tensor(blobs(3))
    assert torch.equal(vae.encode(frames), vae.encode(frames))
    a = vae(frames, generator=torch.Generator().manual_seed(1)).z
    b = vae(frames, generator=torch.Generator().manual_seed(2)).z
    assert not torch.equal(a, b)


def test_loss_terms_reported_and_beta_weights_kl():
    torch.manual_seed(0)
    frames = torch.as_tensor(blobs(4))
    for beta in (0.0, 2.0):
        vae = ConvVAE(VAEConfig(**{**SMALL.__dict__, "beta": beta}))
        out = vae(frames, generator=torch.Generator().manual_seed(0))
        losses = vae.loss(frames, out)
        assert losses.reconstruction > 0 and losses.kl >= 0
        assert torch.isclose(losses.loss, losses.reconstruction + beta * losses.kl)


def test_wrong_shape_is_named():
    vae = ConvVAE(SMALL)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        vae.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="latent"):
        VAEConfig(latent_dim=0)
    with pytest.raises(ValueError, match="divisible"):
        VAEConfig(image_size=20, channels=(4, 8, 16))


def test_training_lowers_reconstruction_and_is_seeded():
    frames = blobs(128)

    def fit() -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(0)
        vae = ConvVAE(SMALL)
        history = train_vae(vae, frames, epochs=25, batch_size=32, seed=3)
        return history.reconstruction, encode_frames(vae, frames[:4])

    (curve, z), (_, z_again) = fit(), fit()
    assert curve[-1] < 0.5 * curve[0]
    assert torch.equal(z, z_again)


def test_nan_loss_stops_with_a_clear_error():
    torch.manual_seed(0)
    vae = ConvVAE(SMALL)
    with torch.no_grad():
        vae.to_mu.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="epoch 0, batch 0"):
        train_vae(vae, blobs(8), epochs=1)


def test_contrast_weight_counts_pixels_that_differ_from_the_mean_frame():
    frames = torch.as_tensor(blobs(16))
    torch.manual_seed(0)
    plain = ConvVAE(SMALL)
    weighted = ConvVAE(VAEConfig(**{**SMALL.__dict__, "contrast_weight": 10.0}))
    weighted.load_state_dict(plain.state_dict())
    train_vae(weighted, frames, epochs=0)  # sets the mean frame only
    mean = frames.float().mean(0) / 255
    assert torch.allclose(weighted.mean_frame, mean)
    out = plain(frames, generator=torch.Generator().manual_seed(0))
    # the same pass costs more where frames differ from the mean, and never less
    assert weighted.loss(frames, out).reconstruction > 1.5 * plain.loss(frames, out).reconstruction
    with pytest.raises(ValueError, match="contrast_weight"):
        VAEConfig(contrast_weight=0.5)


def test_frames_wider_than_tall():
    torch.manual_seed(0)
    vae = ConvVAE(VAEConfig(latent_dim=4, hidden_dims=(16,), channels=(4, 8), image_size=16, image_width=32))
    frames = torch.randint(0, 256, (2, 3, 16, 32), dtype=torch.uint8)
    assert vae.decode(vae.encode(frames)).shape == (2, 3, 16, 32)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 32\)"):
        vae.encode(torch.zeros(2, 3, 16, 16))


def test_free_bits_leave_a_dimension_below_the_floor_unpushed():
    torch.manual_seed(0)
    frames = torch.as_tensor(blobs(8))
    plain, free = ConvVAE(SMALL), ConvVAE(VAEConfig(**{**SMALL.__dict__, "free_bits": 100.0}))
    free.load_state_dict(plain.state_dict())
    out = free(frames, generator=torch.Generator().manual_seed(0))
    losses = free.loss(frames, out)
    # the KL is reported as it is; below the floor on every dimension, the loss charges the floor
    assert torch.isclose(losses.kl, plain.loss(frames, out).kl)
    assert torch.isclose(losses.loss, losses.reconstruction + 100.0 * SMALL.latent_dim)
    # so the KL term adds nothing to the gradient: it is the reconstruction's alone
    with_floor = torch.autograd.grad(losses.loss, free.to_logvar.weight, retain_graph=True)[0]
    reconstruction_only = torch.autograd.grad(losses.reconstruction, free.to_logvar.weight, retain_graph=True)[0]
    with_kl = torch.autograd.grad(losses.reconstruction + losses.kl, free.to_logvar.weight)[0]
    assert torch.equal(with_floor, reconstruction_only) and not torch.allclose(with_kl, reconstruction_only)
    with pytest.raises(ValueError, match="free_bits"):
        VAEConfig(free_bits=-1.0)


def test_codes_are_standardised_with_the_training_frames_statistics():
    frames = blobs(128)
    torch.manual_seed(0)
    vae = ConvVAE(SMALL)
    train_vae(vae, frames, epochs=3, batch_size=32, seed=3)
    z = encode_frames(vae, frames)
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(4), atol=1e-3)
    # decode() takes the standardised code back to the decoder's scale
    mu = vae.encode_dist(torch.as_tensor(frames[:5]))[0]
    assert torch.allclose(vae.decode(z[:5]), torch.sigmoid(vae.decode_logits(mu)), atol=1e-5)
