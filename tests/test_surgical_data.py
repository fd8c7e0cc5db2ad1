"""The procedure format and its loader: round trip of simulated data, and errors that name the
file and the problem."""

import json

import numpy as np
import pytest

from surgical_helpers import tiny_config
from wmbook.surgical.data import (ProcedureFormatError, load_dataset, load_procedure,
                                  save_procedure)
from wmbook.surgical.experiment import generate
from wmbook.surgical.triplets import REWARD_NAMES


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("surgical_data"))
    generate(config)
    return load_dataset(config.data.root)


def test_simulated_data_round_trips_with_every_extra(dataset):
    assert len(dataset.train) == 3 and len(dataset.test) == 1
    assert dataset.manifest["test"] == [dataset.test[0].name]
    p = dataset.train[0]
    T = len(p)
    assert p.embeddings.shape == (T, 16) and p.triplets.shape == (T, 100) and p.phases.shape == (T,)
    assert p.recognised.shape == (T, 100) and p.rewards.shape == (T, 5) and p.states.shape[0] == T
    assert p.triplets.sum(1).max() <= 3 and set(np.unique(p.phases)) == set(range(7))
    assert p.meta["surgeon"]["name"].startswith("surgeon_") and p.meta["completed"]
    start = p.start(10)
    assert start.t == 10 and start.embeddings.shape == (10, 16) and start.name == p.name


def test_a_generated_data_set_is_reproducible(dataset, tmp_path):
    config = tiny_config(tmp_path)
    generate(config)
    again = load_dataset(config.data.root)
    for a, b in zip(dataset.train + dataset.test, again.train + again.test):
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
        np.testing.assert_array_equal(a.recognised, b.recognised)


def minimal(T=6, D=4):
    rng = np.random.default_rng(0)
    triplets = np.zeros((T, 100), np.uint8)
    triplets[:, 17] = 1
    return {"embeddings": rng.normal(size=(T, D)).astype(np.float32), "triplets": triplets,
            "phases": np.zeros(T, np.int64)}


def write_raw(path, arrays):
    np.savez(path, **arrays)
    return path


def test_a_minimal_real_data_file_loads(tmp_path):
    path = write_raw(tmp_path / "video01.npz", minimal())
    procedure = load_procedure(path)
    assert procedure.name == "video01" and procedure.rewards is None and procedure.meta == {}
    with pytest.raises(ValueError, match="only simulated procedures"):
        procedure.start(2)


@pytest.mark.parametrize("change, problem", [
    (lambda a: a.update(triplets=a["triplets"][:, :99]),
     r"triplets must have shape \(T=6, 100\), got \(6, 99\)"),
    (lambda a: a["triplets"].__setitem__((2, slice(0, 4)), 1),
     r"more than 3 active triplets in frames \[2\]"),
    (lambda a: a["phases"].__setitem__(3, 7), r"phases must lie in 0..6; frames \[3\] hold \[7\]"),
    (lambda a: a["embeddings"].__setitem__((4, 0), np.nan), r"NaN or infinity in frames \[4\]"),
    (lambda a: a.pop("phases"), r"missing array\(s\) \['phases'\]"),
    (lambda a: a.update(labels=a["phases"]), r"unknown array\(s\) \['labels'\]"),
    (lambda a: a.update(recognised=np.full((6, 100), 2.0)),
     r"recognised scores must be finite and lie in \[0, 1\]"),
    (lambda a: a.update(_r_risk=np.zeros(6)), r"reward components come all five or none"),
    (lambda a: a.update(phases=a["phases"].astype(float)), r"phases must be integers"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, change, problem):
    arrays = minimal()
    change(arrays)
    path = write_raw(tmp_path / "bad_video.npz", arrays)
    with pytest.raises(ProcedureFormatError, match=problem) as error:
        load_procedure(path)
    assert str(error.value).startswith(str(path))


def test_saving_checks_first_and_rewards_come_together(tmp_path):
    arrays = minimal()
    arrays["triplets"][0, :5] = 1
    with pytest.raises(ProcedureFormatError, match="more than 3"):
        save_procedure(tmp_path / "x.npz", arrays)
    assert not (tmp_path / "x.npz").exists()
    arrays = minimal()
    arrays.update({name: np.zeros(6, np.float32) for name in REWARD_NAMES})
    assert load_procedure(save_procedure(tmp_path / "ok.npz", arrays)).rewards.shape == (6, 5)


def test_data_set_errors(tmp_path):
    with pytest.raises(ProcedureFormatError, match="no manifest"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"train": ["a"], "test": ["b"]}))
    with pytest.raises(ProcedureFormatError, match=r"a\.npz: no such procedure file"):
        load_dataset(tmp_path)
    (tmp_path / "a.npz").write_bytes(b"not a zip")
    with pytest.raises(ProcedureFormatError, match="not a readable .npz"):
        load_dataset(tmp_path)
    write_raw(tmp_path / "a.npz", minimal(D=4))
    write_raw(tmp_path / "b.npz", minimal(D=5))
    with pytest.raises(ProcedureFormatError, match="embeddings have dimension 5, expected 4"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"train": ["a"], "test": []}))
    with pytest.raises(ProcedureFormatError, match="'test' must be a non-empty list"):
        load_dataset(tmp_path)
