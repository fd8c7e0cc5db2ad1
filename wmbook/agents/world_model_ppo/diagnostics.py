"""What V and M learned, measured apart from C: read-outs of CartPole's true state from ``z`` and
``[z, h]``, reconstructions and dreams drawn as frames, M's held-out likelihood and end head,
ablations of V and M trained exactly as a trainer's, and the check (:func:`check_pretraining`)
that Chapter 4 runs on every seed before its controllers train."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from wmbook.agents.world_model_ppo.config import collect_random, make_envs, memory_epochs, with_overrides
from wmbook.agents.world_model_ppo.dream import dream_starts
from wmbook.agents.world_model_ppo.trainer import WorldModelPPOTrainer
from wmbook.models.mdn_rnn import MDNRNN, latent_buffer, train_mdn_rnn
from wmbook.rollout import imagine


@dataclass
class Heldout:
    """Random real data the models never trained on: frames ``(N, 3, S, S)`` uint8 and the same
    episodes as latents (a :class:`~wmbook.buffers.SequenceBuffer` of z)."""

    frames: np.ndarray
    latents: object
    states: np.ndarray  # (N, 4): x, x_dot, theta, theta_dot of every frame


def heldout_seed(seed: int) -> int:
    """The seed of the held-out random episodes that test the V and M of ``seed``."""
    return seed + 100


def heldout(trainer: WorldModelPPOTrainer, steps: int, seed: int) -> Heldout:
    """``steps`` random real steps collected with another seed, encoded by ``trainer``'s V."""
    config = with_overrides(trainer.config, **{"world_model.data_collection.random_collection_steps": steps})
    states: list = []
    frames_buffer, _ = collect_random(config, seed, states=states)
    frames = np.concatenate([episode.obs for episode in frames_buffer.episodes()])
    return Heldout(frames, latent_buffer(frames_buffer, trainer.vae, seed=seed), np.stack(states))


STATE_NAMES = ("x", "x_dot", "theta", "theta_dot")


def linear_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> np.ndarray:
    """R^2 per column of ``y_test`` ``(N, K)`` of a least-squares read-out (with an intercept) fitted
    on ``(x_train (M, D), y_train (M, K))`` and applied to ``x_test`` ``(N, D)``: 1 means recovered,
    0 no better than the test mean."""
    prediction = LinearRegression().fit(x_train, y_train).predict(x_test)
    return r2_score(y_test, prediction, multioutput="raw_values")


def state_readout(trainer: WorldModelPPOTrainer, held: Heldout) -> dict[str, np.ndarray]:
    """How much of the true state a linear read-out recovers from ``z`` and from ``[z, h]``.

    Least squares fitted on the random training data, scored on the held-out data: R^2 per
    state variable (1: fully recovered, 0: no better than the mean), for each input.
    """
    train, test = dream_starts(trainer.world, trainer.random_latents), dream_starts(trainer.world, held.latents)
    scores = {}
    for name, pick in (("z", lambda s: s.z), ("[z, h]", lambda s: torch.cat([s.z, s.h], 1))):
        scores[name] = linear_r2(pick(train).cpu().numpy(), trainer.random_states,
                                 pick(test).cpu().numpy(), held.states)
    return scores


def view_ablation(trainer: WorldModelPPOTrainer, held_seed: int, held_steps: int) -> np.ndarray:
    """The read-out of :func:`state_readout` from ``z`` for a V trained on the band view alone
    (``env.fovea`` off): the same random episodes rendered without the window on the cart, a VAE
    trained as ``trainer``'s (same epochs, seed), scored on held-out episodes of ``held_seed``.
    R^2 per state variable."""
    from wmbook.models.vae import ConvVAE, encode_frames, train_vae

    c = with_overrides(trainer.config, **{"env.fovea": False})
    frames_of = {}
    for name, seed, steps in (("train", c.seed, c.world_model.data_collection.random_collection_steps),
                              ("test", held_seed, held_steps)):
        states: list = []
        config = with_overrides(c, **{"world_model.data_collection.random_collection_steps": steps})
        buffer, _ = collect_random(config, seed, states=states)  # the same episodes: same seeds
        frames_of[name] = (np.concatenate([episode.obs for episode in buffer.episodes()]), np.stack(states))
    torch.manual_seed(c.seed)
    vae = ConvVAE(trainer.vae.config).to(trainer.device)
    train_vae(vae, frames_of["train"][0], c.world_model.training.pretrain_epochs, c.world_model.vae.batch_size,
              seed=c.seed)
    (x_train, y_train), (x_test, y_test) = frames_of["train"], frames_of["test"]
    return linear_r2(encode_frames(vae, x_train).cpu().numpy(), y_train,
                     encode_frames(vae, x_test).cpu().numpy(), y_test)


