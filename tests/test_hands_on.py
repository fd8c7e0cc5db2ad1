"""The code a reader sees is the code that runs: a chapter's cell marked ``# source: MODULE``
holds that module's functions exactly, and the chapter's experiments run the page's copies."""

import ast
import importlib
import inspect
import json
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"# source: ([\w.]+)")


def source_cells(notebook: Path):
    """``(cell index, module name, code)`` of every cell of ``notebook`` marked as the package's."""
    for index, cell in enumerate(json.loads(notebook.read_text())["cells"]):
        code = "".join(cell["source"])
        found = MARKER.match(code)
        if cell["cell_type"] == "code" and found:
            yield index, found.group(1), code


def test_every_source_cell_holds_the_package_code_exactly():
    checked = 0
    for notebook in sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb")):
        for index, module_name, code in source_cells(notebook):
            module = importlib.import_module(module_name)
            tree = ast.parse(code)
            where = f"{notebook.name}, cell {index}"
            others = [type(n).__name__ for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert not others, f"{where}: a source cell holds definitions only, found {others}"
            for node in tree.body:
                # decorators belong to the definition
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                on_page = "\n".join(code.splitlines()[start - 1:node.end_lineno])
                assert hasattr(module, node.name), f"{where}: {module_name} has no {node.name}"
                in_package = inspect.getsource(getattr(module, node.name)).rstrip("\n")
                assert on_page == in_package, f"{where}: {node.name} differs from {module_name}'s"
                checked += 1
    assert checked >= 2


def run_edited(notebook: Path, tmp_path: Path, edit) -> Exception | None:
    """Execute ``notebook`` on the ``ci`` profile with its source cells changed by ``edit``;
    the error that stopped it, or None."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from bookbuild.pipeline import _environment, kernel_environment

    nb = json.loads(notebook.read_text())
    for index, _, code in source_cells(notebook):
        nb["cells"][index]["source"] = edit(code)
    edited = tmp_path / notebook.name
    edited.write_text(json.dumps(nb))
    try:
        with _environment(kernel_environment()):
            papermill.execute_notebook(str(edited), str(tmp_path / f"out_{notebook.name}"),
                                       parameters={"profile": "ci", "seed": 0, "device": "cpu"},
                                       cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    except PapermillExecutionError as error:
        return error
    return None


def assert_runs_fail_with_the_edit(notebook: Path, tmp_path: Path, edit, message: str) -> None:
    """The edit makes the page's method fail; the failure must come back from the runs (in
    worker processes), at the experiment cell: the runs ran the page's copy."""
    error = run_edited(notebook, tmp_path, edit)
    assert error is not None, "the runs never called the page's copy"
    assert message in error.evalue
    executed = json.loads((tmp_path / f"out_{notebook.name}").read_text())["cells"]
    failed = next(c for c in executed if c.get("execution_count") == error.exec_count)
    assert "run_all(" in "".join(failed["source"]), "it failed outside the experiment"


def test_chapter_3s_runs_use_the_dyna_step_defined_on_its_page(tmp_path):
    def edit(code):
        body = "    config, batch_size = planner.config, planner.dqn_config.batch_size\n"
        assert body in code
        return code.replace(body, "    raise RuntimeError('the edited dyna_step ran')\n" + body)

    assert_runs_fail_with_the_edit(ROOT / "book" / "03_dyna_dqn.ipynb", tmp_path, edit, "the edited dyna_step ran")


def test_a_changed_loss_changes_the_chapters_results(tmp_path, built_book):
    """End to end on the ci profile: Chapter 1 run again with the next-state term of the loss on
    its page weighted ten times trains another model than the book's own run of the page as it
    stands (``built_book``), and the numbers its prose is written from say so."""
    notebook = ROOT / "book" / "01_world_model.ipynb"
    weight = '"next_state": 1.0'

    def edit(code):
        assert weight in code
        return code.replace(weight, '"next_state": 10.0')

    from bookbuild.pipeline import STAGE

    as_it_stands = json.loads((built_book / STAGE / "book" / "01_world_model.results.json").read_text())
    assert (as_it_stands["profile"], as_it_stands["seed"]) == ("ci", 0)
    assert run_edited(notebook, tmp_path, edit) is None
    edited = json.loads((tmp_path / "01_world_model.results.json").read_text())
    for key in ("mean_episode_length", "tab_best_mse"):  # the same data and the same table model ...
        assert edited["results"][key] == as_it_stands["results"][key], key
    for key in ("best_val_loss", "next_state_mse", "state_mse"):  # ... and another network
        assert edited["results"][key] != as_it_stands["results"][key], key


def test_every_chapter_hands_its_page_copies_to_its_experiments():
    """Static half of the contract, for every chapter: each function of a source cell is used
    by a later cell or by another function on the page, and no cell imports it from the
    package, so that the name the experiments call is the page's copy."""
    chapters = 0
    for notebook in sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb")):
        cells = [(i, "".join(c["source"])) for i, c in enumerate(json.loads(notebook.read_text())["cells"])
                 if c["cell_type"] == "code"]
        defined = {node.name: index for index, _, code in source_cells(notebook)
                   for node in ast.parse(code).body}
        if not defined:
            continue
        chapters += 1
        for index, code in cells:
            tree = ast.parse("\n".join(l for l in code.splitlines() if not l.lstrip().startswith(("%", "!"))))
            imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
            assert not imported & set(defined), f"{notebook.name}, cell {index} imports {imported & set(defined)}"
        bodies = {node.name: node for _, _, code in source_cells(notebook) for node in ast.parse(code).body}
        for name, home in defined.items():
            users = [index for index, code in cells
                     if index > home and any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(ast.parse(code)))]
            inside = [other for other, node in bodies.items() if other != name
                      and any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))]
            assert users or inside, f"{notebook.name}: nothing after cell {home} uses the page's {name}"
    assert chapters >= 4
