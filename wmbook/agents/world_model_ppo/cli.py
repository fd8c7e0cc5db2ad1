"""``python -m wmbook train-world-model-ppo``: V + M + C from the command line.

    python -m wmbook train-world-model-ppo --env CartPole-v1 --total-timesteps 40000
    python -m wmbook train-world-model-ppo --config configs/world_model_ppo.yaml --tensorboard
    python -m wmbook train-world-model-ppo --resume runs/world_model_ppo/checkpoint.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from wmbook.agents.world_model_ppo.config import Config, config_from_dict, load_config, with_overrides
from wmbook.agents.world_model_ppo.trainer import CHECKPOINT_KIND, RunResult, WorldModelPPOTrainer
from wmbook.checkpoint import load_checkpoint, write_json
from wmbook.config import ConfigError
from wmbook.device import pick_device


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wmbook train-world-model-ppo",
        description="Train V + M + C (a VAE, an MDN-RNN and a PPO controller trained partly in the "
                    "dream) on an environment seen through its pixels.")
    parser.add_argument("--config", help="YAML configuration (default: the package's defaults, as in "
                                         "configs/world_model_ppo.yaml)")
    parser.add_argument("--env", help="Gymnasium environment id with rgb_array rendering (default CartPole-v1)")
    parser.add_argument("--total-timesteps", type=int, help="real environment steps of the controller")
    parser.add_argument("--device", help="auto, cpu, cuda or mps")
    parser.add_argument("--num-envs", type=int, help="environments stepped side by side")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="folder for metrics.jsonl, checkpoint.pt, result.json and tensorboard/")
    parser.add_argument("--imagination-ratio", type=float, help="fraction of the controller's experience imagined")
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (in OUT/tensorboard)")
    parser.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    return parser


def _check_env(env_id: str) -> None:
    """A one-line error for an id that does not exist, has no pixels or no discrete actions."""
    import gymnasium as gym

    try:
        spec = gym.spec(env_id)
    except gym.error.Error as error:
        raise ConfigError(f"environment {env_id!r} does not exist: {error}") from None
    try:
        env = gym.make(spec.id, render_mode="rgb_array")
    except Exception as error:  # an env without rgb_array rendering, or missing dependencies
        raise ConfigError(f"environment {env_id!r} cannot render frames (render_mode='rgb_array'): {error}") from None
    try:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ConfigError(f"environment {env_id!r} has action space {env.action_space}; this trainer's "
                              f"controller needs Discrete actions")
    finally:
        env.close()


def run_from_args(argv: list[str] | None) -> RunResult:
    """Parse the command line, build the configuration and run (or resume)."""
    args = _parser().parse_args(argv)
    if args.resume:
        data = load_checkpoint(args.resume, CHECKPOINT_KIND)
        config = config_from_dict(data["config"])
        config = dataclasses.replace(config, out=str(Path(args.resume).parent))
    else:
        config = load_config(args.config) if args.config else Config()
    flag_keys = {"env": "env.id", "total_timesteps": "total_timesteps", "num_envs": "env.num_envs",
                 "seed": "seed", "out": "out", "device": "device",
                 "imagination_ratio": "world_model.training.imagination_ratio"}
    overrides = {key: getattr(args, flag) for flag, key in flag_keys.items() if getattr(args, flag) is not None}
    if args.tensorboard:
        overrides["tensorboard"] = True
    if overrides:
        config = with_overrides(config, **overrides)
    _check_env(config.env.id)
    device = pick_device(config.device)
    torch.set_num_threads(1)
    trainer = WorldModelPPOTrainer(config, device, progress=args.progress)
    if args.resume:
        trainer.load(args.resume)
    result = trainer.train()
    write_json(Path(config.out) / "result.json", {**dataclasses.asdict(result), "final_return": result.final_return})
    print(f"real steps {result.collection_steps + result.real_steps:,} (random {result.collection_steps:,}, "
          f"controller {result.real_steps:,}), imagined {result.imagined_steps:,}; greedy return "
          f"{result.final_return:.1f} over {len(result.final_returns)} episodes; written to {config.out}")
    return result


def main(argv: list[str] | None = None) -> int:
    """The ``train-world-model-ppo`` command; bad input gives one line on stderr and exit code 2."""
    try:
        run_from_args(argv)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"train-world-model-ppo: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except (RuntimeError, FloatingPointError) as error:  # a device that is missing, a loss that diverged
        print(f"train-world-model-ppo: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train-world-model-ppo: interrupted; continue with --resume OUT/checkpoint.pt", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
