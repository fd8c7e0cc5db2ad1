"""Dreamer's training loop (:func:`train_dreamer`): real steps into the buffer, ``replay_ratio``
updates per step, Chapter 3's evaluation, atomic checkpoints that resume to the uninterrupted
result; and its command line, ``python -m wmbook dreamer``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from wmbook.agents.dqn import evaluation_seed
from wmbook.agents.dreamer import Dreamer, DreamerConfig, GreedyDreamer, UpdateFn
from wmbook.buffers import SequenceBuffer
from wmbook.checkpoint import load_checkpoint, restore_states, save_state, write_json
from wmbook.device import pick_device, to_device
from wmbook.envs import make_env
from wmbook.evaluation import evaluate, record, solved_return

CHECKPOINT_KIND = "Dreamer"


@dataclass
class DreamerResult:
    """What a run produced: the agent, its buffer, the evaluation curve and the loss history."""

    agent: Dreamer
    buffer: SequenceBuffer
    eval_steps: list[int] = field(default_factory=list)
    eval_returns: list[float] = field(default_factory=list)
    episode_returns: list[float] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)  # per update, plus "env_step"
    solved_at: int | None = None
    seconds: float = 0.0
    env_steps: int = 0

    @property
    def gradient_updates(self) -> int:
        return self.agent.updates

    @property
    def imagined_steps(self) -> int:
        """Imagined transitions used by the actor-critic: starts x horizon per update."""
        c = self.agent.config
        starts = c.batch_size * c.seq_len
        starts = min(starts, c.imagine_starts) if c.imagine_starts > 0 else starts
        return self.agent.updates * starts * c.horizon


def _objects(result: DreamerResult, rng: np.random.Generator, env) -> dict:
    """Everything whose state a resumed run needs back: the agent, its optimisers, the buffer and
    every generator (the torch generators are saved as values, :func:`_save`)."""
    optimisers = {f"{name}_optimiser": opt for name, opt in result.agent.optimisers().items()}
    return {"agent": result.agent, **optimisers, "buffer": result.buffer, "rng": rng,
            "env_rng": env.unwrapped.np_random}


def _save(path: str | Path, result: DreamerResult, rng: np.random.Generator, env, step: int, credit: float) -> Path:
    """One atomic checkpoint from which the run continues exactly (:mod:`wmbook.checkpoint`)."""
    cuda = {"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}
    return save_state(path, CHECKPOINT_KIND, _objects(result, rng, env), config=dataclasses.asdict(result.agent.config),
                      updates=result.agent.updates, eval_steps=result.eval_steps, eval_returns=result.eval_returns,
                      episode_returns=result.episode_returns, history=result.history, solved_at=result.solved_at,
                      seconds=result.seconds, torch_rng=torch.get_rng_state(), step=step, credit=credit, **cuda)


def _config_from(data: dict) -> DreamerConfig:
    known = {f.name for f in dataclasses.fields(DreamerConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"checkpoint config has unknown keys {sorted(unknown)}")
    data = dict(data)
    data["return_percentiles"] = tuple(data["return_percentiles"])
    return DreamerConfig(**data)


def train_dreamer(config: DreamerConfig, device: torch.device | str = "cpu", progress: bool = True,
                  checkpoint: str | Path | None = None, resume: str | Path | None = None,
                  stop_at: int | None = None, update_fn: UpdateFn | None = None) -> DreamerResult:
    """Train Dreamer on ``config.env_id`` for ``config.total_steps`` real steps.

    The greedy policy is evaluated every ``eval_every`` real steps (Chapter 3's protocol).
    With ``checkpoint``, the run is saved there atomically at the first episode end after every
    ``checkpoint_every`` steps and at the end; ``resume`` continues a saved run (its own config;
    ``config.total_steps`` may extend it) to exactly the result the run would have reached
    uninterrupted. ``stop_at`` ends the run at the first checkpoint at or after that step, as
    an interruption would. ``update_fn``: one update of the agent (:func:`dreamer_update` by
    default).
    """
    config.check()
    device = torch.device(device)
    started = time.perf_counter()
    env = make_env(config.env_id, seed=config.seed)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise TypeError(f"this Dreamer needs a discrete action space, {config.env_id} has {env.action_space}")
    if len(env.observation_space.shape) != 1:
        raise TypeError(f"this Dreamer reads vector observations, {config.env_id} gives {env.observation_space.shape}")
    obs_dim, n_actions = env.observation_space.shape[0], int(env.action_space.n)

    saved = None
    if resume is not None:
        saved = load_checkpoint(resume, CHECKPOINT_KIND, map_location=device)
        config = dataclasses.replace(_config_from(saved["config"]), total_steps=config.total_steps)
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on config.seed alone
        torch.manual_seed(config.seed)
        agent = Dreamer(obs_dim, n_actions, config, device, update_fn)
    torch.manual_seed(config.seed + 1)  # sampling during collection and imagination
    buffer = SequenceBuffer.for_spaces(env.observation_space, env.action_space, config.buffer_size, seed=config.seed)
    result = DreamerResult(agent, buffer)
    rng = np.random.default_rng(config.seed)
    step, credit, last_checkpoint = 0, 0.0, 0
    if saved is None:
        obs, _ = env.reset(seed=config.seed)
    else:  # restore everything, then reset the environment from its saved generator
        env.reset(seed=config.seed)
        saved = restore_states(saved, _objects(result, rng, env), resume)
        agent.updates = saved["updates"]
        for name in ("eval_steps", "eval_returns", "episode_returns", "history", "solved_at"):
            setattr(result, name, saved[name])
        started -= saved["seconds"]
        obs, _ = env.reset()
        torch.set_rng_state(saved["torch_rng"].cpu())
        if "cuda_rng" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([state.cpu() for state in saved["cuda_rng"]])
        step, credit, last_checkpoint = saved["step"], saved["credit"], saved["step"]

    buffer.start_episode(obs)
    latent, action, is_first = None, None, True
    episode_return = 0.0
    bar = tqdm(total=config.total_steps, initial=step, desc="real steps", disable=not progress)
    while step < config.total_steps:
        # -- step 1: collect one real step
        obs_t = to_device(torch.as_tensor(obs, dtype=torch.float32)[None], device)
        first_t = torch.tensor([is_first], device=device)
        policy_action, latent = agent.act(latent, action, obs_t, first_t)
        if step < config.prefill:
            chosen = int(rng.integers(n_actions))
        else:
            chosen = int(policy_action[0])
        action = torch.tensor([chosen], device=device)
        obs, reward, terminated, truncated, _ = env.step(chosen)
        buffer.add(chosen, reward, obs, terminated, truncated)
        episode_return += float(reward)
        step += 1
        is_first = False

        # -- steps 2-7 and the actor-critic, replay_ratio times per real step on average
        if step >= config.prefill:
            credit += config.replay_ratio
            while credit >= 1.0:
                credit -= 1.0
                batch = buffer.sample(config.batch_size, config.seq_len, device)
                metrics = agent.update(batch, env_step=step)
                result.history.setdefault("env_step", []).append(step)
                for key, value in metrics.items():
                    result.history.setdefault(key, []).append(value)

        if step % config.eval_every == 0:
            returns = evaluate(GreedyDreamer(agent), config.env_id, config.eval_episodes, evaluation_seed(config.seed))
            bar.set_postfix(eval=f"{returns.mean():.0f}")
            record(result, step, returns, solved_return(config.env_id, config.solved_return))
        bar.update(1)

        if terminated or truncated:
            result.episode_returns.append(episode_return)
            episode_return = 0.0
            solved_stop = config.stop_when_solved and result.solved_at is not None
            if checkpoint is not None and (step - last_checkpoint >= config.checkpoint_every
                                           or step >= config.total_steps or solved_stop):
                result.seconds = time.perf_counter() - started
                _save(checkpoint, result, rng, env, step, credit)
                last_checkpoint = step
                if stop_at is not None and step >= stop_at:
                    break
            if solved_stop:
                break
            obs, _ = env.reset()
            buffer.start_episode(obs)
            latent, action, is_first = None, None, True
    bar.close()
    env.close()
    result.env_steps = step
    result.seconds = time.perf_counter() - started
    if checkpoint is not None and last_checkpoint != step:
        _save(checkpoint, result, rng, env, step, credit)
    return result


# -- the command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    defaults = DreamerConfig()
    parser = argparse.ArgumentParser(
        prog="python -m wmbook dreamer",
        description="Train the Dreamer agent (RSSM world model + actor-critic in imagination).")
    parser.add_argument("--env", default=defaults.env_id, help="Gymnasium id with vector observations "
                        "and discrete actions (default: %(default)s)")
    parser.add_argument("--total-steps", type=int, default=defaults.total_steps, help="real environment steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--replay-ratio", type=float, default=defaults.replay_ratio,
                        help="gradient updates per real step (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--stop-when-solved", action="store_true")
    parser.add_argument("--out", default="dreamer_run", help="folder for checkpoint.pt and results.json")
    parser.add_argument("--resume", default=None, metavar="PATH", help="continue from this checkpoint")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m wmbook dreamer``: train, checkpoint, and write the evaluation curve as JSON."""
    args = _parser().parse_args(argv)
    try:
        if args.seed < 0:
            raise ValueError(f"--seed must be non-negative, got {args.seed}")
        if args.resume is not None and not Path(args.resume).is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {args.resume}")
        device = pick_device(args.device)
        config = DreamerConfig(env_id=args.env, seed=args.seed, total_steps=args.total_steps,
                               replay_ratio=args.replay_ratio, eval_every=args.eval_every,
                               checkpoint_every=args.checkpoint_every,
                               stop_when_solved=args.stop_when_solved)
        out = Path(args.out)
        result = train_dreamer(config, device, progress=not args.no_progress,
                               checkpoint=out / "checkpoint.pt", resume=args.resume)
        write_json(out / "results.json", {
            "env_id": result.agent.config.env_id, "seed": result.agent.config.seed,
            "env_steps": result.env_steps, "eval_steps": result.eval_steps,
            "eval_returns": result.eval_returns, "solved_at": result.solved_at,
            "gradient_updates": result.gradient_updates, "seconds": round(result.seconds, 1)})
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    solved = f"solved at {result.solved_at} steps" if result.solved_at is not None else "not solved"
    last = f"{result.eval_returns[-1]:.1f}" if result.eval_returns else "n/a"
    print(f"{result.env_steps} real steps, last evaluation {last}, {solved}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
