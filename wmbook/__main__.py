"""Command line of the package: its trainers, ``python -m wmbook TOOL ...``.

    python -m wmbook train-world-model-ppo --env CartPole-v1     # Chapter 4's V + M + C trainer
    python -m wmbook dreamer --help                              # Chapter 5's Dreamer

Each tool lives in its own module, whose ``main(argv)`` receives the rest of the command line;
``--help`` answers without importing torch. The book itself is built by ``python -m bookbuild``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

# subcommand -> module whose main(argv) runs it (listed in --help once the module exists)
TOOLS: dict[str, tuple[str, str]] = {
    "train-world-model-ppo": ("wmbook.agents.world_model_ppo.cli",
                              "Chapter 4: train V + M + C (PPO partly in the dream)"),
    "dreamer": ("wmbook.agents.dreamer_trainer", "Chapter 5: train the Dreamer agent"),
    "surgical": ("wmbook.surgical.cli", "Chapter 6: the surgical simulator, world model and policies"),
}


def _module_exists(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it or its parent packages (torch)."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not rest:
        return spec is not None
    folders = list(spec.submodule_search_locations or [])
    parts = rest.split(".")
    return any((Path(folder).joinpath(*parts[:-1]) / (parts[-1] + ".py")).is_file()
               or (Path(folder).joinpath(*parts) / "__init__.py").is_file() for folder in folders)


def _available_tools() -> dict[str, tuple[str, str]]:
    return {name: (module, text) for name, (module, text) in TOOLS.items() if _module_exists(module)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wmbook", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, text) in _available_tools().items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    tools = _available_tools()
    if argv and argv[0] in tools:
        return int(importlib.import_module(tools[argv[0]][0]).main(argv[1:]) or 0)
    _parser().parse_args(argv)  # --help, or an error naming the known tools
    return 2


if __name__ == "__main__":
    sys.exit(main())
