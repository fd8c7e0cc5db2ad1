"""``python -m wmbook surgical``: generate, check, train, evaluate, report; one-line errors."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from surgical_helpers import TINY
from wmbook.surgical import cli
from wmbook.surgical.config import SurgicalConfig, load_config


@pytest.fixture
def tiny_yaml(tmp_path):
    values = {key: dict(value) for key, value in TINY.items()}
    values["data"]["root"] = str(tmp_path / "data")
    values["output"] = {"world_model": str(tmp_path / "wm.pt"), "results": str(tmp_path / "results.json")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def one_line_error(capsys, status, expected_status=1):
    err = capsys.readouterr().err
    assert status == expected_status
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_the_shipped_configuration_is_the_code_defaults():
    assert load_config("configs/surgical_world_model.yaml") == SurgicalConfig()


def test_generate_check_train_evaluate_report(tmp_path, tiny_yaml, capsys):
    assert cli.main(["generate", "--config", str(tiny_yaml)]) == 0
    data = tmp_path / "data"
    assert (data / "manifest.json").is_file()
    assert cli.main(["check", str(data)]) == 0
    assert "3 train and 1 test procedures" in capsys.readouterr().out
    assert cli.main(["check", str(data / "procedure_000.npz")]) == 0
    assert cli.main(["train", "--config", str(tiny_yaml), "--mode", "train", "--steps", "3"]) == 0
    assert (tmp_path / "wm.pt").is_file()
    results = tmp_path / "eval.json"
    assert cli.main(["train", "--config", str(tiny_yaml), "--mode", "eval", "--world_model",
                     str(tmp_path / "wm.pt"), "--results", str(results)]) == 0
    out = json.loads(results.read_text())
    assert set(out["map"]) == {"0", "1", "2"}
    assert set(out["truth"]) == {"expert", "imitation", "imitation_most_likely", "oracle"}
    assert cli.main(["report", "--config", str(tiny_yaml), "--markdown", str(tmp_path / "r.md")]) == 0
    text = re.sub(" +", " ", (tmp_path / "r.md").read_text())
    assert "| current |" in text and "| imitation |" in text and "clean only" in text
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["reused_checkpoints"] is False  # --steps 3 differs from the configuration's 5
    assert np.isfinite(report["dual_path"]["embedding_error"]["mse"]).all()


def test_bad_input_gives_one_line(tmp_path, tiny_yaml, capsys):
    one_line_error(capsys, cli.main(["train", "--config", str(tmp_path / "missing.yaml")]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {stepz: 3}\n")
    err = one_line_error(capsys, cli.main(["train", "--config", str(bad)]))
    assert "unknown configuration key in training: training.stepz" in err
    bad.write_text("training: [1, 2\n")
    assert "not valid YAML" in one_line_error(capsys, cli.main(["train", "--config", str(bad)]))
    np.savez(tmp_path / "video.npz", embeddings=np.zeros((3, 4), np.float32),
             triplets=np.zeros((3, 100), np.uint8), phases=np.array([0, 9, 1]))
    err = one_line_error(capsys, cli.main(["check", str(tmp_path / "video.npz")]))
    assert "video.npz" in err and "phases must lie in 0..6" in err
    err = one_line_error(capsys, cli.main(["evaluate", "--config", str(tiny_yaml)]))
    assert "no manifest" in err
    cli.main(["generate", "--config", str(tiny_yaml)])
    capsys.readouterr()
    err = one_line_error(capsys, cli.main(["evaluate", "--config", str(tiny_yaml)]))
    assert "needs --world_model PATH" in err
    err = one_line_error(capsys, cli.main(["evaluate", "--config", str(tiny_yaml), "--world_model",
                                           str(tmp_path / "none.pt")]))
    assert "no checkpoint at" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--mode", "fly"])
    one_line_error(capsys, exit_info.value.code, 2)


def test_wired_into_python_m_wmbook():
    result = subprocess.run([sys.executable, "-m", "wmbook", "surgical", "nonsense"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "invalid choice" in result.stderr
