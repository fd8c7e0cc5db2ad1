"""Small seeded surgical data and settings shared by the tests of wmbook.surgical."""

from pathlib import Path

from wmbook.surgical.config import config_from_dict

# a miniature of the book's configuration: short procedures, small embeddings and networks
TINY = {
    "data": {"procedures": 4, "test": 1, "seed": 3, "surgeons": 2},
    "simulator": {"embedding_dim": 16, "duration_scale": 0.05},
    "model": {"hidden_dim": 16, "action_embed_dim": 8, "head_hidden": 16, "context": 8},
    "training": {"steps": 5, "batch_size": 8},
    "evaluation": {"horizons": [0, 1, 2], "embedding_horizon": 3, "start_frame": 8},
}


def tiny_config(root: Path):
    """The tiny configuration with its data and outputs under ``root``."""
    values = {key: dict(value) for key, value in TINY.items()}
    values["data"]["root"] = str(root / "data")
    values["output"] = {"world_model": str(root / "wm.pt"), "results": str(root / "results.json")}
    return config_from_dict(values)


def tiny_world(root: Path):
    """The tiny configuration under ``root``, its simulated data set and a world model trained
    on it (saved to ``root / "wm.pt"``): ``(config, dataset, model)``."""
    from wmbook.surgical import experiment

    config = tiny_config(root)
    dataset = experiment.ensure_data(config)
    model, _ = experiment.train(config, dataset, out=root / "wm.pt")
    return config, dataset, model
