"""Small helpers shared by the test modules."""

import torch


def weights_of(module: torch.nn.Module) -> list[torch.Tensor]:
    """A detached copy of every parameter of ``module``."""
    return [p.detach().clone() for p in module.parameters()]


def same_weights(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s whole state: parameters and buffers (e.g. normalisers)."""
    return {key: value.clone() for key, value in module.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Two states (from :func:`state_of` or ``state_dict()``) hold equal tensors, key by key."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
