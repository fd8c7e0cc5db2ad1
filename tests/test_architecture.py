"""The package's architecture: imports go one way, from utilities up to the chapters and the
notebook helpers; nothing imports a chapter; there is no import cycle; the book's build tooling
(``bookbuild``) sits outside the package, which never imports it."""

import ast
import graphlib
from fnmatch import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wmbook"

# lowest first: a module may import from its own layer and the layers below it
LAYERS = [
    ("utilities", ["wmbook.device", "wmbook.checkpoint", "wmbook.config", "wmbook.stats", "wmbook.runner", "wmbook.plotting",
                   "wmbook.policies", "wmbook.buffers", "wmbook.buffers.*"]),
    ("models", ["wmbook.models", "wmbook.models.*"]),
    ("environments", ["wmbook.envs", "wmbook.evaluation", "wmbook.pixels", "wmbook.rollout"]),
    ("agents", ["wmbook.agents", "wmbook.agents.*"]),
    ("domains", ["wmbook.surgical", "wmbook.surgical.*"]),
    ("chapters", ["wmbook.chapters", "wmbook.chapters.ch*"]),
    ("notebooks and command line", ["wmbook", "wmbook.__main__", "wmbook.notebook"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of the package -> the package's modules it imports (anywhere in its code)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, found = module_name(path), set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "wmbook"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if base.split(".")[0] != "wmbook":
                    continue
                # `from wmbook.models import dynamics` imports a module; `from wmbook.models import X` the package
                subs = {f"{base}.{a.name}" for a in node.names if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").is_file()}
                found |= subs or {base}
        graph[name] = found - {name}
    return graph


def layer(module: str) -> int:
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch(module, p) for p in patterns):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def test_every_import_goes_down_or_sideways():
    wrong = [f"{m} ({LAYERS[layer(m)][0]}) imports {d} ({LAYERS[layer(d)][0]})"
             for m, deps in imports().items() for d in sorted(deps) if layer(d) > layer(m)]
    assert not wrong, "imports that go up a layer:\n" + "\n".join(wrong)


def test_nothing_imports_a_chapter():
    wrong = [f"{m} imports {d}" for m, deps in imports().items() for d in deps if fnmatch(d, "wmbook.chapters.ch*")]
    assert not wrong, "\n".join(wrong)


def test_the_package_never_imports_the_book_tooling():
    wrong = [str(path.relative_to(PACKAGE.parent)) for path in sorted(PACKAGE.rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.Import, ast.ImportFrom))
             and any(name.split(".")[0] == "bookbuild"
                     for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]))]
    assert not wrong, "modules of wmbook that import bookbuild: " + ", ".join(wrong)


def test_there_is_no_import_cycle():
    graphlib.TopologicalSorter(imports()).prepare()  # raises CycleError naming the cycle


def test_the_rules_catch_a_wrong_import():
    assert layer("wmbook.agents.dqn") > layer("wmbook.models.dynamics") > layer("wmbook.buffers")
    assert layer("wmbook.surgical.tdmpc") > layer("wmbook.agents.ppo")
    assert layer("wmbook.chapters.ch03_dyna_dqn") > layer("wmbook.surgical")


def test_no_module_is_longer_than_500_lines():
    long = {str(path.relative_to(PACKAGE.parent)): n for path in sorted(PACKAGE.rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines (split them along their seams): {long}"
