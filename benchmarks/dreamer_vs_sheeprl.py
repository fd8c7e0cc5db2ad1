"""Benchmark: the book's Dreamer against sheeprl's DreamerV3 on CartPole-v1 (vector observations).

Both agents run on the same seeds with the same budget of real environment steps and are
judged by the same evaluation protocol, Chapter 3's: every ``--eval-every`` real steps the
greedy policy plays 10 episodes from ``reset(seed=evaluation_seed(seed) + i)``; a run has
solved CartPole at the first evaluation whose mean return reaches 475. Neither run stops when
it solves. The table gives the real steps to 475, the return at the budget and the wall time.

sheeprl (on PyPI) runs in its own virtual environment, given by ``--sheeprl-python``, so its
dependencies (lightning, hydra) never enter the book's environment::

    python -m venv /tmp/sheeprl-venv
    /tmp/sheeprl-venv/bin/pip install torch==2.13.0 sheeprl==0.8.4

Its configuration is sheeprl's own: the ``dreamer_v3`` experiment with its smallest model
(``algo=dreamer_v3_XS``) on its default Gymnasium environment, CartPole-v1, with the vector
observation as the only encoder and decoder key, on the CPU; only the budget, the seed, the
checkpoint interval (our evaluation interval) and the logging are set here. sheeprl does not
evaluate during training, so it saves a checkpoint every ``--eval-every`` steps, and each
checkpoint is evaluated afterwards, in sheeprl's environment, with the protocol above (the
player's greedy actions, its recurrent state carried through each episode).

When sheeprl cannot run (its interpreter is missing, it fails to import or to train), the
script says exactly why and writes our side of the table alone.

Usage::

    python benchmarks/dreamer_vs_sheeprl.py --seeds 0 1 2 --total-steps 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHEEPRL_OVERRIDES = [
    "exp=dreamer_v3", "algo=dreamer_v3_XS", "env=gym", "env.id=CartPole-v1", "env.num_envs=1",
    "env.capture_video=False", "fabric.accelerator=cpu", "algo.cnn_keys.encoder=[]",
    "algo.cnn_keys.decoder=[]", "algo.mlp_keys.encoder=[vector]", "algo.mlp_keys.decoder=[vector]",
    "metric.log_level=0", "algo.run_test=False", "buffer.checkpoint=False",
]

# Runs inside sheeprl's interpreter: evaluate each checkpoint of a run with Chapter 3's protocol.
EVALUATE_SHEEPRL = r'''
import json, sys, glob, os, re
import gymnasium as gym, numpy as np, torch
from lightning import Fabric
from omegaconf import OmegaConf
from sheeprl.algos.dreamer_v3.agent import build_agent
run_dir, first_seed, episodes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = OmegaConf.load(glob.glob(os.path.join(run_dir, "**", "config.yaml"), recursive=True)[0])
fabric = Fabric(accelerator="cpu", devices=1)
obs_space = gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)})
out = {}
paths = glob.glob(os.path.join(run_dir, "**", "ckpt_*.ckpt"), recursive=True)
for path in sorted(paths, key=lambda p: int(re.search(r"ckpt_(\d+)_", p).group(1))):
    step = int(re.search(r"ckpt_(\d+)_", path).group(1))
    state = torch.load(path, map_location="cpu", weights_only=False)  # written by this benchmark run
    player = build_agent(fabric, (2,), False, cfg, obs_space, state["world_model"], state["actor"])[-1]
    returns = []
    for i in range(episodes):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=first_seed + i)
        player.num_envs = 1
        player.init_states()
        done, total = False, 0.0
        while not done:
            torch_obs = {"vector": torch.as_tensor(obs, dtype=torch.float32).view(1, 1, -1)}
            with torch.no_grad():
                action = player.get_actions(torch_obs, greedy=True)
            obs, reward, terminated, truncated, _ = env.step(int(action[0].argmax(-1).item()))
            total += reward
            done = terminated or truncated
        returns.append(total)
    out[step] = float(np.mean(returns))
print("EVAL " + json.dumps(out))
'''


def run_ours(seed: int, total_steps: int, eval_every: int) -> dict:
    """Our Dreamer with the chapter's full settings, on the whole budget (no early stop)."""
    import torch

    from wmbook.agents.dreamer_trainer import train_dreamer
    from wmbook.chapters.ch05_dreamer_rssm import PROFILES

    torch.set_num_threads(1)
    config = dataclasses.replace(PROFILES["full"].agent, seed=seed, total_steps=total_steps,
                                 eval_every=eval_every, stop_when_solved=False)
    started = time.perf_counter()
    result = train_dreamer(config, progress=False)
    return {"eval_steps": result.eval_steps, "eval_returns": result.eval_returns,
            "solved_at": result.solved_at, "seconds": time.perf_counter() - started}


