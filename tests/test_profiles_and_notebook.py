"""wmbook.chapters (one module per chapter, its budgets) and wmbook.notebook (setup, Results,
show_source)."""

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from wmbook import notebook
from wmbook.notebook import Results, show_source
from wmbook.chapters import CHAPTER_MODULES, PROFILE_NAMES, chapter_module, describe, get_profile

# -- profiles ---------------------------------------------------------------------------


def test_get_profile_known_chapter():
    full = get_profile("01_world_model", "full")
    ci = get_profile("01_world_model", "ci")
    assert full is chapter_module("01_world_model").PROFILES["full"]
    assert full.check_headline and not ci.check_headline
    assert ci.model.train_steps < full.model.train_steps and ci.model.epochs <= full.model.epochs


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError) as info:
        get_profile("01_world_model", "fast")
    assert "'fast'" in str(info.value)
    for name in PROFILE_NAMES:
        assert name in str(info.value)


def test_unknown_chapter_raises_key_error_naming_known_chapters():
    with pytest.raises(KeyError, match="01_world_model"):
        get_profile("99_missing", "full")


@pytest.mark.parametrize("chapter", sorted(CHAPTER_MODULES))
def test_every_chapter_has_both_profiles_of_one_type(chapter):
    presets = chapter_module(chapter).PROFILES
    assert set(presets) == set(PROFILE_NAMES) == {"full", "ci"}
    full, ci = presets["full"], presets["ci"]
    assert type(full) is type(ci) and dataclasses.is_dataclass(full)
    # budgets are read-only: assigning to any real field fails and leaves it as it was
    for field in dataclasses.fields(full):
        before = getattr(full, field.name)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(full, field.name, None)
        assert getattr(full, field.name) is before
    if hasattr(full, "check_headline"):  # the full profile checks the headline, ci does not
        assert full.check_headline is True and ci.check_headline is False
    described = describe(ci)
    assert json.loads(json.dumps(described)) == described
    assert described == json.loads(json.dumps(dataclasses.asdict(ci)))


def test_chapter_modules_are_named_after_their_notebooks():
    for chapter, module in CHAPTER_MODULES.items():
        number, name = chapter.split("_", 1)
        assert module == f"wmbook.chapters.ch{number}_{name}"


def test_model_recipe_takes_the_environment_sizes():
    recipe = get_profile("01_world_model", "ci").model
    config = recipe.model_config(obs_dim=6, n_actions=3)
    assert (config.obs_dim, config.n_actions, config.hidden_size) == (6, 3, recipe.hidden_size)


def test_the_device_choices_of_the_command_line_are_pick_devices():
    from bookbuild.__main__ import DEVICE_CHOICES
    from wmbook.device import DEVICE_CHOICES as PICKED

    assert DEVICE_CHOICES == PICKED


# -- setup_chapter ------------------------------------------------------------------------


def test_setup_chapter_seeds_threads_and_prints_the_budget(monkeypatch, capsys):
    monkeypatch.setenv(notebook.THREADS_VARIABLE, "1")
    config, device, results = notebook.setup_chapter("01_world_model", "ci", 5, "cpu")
    first = torch.rand(3)
    notebook.setup_chapter("01_world_model", "ci", 5, "cpu")
    assert torch.equal(first, torch.rand(3))  # the same seed gives the same draws
    assert config is get_profile("01_world_model", "ci") and device == torch.device("cpu")
    assert torch.get_num_threads() == 1
    assert results.meta["seed"] == 5 and results.meta["profile"] == "ci"
    printed = capsys.readouterr().out
    assert "profile        : ci, seed 5" in printed and "'train_steps': 4000" in printed


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_setup_chapter_refuses_a_bad_thread_count(monkeypatch, value):
    monkeypatch.setenv(notebook.THREADS_VARIABLE, value)
    with pytest.raises(ValueError, match="WMBOOK_THREADS"):
        notebook.setup_chapter("01_world_model", "ci", 0, "cpu")


# -- Results ----------------------------------------------------------------------------


@pytest.fixture
def glued(monkeypatch):
    """Capture myst_nb.glue calls (no IPython kernel needed)."""
    calls = []
    myst_nb = pytest.importorskip("myst_nb")
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: calls.append((name, value, display)))
    return calls


