"""One way to configure: frozen dataclasses, read from nested mappings or a YAML file.

Every setting has one home, a field of a dataclass with its default; a YAML file mirrors the
dataclasses section by section and lists only what it changes. :func:`from_dict` builds the
dataclass and refuses what it cannot use with a :class:`ConfigError` naming the key (an unknown
key, a value of the wrong type); range checks that types cannot express stay with the
dataclasses (``__post_init__``) or their users. :func:`with_overrides` changes settings by
dotted keys (``"world_model.vae.beta"``), checked the same way.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown keys, wrong types, values out of range."""


def _value(hint: Any, value: Any, key: str, source: str) -> Any:
    """``value`` checked against the type ``hint`` of the field ``key`` (and converted where
    YAML cannot say it: a list for a tuple, an integer for a float)."""
    where = f"{source}: " if source else ""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key, source=source)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{key} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}{key} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}{key} must be a number, got {value!r}")
        return float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}{key} must be a string, got {value!r}")
    elif hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}{key} must be a list, got {value!r}")
        item = args[0] if args else None
        return tuple(_value(item, v, f"{key}[{i}]", source) if item else v for i, v in enumerate(value))
    elif hint is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}{key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "", *, source: str = "") -> T:
    """An instance of dataclass ``cls`` from nested mappings; a missing key keeps its default.
    ``path`` names the section in errors (``world_model.vae``), ``source`` the file."""
    where = f"{source}: " if source else ""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}{path or 'the configuration'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        raise ConfigError(f"{where}unknown configuration key{'s' if len(unknown) > 1 else ''}"
                          f"{f' in {path}' if path else ''}: "
                          f"{', '.join(f'{path}.{k}' if path else str(k) for k in unknown)} "
                          f"(allowed: {', '.join(names)})")
    values = {name: _value(hints[name], data[name], f"{path}.{name}" if path else name, source)
              for name in names if name in data}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}{path or 'the configuration'}: {error}") from error


def section_of(name: str, source: type, keys: tuple[str, ...], module: str, **extra: tuple[type, Any]) -> type:
    """A frozen dataclass ``name`` holding the fields ``keys`` of dataclass ``source`` (their
    types and defaults, so a configuration section mirrors a model's settings without copying
    them by hand), plus ``extra`` fields given as ``name=(type, default)``. ``module`` is the
    module that defines it (found there by pickle and type hints)."""
    fields = [(f.name, f.type, dataclasses.field(default=f.default)) for f in dataclasses.fields(source)
              if f.name in keys]
    fields += [(key, kind, dataclasses.field(default=default)) for key, (kind, default) in extra.items()]
    section = dataclasses.make_dataclass(name, fields, frozen=True)
    section.__module__ = module
    return section


def settings(section: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of ``keys`` in ``section``, as keyword arguments for the settings it mirrors."""
    return {key: getattr(section, key) for key in keys}


def read_yaml(path: str | Path) -> Any:
    """The plain values of the YAML file at ``path``, or a :class:`ConfigError` saying why not."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no configuration file at {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from error


def load_yaml(cls: type[T], path: str | Path) -> T:
    """:func:`from_dict` of the YAML file at ``path``."""
    return from_dict(cls, read_yaml(path), source=str(path))


def to_dict(config: Any) -> dict:
    """Plain values (tuples as lists), as a YAML or JSON file would hold them."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def with_overrides(config: T, check: typing.Callable[[T], None] | None = None, **dotted: Any) -> T:
    """``config`` with values replaced by dotted keys, e.g.
    ``{"world_model.training.imagination_ratio": 0.9}``, built and checked like a file (``check``:
    the range checks to run on the result)."""
    data = to_dict(config)
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown configuration section {key!r}")
            node = node[part]
        if last not in node:
            raise ConfigError(f"unknown configuration key {key!r}")
        node[last] = list(value) if isinstance(value, tuple) else value
    result = from_dict(type(config), data)
    if check is not None:
        check(result)
    return result