@torch.no_grad()
def reconstructions(trainer: WorldModelPPOTrainer, frames: np.ndarray) -> np.ndarray:
    """V's reconstructions of ``frames`` ``(N, 3, S, S)`` uint8, as uint8."""
    z = trainer.vae.encode(torch.as_tensor(frames, device=trainer.device))
    return (trainer.vae.decode(z) * 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def decode_latents(trainer: WorldModelPPOTrainer, z: np.ndarray | torch.Tensor) -> np.ndarray:
    """Frames ``(N, 3, S, S)`` uint8 that V draws for latents ``(N, Z)``."""
    z = torch.as_tensor(z, dtype=torch.float32, device=trainer.device)
    return (trainer.vae.decode(z) * 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def filmstrip(trainer: WorldModelPPOTrainer, steps: int, seed: int, temperature: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real episode of random actions and M's dream of the same actions from the same first
    frame: real frames, V's reconstructions of them, and the dream decoded, each ``(T, 3, S, S)``."""
    from wmbook.models.mdn_rnn import VMLatent

    env = make_envs(trainer.config, 1)[0]
    rng = np.random.default_rng(seed)
    frame, _ = env.reset(seed=seed)
    real, actions = [frame], []
    # a gentle random policy (alternate sides) keeps the pole up long enough to compare
    for t in range(steps - 1):
        action = int(rng.integers(2)) if t % 2 else 1 - (actions[-1] if actions else 0)
        frame, _, terminated, truncated, _ = env.step(action)
        real.append(frame), actions.append(action)
        if terminated or truncated:
            break
    env.close()
    real = np.stack(real)
    world = trainer.world
    old = world.temperature
    world.temperature = temperature
    z0 = trainer.vae.encode(torch.as_tensor(real[:1], device=trainer.device))
    h, cell = trainer.mdn.initial_state(1, trainer.device)
    dream = imagine(world, None, len(actions), actions=torch.tensor([actions]), start_latent=VMLatent(z0, h, cell))
    world.temperature = old
    return real, reconstructions(trainer, real), decode_latents(trainer, dream.latents.z[0])


def heldout_nll(mdn: MDNRNN, latents, chunk: int = 16, batches: int = 20, seed: int = 0) -> float:
    """M's mean negative log-likelihood per step of held-out latent episodes (nats, summed over z)."""
    buffer = copy.deepcopy(latents)
    buffer.rng = np.random.default_rng(seed)
    device = next(mdn.parameters()).device
    values = []
    with torch.no_grad():
        for _ in range(batches):
            batch = buffer.sample(32, min(chunk, len(buffer)), device)
            values.append(mdn.sequence_loss(batch.obs, batch.action, batch.reward, batch.terminated,
                                            batch.is_first)["nll"].item())
    return float(np.mean(values))


def retrained_memory(trainer: WorldModelPPOTrainer, passes: int | None = None, **changes) -> MDNRNN:
    """An M trained as ``trainer``'s (same data, batches, seed) but for ``passes`` passes over the
    random data (default: as many as ``trainer``'s) and with ``changes`` to its config."""
    wm = trainer.config.world_model
    config = dataclasses.replace(trainer.mdn.config, **changes)
    torch.manual_seed(trainer.config.seed)
    mdn = MDNRNN(config).to(trainer.device)
    latents = copy.deepcopy(trainer.random_latents)
    latents.rng = np.random.default_rng(trainer.config.seed)
    per_epoch = math.ceil(len(latents) / (wm.mdn_rnn.batch_size * wm.mdn_rnn.chunk_length))
    passes = memory_epochs(trainer.config) if passes is None else passes
    train_mdn_rnn(mdn, latents, passes * per_epoch, wm.mdn_rnn.batch_size, wm.mdn_rnn.chunk_length,
                  loss_fn=trainer.method.mdn_loss)
    return mdn


def single_gaussian(trainer: WorldModelPPOTrainer) -> MDNRNN:
    """An M with one mixture component, trained exactly as ``trainer``'s M (same data, updates,
    seed): the ablation of the mixture."""
    return retrained_memory(trainer, num_mixtures=1)


@torch.no_grad()
def end_predictions(mdn: MDNRNN, latents) -> tuple[np.ndarray, np.ndarray]:
    """M's predicted probability that the episode ends at every step of latent episodes, filtered
    through M as in the real environment: ``(probabilities (N,), ended (N,) bool)``."""
    device = next(mdn.parameters()).device
    probabilities, ended = [], []
    for episode in latents.episodes():
        z = torch.as_tensor(episode.obs, device=device)
        state = mdn.initial_state(1, device)
        for t in range(len(episode.action)):
            out, state = mdn.step(z[t:t + 1], torch.as_tensor(episode.action[t:t + 1], device=device), state)
            probabilities.append(torch.sigmoid(out.done_logit).item())
            ended.append(bool(episode.terminated[t]))
    return np.asarray(probabilities), np.asarray(ended)


def end_probabilities(mdn: MDNRNN, latents) -> tuple[float, float]:
    """M's mean predicted probability that the episode ends, on the steps of held-out latent
    episodes that did end it and on those that did not: ``(at ends, elsewhere)``. An end head
    that learned only how often random play ends gives the two the same value."""
    probabilities, ended = end_predictions(mdn, latents)
    at_end = float(probabilities[ended].mean()) if ended.any() else float("nan")
    return at_end, float(probabilities[~ended].mean())


# What C needs from V and M, checked on held-out random episodes after pretraining. CartPole ends
# when the pole leans past 12 degrees or the cart leaves the track: a V whose z gives the pole's
# angle only roughly hides how close an episode is to its end, M cannot learn the end, and no
# controller on [z, h] balances the pole. Measured on seeds 200-209 (docs/tuning.md): the V of
# runs whose M learned no end read the angle out with R^2 from -0.2 to 0.95, the others with 0.97
# to 1.00; M's end AUC was 0.54 to 0.83 in the first, 0.89 to 1.00 in the second.
MIN_THETA_R2 = 0.95   # pole angle from z, linear read-out
MIN_END_AUC = 0.85    # M's end probability, steps that end an episode against the others


@dataclass(frozen=True)
class PretrainingCheck:
    """What a seed's pretrained V and M learned, measured on held-out random episodes.

    ``theta_r2``: the pole angle's R^2 from a linear read-out of ``z`` (:func:`state_readout`);
    ``end_auc``: the ROC AUC of M's end probability between the steps that ended an episode and
    the others (0.5: no better than chance); ``p_end``, ``p_live``: its mean at those steps and
    elsewhere (:func:`end_probabilities`); ``nll``: M's held-out NLL per step (nats).
    """

    seed: int
    theta_r2: float
    end_auc: float
    p_end: float
    p_live: float
    nll: float

    @property
    def failed_stage(self) -> str | None:
        """``"V"`` or ``"M"``, the first stage whose check failed, or ``None`` if both passed."""
        if not self.theta_r2 >= MIN_THETA_R2:
            return "V"
        if not self.end_auc >= MIN_END_AUC:
            return "M"
        return None

    @property
    def _v(self) -> str:
        return f"pole angle R^2 from z {self.theta_r2:.2f}"

    @property
    def _m(self) -> str:
        return f"M's end AUC {self.end_auc:.2f} (end probability {self.p_end:.2f} at ends, {self.p_live:.2f} elsewhere)"

    def measured(self) -> str:
        """The two measurements, in one line."""
        return f"{self._v}, {self._m}"

    def describe(self) -> str:
        """One line naming what failed and by how much, or saying that both checks passed."""
        v, m = self._v, self._m
        if self.failed_stage == "V":
            return f"V failed: {v} < {MIN_THETA_R2}; {m}"
        if self.failed_stage == "M":
            return f"M failed: {m}, AUC < {MIN_END_AUC}; {v}"
        return f"V and M passed: {self.measured()}"


def check_pretraining(trainer: WorldModelPPOTrainer, held: Heldout) -> PretrainingCheck:
    """Measure what ``trainer``'s V and M learned on the held-out episodes ``held``."""
    from sklearn.metrics import roc_auc_score

    theta = float(state_readout(trainer, held)["z"][STATE_NAMES.index("theta")])
    probabilities, ended = end_predictions(trainer.mdn, held.latents)
    auc = float(roc_auc_score(ended, probabilities)) if 0 < ended.sum() < len(ended) else float("nan")
    p_end = float(probabilities[ended].mean()) if ended.any() else float("nan")
    return PretrainingCheck(trainer.config.seed, theta, auc, p_end, float(probabilities[~ended].mean()),
                            heldout_nll(trainer.mdn, held.latents, seed=trainer.config.seed))


def vae_ablation(trainer: WorldModelPPOTrainer, **changes) -> dict[str, float]:
    """A VAE trained exactly as ``trainer``'s (same frames, epochs, seed) with ``changes`` to its
    config (e.g. ``likelihood="gaussian"``); its last-epoch reconstruction loss and KL."""
    from wmbook.models.vae import ConvVAE, train_vae

    c = trainer.config
    torch.manual_seed(c.seed)
    vae = ConvVAE(dataclasses.replace(trainer.vae.config, **changes)).to(trainer.device)
    frames = np.concatenate([episode.obs for episode in trainer.random_frames.episodes()])
    history = train_vae(vae, frames, c.world_model.training.pretrain_epochs, c.world_model.vae.batch_size, seed=c.seed,
                        loss_fn=trainer.method.vae_loss)
    return {"reconstruction": history.reconstruction[-1], "kl": history.kl[-1]}