def test_results_glue_records_plain_values(glued):
    results = Results("01_world_model", "ci", 3, "cpu")
    results.glue(mse=np.float32(0.25), n=torch.tensor(7))
    results.glue(label="small")
    assert results.values == {"mse": 0.25, "n": 7, "label": "small"}
    assert type(results.values["mse"]) is float and type(results.values["n"]) is int
    assert glued == [("mse", 0.25, False), ("n", 7, False), ("label", "small", False)]


def test_results_glue_without_myst_nb(monkeypatch):
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # import fails, as on Colab
    results = Results("01_world_model", "full", 0, "cpu")
    results.glue(score=np.int64(4))
    assert results.values == {"score": 4}


def test_results_glue_outside_a_kernel_does_not_fail():
    results = Results("01_world_model", "ci", 0, "cpu")
    results.glue(value=1.5)  # the real myst_nb.glue, with no IPython kernel
    assert results.values == {"value": 1.5}


@pytest.mark.parametrize("array", [np.zeros(3), torch.zeros(2, 2)], ids=["numpy", "torch"])
def test_results_glue_refuses_arrays(glued, array):
    results = Results("01_world_model", "ci", 0, "cpu")
    with pytest.raises(ValueError, match="expected a scalar"):
        results.glue(curve=array)
    assert results.values == {} and glued == []


def test_results_write(glued, tmp_path):
    results = Results("01_world_model", "ci", 11, torch.device("cpu"))
    results.glue(f1=np.float64(0.5))
    results.record(seconds=np.float32(2.0))
    path = results.write(tmp_path / "out" / "results.json")
    assert path == tmp_path / "out" / "results.json"
    data = json.loads(path.read_text())
    assert set(data) == {"chapter", "profile", "seed", "environment", "results"}
    assert (data["chapter"], data["profile"], data["seed"]) == ("01_world_model", "ci", 11)
    assert data["environment"]["device"] == "cpu" and "torch" in data["environment"]
    assert data["results"] == {"f1": 0.5, "seconds": 2.0}
    assert [name for name, *_ in glued] == ["f1"]  # record() does not glue


# -- show_source ------------------------------------------------------------------------


def sample_function(x):
    """A docstring that
    spans lines."""
    y = x + 1
    z = y * 2  # marker
    return z


class SampleClass:
    def method(self):
        first = 1
        second = 2
        return first + second


@pytest.fixture
def shown(monkeypatch):
    captured = []
    monkeypatch.setattr(notebook, "display", captured.append)
    return captured


def _code(markdown) -> list[str]:
    text = markdown.data
    body = text.split("```python\n", 1)[1]
    assert body.endswith("\n```")
    return body[: -len("\n```")].splitlines()


def test_show_source_whole_function(shown):
    show_source(sample_function)
    assert len(shown) == 1
    assert shown[0].data.startswith(f"`{__name__}.sample_function`")
    lines = _code(shown[0])
    assert lines[0] == "def sample_function(x):"
    assert lines[-1] == "    return z"


def test_show_source_start_and_stop(shown):
    show_source(sample_function, start="y = x", stop="return")
    assert _code(shown[0]) == ["y = x + 1", "z = y * 2  # marker"]  # dedented, stop line left out


def test_show_source_start_only_and_stop_only(shown):
    show_source(sample_function, start="z = y")
    show_source(sample_function, stop='"""A docstring')
    assert _code(shown[0]) == ["z = y * 2  # marker", "return z"]
    assert _code(shown[1]) == ["def sample_function(x):"]


def test_show_source_stop_is_searched_after_start(shown):
    show_source(sample_function, start="z = y", stop="z")  # the start line itself does not stop it
    assert _code(shown[0]) == ["z = y * 2  # marker"]


def test_show_source_method(shown):
    show_source(SampleClass.method, start="second")
    assert shown[0].data.startswith(f"`{__name__}.SampleClass.method`")
    assert _code(shown[0]) == ["second = 2", "return first + second"]


def test_show_source_missing_text_raises(shown):
    with pytest.raises(ValueError, match="'nowhere' does not occur in the source of sample_function"):
        show_source(sample_function, start="nowhere")
    with pytest.raises(ValueError, match="does not occur"):
        show_source(sample_function, start="return", stop="y = x")  # only before start
    assert shown == []