def sheeprl_problem(python: str) -> str | None:
    """Why sheeprl cannot run with ``python``, or ``None`` when it imports."""
    if not Path(python).is_file():
        return f"no sheeprl interpreter at {python} (create its virtual environment first, see the docstring)"
    probe = subprocess.run([python, "-c", "import sheeprl, lightning, hydra; print(sheeprl.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        return f"sheeprl does not import in {python}: {last}"
    return None


def sheeprl_version(python: str) -> str:
    probe = subprocess.run([python, "-c", "import sheeprl, torch; print(sheeprl.__version__, torch.__version__)"],
                           capture_output=True, text=True)
    return probe.stdout.strip()


def run_sheeprl(python: str, seed: int, total_steps: int, eval_every: int, episodes: int, eval_seed: int) -> dict:
    """sheeprl's DreamerV3 (its own XS configuration) for ``total_steps``, checkpoints evaluated after."""
    work = Path(tempfile.mkdtemp(prefix="sheeprl-bench-"))
    command = [str(Path(python).parent / "sheeprl"), *SHEEPRL_OVERRIDES, f"seed={seed}",
               f"algo.total_steps={total_steps}", f"checkpoint.every={eval_every}", f"root_dir={work}/logs",
               "run_name=bench"]
    started = time.perf_counter()
    train = subprocess.run(command, cwd=work, capture_output=True, text=True,
                           env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    seconds = time.perf_counter() - started
    if train.returncode != 0:
        last = "\n".join(train.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"sheeprl training failed (exit {train.returncode}): {last}")
    evaluate = subprocess.run([python, "-c", EVALUATE_SHEEPRL, str(work), str(eval_seed), str(episodes)],
                              capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    line = [x for x in evaluate.stdout.splitlines() if x.startswith("EVAL ")]
    if evaluate.returncode != 0 or not line:
        last = "\n".join(evaluate.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"evaluating sheeprl's checkpoints failed: {last}")
    by_step = {int(k): v for k, v in json.loads(line[0][5:]).items()}
    steps = [s for s in sorted(by_step) if s % eval_every == 0 and s <= total_steps]
    returns = [by_step[s] for s in steps]
    solved = next((s for s, r in zip(steps, returns) if r >= 475), None)
    return {"eval_steps": steps, "eval_returns": returns, "solved_at": solved, "seconds": seconds}


def table(rows: dict[str, list[dict]], seeds: list[int], total_steps: int) -> str:
    lines = ["| agent | steps to 475, per seed | median steps to 475 | return at the budget (mean over seeds) | wall time per run (s, median) |",
             "|---|---|---|---|---|"]
    for name, runs in rows.items():
        per = ", ".join(f"{r['solved_at']:,}" if r["solved_at"] else "-" for r in runs)
        steps = [r["solved_at"] if r["solved_at"] else np.inf for r in runs]
        median = np.median(steps)
        median_text = f"{median:,.0f}" if np.isfinite(median) else f"> {total_steps:,}"
        final = np.mean([r["eval_returns"][-1] if r["eval_returns"] else np.nan for r in runs])
        wall = np.median([r["seconds"] for r in runs])
        lines.append(f"| {name} | {per} | {median_text} | {final:.1f} | {wall:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--total-steps", type=int, default=20_000)
    parser.add_argument("--eval-every", type=int, default=1_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--sheeprl-python", default="/tmp/sheeprl-venv/bin/python")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "dreamer_vs_sheeprl.json"))
    args = parser.parse_args(argv)
    from wmbook.agents.dqn import evaluation_seed
    from wmbook.device import cpu_model

    rows: dict[str, list[dict]] = {"Dreamer (wmbook)": []}
    for seed in args.seeds:
        print(f"wmbook Dreamer, seed {seed} ...", flush=True)
        rows["Dreamer (wmbook)"].append(run_ours(seed, args.total_steps, args.eval_every))
    problem = sheeprl_problem(args.sheeprl_python)
    if problem is None:
        rows["DreamerV3 (sheeprl, XS)"] = []
        for seed in args.seeds:
            print(f"sheeprl DreamerV3, seed {seed} ...", flush=True)
            try:
                rows["DreamerV3 (sheeprl, XS)"].append(run_sheeprl(
                    args.sheeprl_python, seed, args.total_steps, args.eval_every, args.eval_episodes,
                    evaluation_seed(seed)))
            except RuntimeError as error:
                problem = str(error)
                rows.pop("DreamerV3 (sheeprl, XS)")
                break
    text = table(rows, args.seeds, args.total_steps)
    provenance = (f"`python benchmarks/dreamer_vs_sheeprl.py --seeds {' '.join(map(str, args.seeds))} "
                  f"--total-steps {args.total_steps} --eval-every {args.eval_every}`; "
                  f"{cpu_model()}, {platform.python_version()}, "
                  f"sheeprl/torch {sheeprl_version(args.sheeprl_python) if problem is None else 'n/a'}; "
                  f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(text)
    print(provenance)
    if problem is not None:
        print(f"sheeprl could not run: {problem}")
    Path(args.out).write_text(json.dumps({"rows": rows, "table": text, "provenance": provenance,
                                          "sheeprl_problem": problem}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
