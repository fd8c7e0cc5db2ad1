"""Frames per second of CartPole: plain steps, steps with a full-size render, 64x64 pixel steps.

The loops run the same seeded random actions for ``--steps`` steps each, after ``--warmup``
untimed ones (pygame's first surfaces and Pillow's first resize are slower), resetting at every
episode end:

- ``state``: ``CartPole-v1`` steps, no rendering (what Chapters 1-3 pay);
- ``render 600x400``: a step and a full-size ``render()``;
- ``pixels 64x64``: a step of :func:`wmbook.pixels.make_pixel_env` (draw, crop, box-filter
  resize, channels first), what Chapter 5 pays per real step, and the same with the fovea view,
  what Chapter 4 pays. Each pixel loop runs twice, side by side: through ``render()``'s copy
  (``read_surface=False``) and reading CartPole's surface (the default); the observations of
  the two are checked to be identical, and the last column gives the speed-up.

    python benchmarks/pixel_fps.py                          # the table
    python benchmarks/pixel_fps.py --png book/imgs/cartpole_64.png --png-scale 4

The time of each loop is measured here with ``time.perf_counter``; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np

from wmbook.device import cpu_model
from wmbook.pixels import make_pixel_env


def timed_steps(env: gym.Env, steps: int, warmup: int, seed: int, after_step: Callable[[], object] | None = None
                ) -> float:
    """Seconds for ``steps`` random-action steps of ``env`` (plus ``after_step()`` each), after ``warmup``."""
    actions = np.random.default_rng(seed).integers(0, env.action_space.n, warmup + steps)
    env.reset(seed=seed)
    started = 0.0
    for t, action in enumerate(actions):
        if t == warmup:
            started = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(int(action))
        if after_step is not None:
            after_step()
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - started


def same_observations(size: int, fovea: bool, seed: int, steps: int = 300) -> bool:
    """Whether reading the surface and going through ``render()`` give identical observations
    over ``steps`` seeded random steps."""
    envs = [make_pixel_env(size=size, fovea=fovea, read_surface=read) for read in (False, True)]
    actions = np.random.default_rng(seed).integers(0, 2, steps)
    observations = [env.reset(seed=seed)[0] for env in envs]
    for action in actions:
        if not np.array_equal(*observations):
            return False
        steps_taken = [env.step(int(action)) for env in envs]
        observations = [step[0] for step in steps_taken]
        if steps_taken[0][2] or steps_taken[0][3]:
            observations = [env.reset()[0] for env in envs]
    return bool(np.array_equal(*observations))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=200, help="untimed steps before each loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="side of the pixel observation")
    parser.add_argument("--png", default=None, help="save one pixel observation here (default: none)")
    parser.add_argument("--png-scale", type=int, default=1, help="enlarge the saved frame this many times")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.png_scale < 1:
        parser.error("--steps and --png-scale must be positive, --warmup non-negative")

    rendering = gym.make("CartPole-v1", render_mode="rgb_array")
    loops = [
        ("state (no rendering)", lambda: timed_steps(gym.make("CartPole-v1"), args.steps, args.warmup, args.seed)),
        ("render 600x400", lambda: timed_steps(rendering, args.steps, args.warmup, args.seed, rendering.render)),
    ]
    pairs = []  # (name of the render() loop, name of the surface loop)
    for fovea in (False, True):
        view = f"pixels {args.size}x{args.size}" + (", fovea" if fovea else "")
        for read_surface in (False, True):
            env = make_pixel_env(size=args.size, fovea=fovea, read_surface=read_surface)
            name = f"{view}, {'surface' if read_surface else 'render()'}"
            loops.append((name, lambda env=env: timed_steps(env, args.steps, args.warmup, args.seed)))
        pairs.append((f"{view}, render()", f"{view}, surface"))
        if not same_observations(args.size, fovea, args.seed):
            print(f"error: {view}: the surface gives other observations than render()", file=sys.stderr)
            return 1
    print(f"CartPole-v1, {args.steps} timed steps per loop after {args.warmup} warm-up steps, seed {args.seed}")
    print(f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), "
          f"Python {platform.python_version()}, gymnasium {gym.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print(f"| {'loop':<36} | {'steps/s':>9} | {'us/step':>8} | {'seconds':>7} | {'speed-up':>8} |")
    print(f"|{'-' * 38}|{'-' * 10}:|{'-' * 9}:|{'-' * 8}:|{'-' * 9}:|")
    seconds = {}
    slower = {surface: through_render for through_render, surface in pairs}
    for name, loop in loops:
        seconds[name] = loop()
        ratio = f"{seconds[slower[name]] / seconds[name]:.2f}x" if name in slower else ""
        print(f"| {name:<36} | {args.steps / seconds[name]:>9,.0f} | {1e6 * seconds[name] / args.steps:>8,.1f} | "
              f"{seconds[name]:>7.2f} | {ratio:>8} |", flush=True)

    if args.png:
        from PIL import Image

        frame = make_pixel_env(size=args.size, layout="hwc")
        frame.reset(seed=args.seed)
        for _ in range(4):  # a few pushes to the right, so that the pole leans a little to the left
            obs = frame.step(1)[0]
        image = Image.fromarray(obs)
        if args.png_scale > 1:  # nearest neighbour: enlarged, the pixels stay visible as squares
            image = image.resize((args.size * args.png_scale,) * 2, Image.Resampling.NEAREST)
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        image.save(args.png)
        print(f"\nsample frame ({args.size}x{args.size}, shown x{args.png_scale}) written to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
