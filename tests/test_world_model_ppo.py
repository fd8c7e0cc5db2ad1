"""Chapter 4's trainer: the YAML configuration, a tiny run, resume equal to an uninterrupted run,
and the command line (through ``python -m wmbook train-world-model-ppo``)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wmbook.agents.world_model_ppo import Config, WorldModelPPOTrainer, load_config, with_overrides
from wmbook.agents.world_model_ppo.config import DEFAULT_CONFIG_PATH, config_from_dict
from wmbook.config import ConfigError, to_dict as config_to_dict

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "total_timesteps": 96, "checkpoint_every": 1,
    "env": {"frame_size": 16, "num_envs": 2},
    "ppo": {"n_steps": 8, "batch_size": 16, "n_epochs": 2, "hidden_sizes": [8]},
    "world_model": {
        "vae": {"latent_dim": 4, "hidden_dims": [16], "channels": [4, 8], "batch_size": 16},
        "mdn_rnn": {"hidden_dim": 8, "num_mixtures": 2, "batch_size": 4, "chunk_length": 4},
        "training": {"pretrain_epochs": 1, "memory_epochs": 1, "imagination_ratio": 0.5,
                     "imagination_horizon": 3, "memory_refresh_every": 1, "memory_refresh_updates": 2},
        "data_collection": {"random_collection_steps": 60},
    },
    "evaluation": {"episodes": 2},
}


def tiny(tmp_path: Path, **extra) -> Config:
    return with_overrides(config_from_dict(TINY), out=str(tmp_path), **extra)


def test_the_default_file_mirrors_the_code_defaults():
    assert load_config(DEFAULT_CONFIG_PATH) == Config()
    assert DEFAULT_CONFIG_PATH == ROOT / "configs" / "world_model_ppo.yaml"


def test_the_seed_keys_are_there():
    data = config_to_dict(Config())["world_model"]
    assert {"latent_dim", "hidden_dims", "beta", "learning_rate"} <= set(data["vae"])
    assert {"hidden_dim", "num_mixtures", "temperature", "learning_rate"} <= set(data["mdn_rnn"])
    assert {"pretrain_epochs", "imagination_ratio", "imagination_horizon"} <= set(data["training"])
    assert "random_collection_steps" in data["data_collection"]


@pytest.mark.parametrize("data, message", [
    ({"world_model": {"vae": {"latent_dims": 8}}}, r"world_model\.vae\.latent_dims"),
    ({"world_model": {"trainig": {}}}, r"world_model\.trainig"),
    ({"totl_timesteps": 5}, r"totl_timesteps"),
    ({"world_model": {"mdn_rnn": {"num_mixtures": "five"}}}, r"world_model\.mdn_rnn\.num_mixtures must be an integer"),
    ({"world_model": {"vae": {"hidden_dims": 256}}}, r"world_model\.vae\.hidden_dims must be a list"),
    ({"world_model": {"training": {"imagination_ratio": 1.0}}}, r"imagination_ratio must lie in \[0, 1\)"),
    ({"total_timesteps": -1}, r"total_timesteps must be positive"),
    ({"world_model": {"training": {"memory_epochs": -2}}}, r"memory_epochs must be >= 0"),
    ({"env": {"fovea": "yes"}}, r"env\.fovea must be true or false"),
    ({"world_model": {"training": {"memory_refresh_every": -1}}}, r"memory_refresh_every must be >= 0"),
])
def test_bad_configurations_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_yaml_file_with_an_unknown_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("world_model:\n  vae:\n    latent_dim: 16\n    betta: 0.5\n")
    with pytest.raises(ConfigError, match=r"world_model\.vae\.betta"):
        load_config(path)
    path.write_text("world_model:\n  vae:\n    latent_dim: 16\n")
    assert load_config(path).world_model.vae.latent_dim == 16
    with pytest.raises(ConfigError, match="no configuration file"):
        load_config(tmp_path / "missing.yaml")


def test_a_tiny_run_logs_the_seed_metrics(tmp_path):
    torch.set_num_threads(1)
    result = WorldModelPPOTrainer(tiny(tmp_path)).train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    names = set().union(*records)
    assert {"vae/reconstruction_loss", "vae/kl_divergence", "mdn/nll", "imagination/ratio",
            "imagination/horizon", "eval/final_mean_return"} <= names
    ratios = [r["imagination/ratio"] for r in records if "imagination/ratio" in r]
    assert ratios and all(abs(r - 0.5) < 0.05 for r in ratios)  # half the experience is imagined
    assert result.real_steps >= 96 and result.imagined_steps > 0 and len(result.final_returns) == 2
    assert (tmp_path / "checkpoint.pt").is_file()


def test_resume_equals_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    whole = WorldModelPPOTrainer(tiny(tmp_path / "whole"))
    expected = whole.train()

    WorldModelPPOTrainer(tiny(tmp_path / "cut")).train(max_iterations=2)  # interrupted
    resumed = WorldModelPPOTrainer(tiny(tmp_path / "cut"))
    resumed.load(tmp_path / "cut" / "checkpoint.pt")
    got = resumed.train()

    assert got.episode_returns == expected.episode_returns
    assert got.final_returns == expected.final_returns
    assert got.real_steps == expected.real_steps and got.imagined_steps == expected.imagined_steps
    for p, q in zip(whole.ppo.net.parameters(), resumed.ppo.net.parameters()):
        assert torch.equal(p, q)
    strip = lambda path: [{k: v for k, v in json.loads(line).items()} for line in path.read_text().splitlines()]
    assert strip(tmp_path / "cut" / "metrics.jsonl") == strip(tmp_path / "whole" / "metrics.jsonl")


def test_m_goes_on_training_on_the_controllers_own_episodes(tmp_path):
    """Iterative training: M's data is the random latents plus every real episode the controller
    finished, each stored whole (reset latent to end); M changes at every refresh and only then."""
    torch.set_num_threads(1)
    trainer = WorldModelPPOTrainer(tiny(tmp_path, **{"world_model.training.memory_refresh_every": 2}))
    trainer.pretrain()
    random_steps = len(trainer.random_latents)
    weights = [p.detach().clone() for p in trainer.mdn.parameters()]
    trainer._reset_all()
    records = [trainer.iterate() for _ in range(2)]
    assert "mdn/nll" not in records[0] and np.isfinite(records[1]["mdn/nll"])
    assert not all(torch.equal(p, q) for p, q in zip(weights, trainer.mdn.parameters()))
    data = trainer.memory_data
    finished = len(trainer.result.episode_returns)
    assert finished > 0 and len(list(data.episodes())) == len(list(trainer.random_latents.episodes())) + finished
    open_steps = sum(len(e["obs"]) for e in trainer._open_episodes if e is not None)
    decisions = 2 * trainer.config.ppo.n_steps * trainer.config.env.num_envs
    assert len(data) - random_steps + open_steps == decisions + finished + sum(e is not None for e in trainer._open_episodes)
    repeat = trainer.config.env.action_repeat
    for episode in list(data.episodes())[-finished:]:  # the controller's: 1 per real step, ended by a fall or the limit
        assert np.all((episode.reward >= 1) & (episode.reward <= repeat))
        assert episode.terminated[-1] or episode.truncated[-1]

    untrained = WorldModelPPOTrainer(tiny(tmp_path / "u", **{"world_model.training.pretrain_memory": False}))
    untrained.pretrain()
    weights = [p.detach().clone() for p in untrained.mdn.parameters()]
    untrained._reset_all()
    untrained.iterate(), untrained.iterate()
    assert untrained.memory_data is None  # the untrained-M ablation stays untrained
    assert all(torch.equal(p, q) for p, q in zip(weights, untrained.mdn.parameters()))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wmbook", "train-world-model-ppo", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("args, message", [
    (["--config", "missing.yaml"], "no configuration file"),
    (["--env", "NoSuchEnv-v9"], "does not exist"),
    (["--env", "Pendulum-v1"], "needs Discrete actions"),
    (["--total-timesteps", "-5"], "total_timesteps must be positive"),
    (["--resume", "nothing.pt"], "no checkpoint"),
    (["--config", "c.yaml"], "world_model.mdn_rnn.mixtures"),
])
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, args, message):
    from wmbook.agents.world_model_ppo.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"world_model": {"mdn_rnn": {"mixtures": 3}}}))
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_command_line_bad_input_without_traceback(tmp_path):
    done = cli("--config", "missing.yaml", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no configuration file" in lines[0] and "Traceback" not in done.stderr


def test_command_line_trains_resumes_and_logs_to_tensorboard(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    done = cli("--config", "tiny.yaml", "--out", "run", "--num-envs", "2", "--device", "cpu", "--tensorboard",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["real_steps"] >= 96 and len(result["final_returns"]) == 2
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    again = cli("--resume", "run/checkpoint.pt", cwd=tmp_path)  # a finished run resumes to the same end
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "run" / "result.json").read_text())["final_returns"] == result["final_returns"]


def test_v_and_m_sections_take_their_defaults_from_the_models_settings():
    from wmbook.agents.world_model_ppo.config import MDN_KEYS, VAE_KEYS, MDNSection, VAESection
    from wmbook.models.mdn_rnn import MDNRNNConfig
    from wmbook.models.vae import VAEConfig

    for section, keys, defaults, extra in ((VAESection(), VAE_KEYS, VAEConfig(), {"batch_size"}),
                                           (MDNSection(), MDN_KEYS, MDNRNNConfig(), {"batch_size", "chunk_length"})):
        assert {f.name for f in dataclasses.fields(section)} == set(keys) | extra
        assert all(getattr(section, key) == getattr(defaults, key) for key in keys)
    trainer = WorldModelPPOTrainer(config_from_dict({**TINY, "world_model": {**TINY["world_model"],
                                                                            "vae": {**TINY["world_model"]["vae"], "beta": 2.5}}}))
    assert trainer.vae.config.beta == 2.5 and trainer.vae.config.image_size == TINY["env"]["frame_size"]
    assert trainer.mdn.config.num_mixtures == TINY["world_model"]["mdn_rnn"]["num_mixtures"]


def test_the_ppo_section_takes_its_defaults_from_ppo_config():
    from wmbook.agents.ppo import PPOConfig
    from wmbook.agents.world_model_ppo.config import PPO_KEYS, PPOSection

    section, defaults = PPOSection(), PPOConfig()
    assert sorted(f.name for f in dataclasses.fields(section)) == sorted(PPO_KEYS)
    assert all(getattr(section, key) == getattr(defaults, key) for key in PPO_KEYS)
    trainer_config = WorldModelPPOTrainer(config_from_dict({**TINY, "ppo": {"gamma": 0.9}})).ppo_config()
    assert trainer_config.gamma == 0.9 and trainer_config.n_epochs == defaults.n_epochs


@pytest.mark.parametrize("memory_epochs, passes", [(0, 1), (3, 3)])
def test_m_trains_for_memory_epochs_passes_or_as_many_as_v(tmp_path, memory_epochs, passes):
    config = tiny(tmp_path, **{"world_model.training.memory_epochs": memory_epochs, "env.fovea": False})
    trainer = WorldModelPPOTrainer(config)
    trainer.pretrain()
    wm = config.world_model
    per_pass = -(-len(trainer.random_latents) // (wm.mdn_rnn.batch_size * wm.mdn_rnn.chunk_length))
    assert len(trainer.result.mdn_history["nll"]) == passes * per_pass
    assert len(trainer.result.vae_history["reconstruction"]) == wm.training.pretrain_epochs


def test_the_controller_is_evaluated_through_v_and_m_episode_by_episode(tmp_path):
    """The book's protocol with C's memory: V encodes every real frame, M steps on the rows that
    acted, and the same controller from the same starts gets the same returns."""
    from wmbook.agents.world_model_ppo.config import make_envs
    from wmbook.agents.world_model_ppo.controller import ControllerPolicy, evaluate_controller
    from wmbook.evaluation import evaluate

    trainer = WorldModelPPOTrainer(tiny(tmp_path))
    steps = []
    step = trainer.world.mdn.step

    def spy(z, action, state):
        steps.append(len(z))
        return step(z, action, state)

    trainer.world.mdn.step = spy
    returns = evaluate_controller(trainer.world, trainer.ppo, trainer.config, 3, seed=5)
    assert returns.shape == (3,) and all(r >= 1 for r in returns)
    decisions = -(-max(returns) // trainer.config.env.action_repeat)  # each action is repeated
    assert len(steps) == decisions - 1  # M steps after every action but the last
    assert steps[0] == 3 and all(a >= b for a, b in zip(steps, steps[1:]))  # rows only drop out
    again = evaluate(ControllerPolicy(trainer.world, trainer.ppo), lambda: make_envs(trainer.config, 1)[0], 3, 5)
    assert again.tolist() == returns.tolist()
