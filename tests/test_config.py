"""The one configuration loader: nested dataclasses from mappings, YAML files and dotted keys."""

from dataclasses import dataclass, field

import pytest

from wmbook.config import ConfigError, from_dict, load_yaml, to_dict, with_overrides


@dataclass(frozen=True)
class Inner:
    width: int = 8
    rate: float = 0.1
    sizes: tuple[int, ...] = (4, 4)
    limit: float | None = None

    def __post_init__(self):
        if self.width < 1:
            raise ValueError(f"width must be positive, got {self.width}")


@dataclass(frozen=True)
class Outer:
    name: str = "run"
    on: bool = True
    inner: Inner = Inner()
    weights: dict = field(default_factory=lambda: {"a": 1.0})


def test_a_mapping_sets_what_it_names_and_keeps_the_rest():
    config = from_dict(Outer, {"inner": {"rate": 1, "sizes": [2, 3], "limit": 0.5}})
    assert config == Outer(inner=Inner(rate=1.0, sizes=(2, 3), limit=0.5))
    assert isinstance(config.inner.rate, float) and from_dict(Outer, None) == Outer()
    assert from_dict(Outer, to_dict(config)) == config


@pytest.mark.parametrize("data, message", [
    ({"inner": {"widht": 3}}, "unknown configuration key in inner: inner.widht"),
    ({"nme": "x", "onn": 1}, "unknown configuration keys: nme, onn"),
    ({"on": "yes"}, "on must be true or false"),
    ({"inner": {"width": 2.5}}, "inner.width must be an integer"),
    ({"inner": {"rate": "fast"}}, "inner.rate must be a number"),
    ({"inner": {"sizes": [4, "x"]}}, r"inner.sizes\[1\] must be an integer"),
    ({"inner": 3}, "inner must be a mapping"),
    ({"weights": [1, 2]}, "weights must be a mapping"),
    ({"inner": {"width": 0}}, "inner: width must be positive"),
])
def test_what_cannot_be_used_is_refused_by_name(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_a_yaml_file_and_its_errors(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: mine\ninner:\n  sizes: [1, 2, 3]\n")
    assert load_yaml(Outer, path) == Outer(name="mine", inner=Inner(sizes=(1, 2, 3)))
    path.write_text("inner: {width: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(Outer, path)
    with pytest.raises(ConfigError, match="no configuration file"):
        load_yaml(Outer, tmp_path / "missing.yaml")
    path.write_text("inner: {depth: 3}\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown configuration key in inner: inner.depth"):
        load_yaml(Outer, path)


def test_dotted_overrides_are_checked_like_a_file():
    changed = with_overrides(Outer(), **{"inner.width": 16, "inner.sizes": (1,), "name": "b"})
    assert changed == Outer(name="b", inner=Inner(width=16, sizes=(1,)))
    with pytest.raises(ConfigError, match="unknown configuration key 'inner.depth'"):
        with_overrides(Outer(), **{"inner.depth": 2})
    with pytest.raises(ConfigError, match="unknown configuration section 'outer.width'"):
        with_overrides(Outer(), **{"outer.width": 2})

    def no_big_widths(config):
        if config.inner.width > 100:
            raise ConfigError("too wide")

    with pytest.raises(ConfigError, match="too wide"):
        with_overrides(Outer(), no_big_widths, **{"inner.width": 101})


def test_errors_name_the_file_they_come_from(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("inner: {width: 2.5}\n")
    with pytest.raises(ConfigError, match=f"{path}: inner.width must be an integer"):
        load_yaml(Outer, path)
