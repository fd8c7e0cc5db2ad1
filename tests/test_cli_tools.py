"""The command line's tool subcommands and the chapter registry's discovery by file name."""

from __future__ import annotations

import sys
from pathlib import Path

import wmbook.__main__ as cli
from wmbook import chapters


def test_registry_finds_every_chapter_module_by_its_file_name():
    folder = Path(chapters.__file__).parent
    files = sorted(p.stem for p in folder.glob("ch[0-9][0-9]_*.py"))
    assert files, "no chapter modules found"
    assert sorted(chapters.CHAPTER_MODULES) == [stem[2:] for stem in files]
    for stem in files:
        assert chapters.CHAPTER_MODULES[stem[2:]] == f"wmbook.chapters.{stem}"


def _fake_tool(tmp_path, monkeypatch, name="fake_tool_module"):
    (tmp_path / f"{name}.py").write_text(
        "CALLS = []\n"
        "def main(argv):\n"
        "    CALLS.append(list(argv))\n"
        "    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "TOOLS", {"fake": (name, "a tool for the test"),
                                       "absent": ("wmbook.no_such_module", "not installed")})
    return name


def test_a_tool_subcommand_receives_the_rest_of_the_command_line(tmp_path, monkeypatch):
    name = _fake_tool(tmp_path, monkeypatch)
    assert cli.main(["fake", "--env", "CartPole-v1", "--resume", "x.pt"]) == 3
    assert sys.modules[name].CALLS == [["--env", "CartPole-v1", "--resume", "x.pt"]]


def test_help_lists_the_tools_that_exist_and_only_those(tmp_path, monkeypatch, capsys):
    _fake_tool(tmp_path, monkeypatch)
    try:
        cli.main(["--help"])
    except SystemExit as stop:
        assert stop.code == 0
    text = capsys.readouterr().out
    assert "fake" in text and "a tool for the test" in text
    assert "absent" not in text


def test_an_absent_tool_is_an_unknown_command(tmp_path, monkeypatch, capsys):
    _fake_tool(tmp_path, monkeypatch)
    try:
        cli.main(["absent"])
        raise AssertionError("an absent tool must not run")
    except SystemExit as stop:
        assert stop.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_finding_the_tools_imports_none_of_them():
    import subprocess
    code = ("import sys, wmbook.__main__ as cli; tools = cli._available_tools(); "
            "print(sorted(tools)); print('torch' in sys.modules, 'wmbook.agents' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False False"
    assert "surgical" in out.splitlines()[0]
