"""V + M + C: a PPO controller trained partly in the dream of a VAE and an MDN-RNN, from pixels.

The run, top to bottom (:meth:`~wmbook.agents.world_model_ppo.trainer.WorldModelPPOTrainer.train`):

1. **Random collection**: ``data_collection.random_collection_steps`` real steps of a uniformly
   random policy, stored as whole episodes of frames (:class:`~wmbook.buffers.SequenceBuffer`).
2. **Pretraining V** (:class:`~wmbook.models.vae.ConvVAE`) on those frames for
   ``training.pretrain_epochs`` epochs, then **M** (:class:`~wmbook.models.mdn_rnn.MDNRNN`) on
   their latents for ``training.memory_epochs`` passes over the time steps (0: as many as V's
   epochs; ``training.pretrain_memory: false`` leaves M untrained, the ablation of Chapter 4).
   M is cheap and its end head, which carries CartPole's whole task in the dream, needs many
   more updates than V: with few, it predicts little more than how often random play ends.
3. **Mixed training**: every iteration collects ``num_envs x n_steps`` real steps with the
   controller, whose input is ``[z, h]`` (V's latent of the frame and M's hidden state), then
   imagines ``imagination_ratio / (1 - imagination_ratio)`` times as many steps with M, in
   rollouts of at most ``imagination_horizon`` steps that start from the latent states just
   visited; PPO updates on both together. In the dream the reward is M's reward head and an
   episode ends where a draw from M's done head says so; a rollout cut by the horizon is
   bootstrapped from the critic. Optionally (``training.memory_refresh_every`` > 0, off by
   default), Ha and Schmidhuber's iterative procedure: every that many iterations M goes on
   training for ``memory_refresh_updates`` updates on the random data together with the
   controller's own real episodes so far, since random play shows M short falls and a balancing
   controller shows it slow drifts, which M must dream too.

Every iteration's metrics go to ``metrics.jsonl`` in the run folder (and to TensorBoard with
``--tensorboard``), under the names ``vae/reconstruction_loss``, ``vae/kl_divergence``,
``mdn/nll``, ``imagination/ratio`` (imagined steps over all steps the controller learned from),
``imagination/horizon`` (mean length of an imagined rollout) and ``train/episode_return``.
Checkpoints are written atomically at the end of pretraining and every ``checkpoint_every``
iterations; ``--resume`` continues from one to the same result as a run that was never stopped.

The package: :mod:`~wmbook.agents.world_model_ppo.config` (the configuration and the random
data), :mod:`~wmbook.agents.world_model_ppo.trainer` (the run),
:mod:`~wmbook.agents.world_model_ppo.controller` (C in the real environment),
:mod:`~wmbook.agents.world_model_ppo.dream` (C trained wholly in the dream),
:mod:`~wmbook.agents.world_model_ppo.diagnostics` (what V and M learned) and
:mod:`~wmbook.agents.world_model_ppo.cli` (``python -m wmbook train-world-model-ppo``).
"""

from wmbook.agents.world_model_ppo.config import Config, load_config, with_overrides
from wmbook.agents.world_model_ppo.controller import evaluate_controller
from wmbook.agents.world_model_ppo.dream import train_in_dream
from wmbook.agents.world_model_ppo.trainer import VMCMethod, WorldModelPPOTrainer

__all__ = ["Config", "VMCMethod", "WorldModelPPOTrainer", "evaluate_controller", "load_config", "train_in_dream",
           "with_overrides"]
