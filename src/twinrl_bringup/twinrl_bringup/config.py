"""Typed configuration: YAML files under ``config/`` loaded into dataclasses.

This is the project's one config loader. Every configurable part of the stack declares a
dataclass; :func:`load_config` reads a YAML file into it and checks it strictly:

* an unknown key, a missing key (a field without a default) or a value of the wrong type is
  a :class:`ConfigError` whose message names the file and the dotted key path
  (``config/tasks/pick_and_place.yaml: grid.rows: expected int, got str 'four'``);
* malformed YAML is a :class:`ConfigError` naming the file, line and column.

Supported field types: ``bool``, ``int``, ``float`` (ints are accepted and converted),
``str``, ``list[T]``, ``tuple[T, ...]`` and fixed ``tuple[A, B]``, ``dict[str, T]``,
``Optional[T]`` / ``T | None``, ``Literal[...]``, ``Any`` and nested dataclasses.

Overrides use dotted keys (``grid.rows=6``) with YAML-typed values, see
:func:`apply_overrides`; they go through the same checks.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "config_dir",
    "resolve_config_path",
    "load_yaml",
    "from_dict",
    "to_dict",
    "load_config",
    "apply_overrides",
    "parse_override",
]


class ConfigError(ValueError):
    """A configuration file or value is invalid. The message names the file and key."""

    def __init__(self, source: str | os.PathLike | None, key: str, problem: str):
        self.source = str(source) if source is not None else "<config>"
        self.key = key
        self.problem = problem
        where = f"{self.source}: {key}: " if key else f"{self.source}: "
        super().__init__(where + problem)


def config_dir() -> Path:
    """The directory holding the project's YAML configuration.

    Order: ``$TWINRL_CONFIG_DIR``; the ``config/`` folder of the source checkout this module
    lives in (editable and symlink installs); the installed share directory of
    twinrl_bringup (plain colcon install or a lab's apt-based workspace).
    """
    env = os.environ.get("TWINRL_CONFIG_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "config"
        if (cand / "graphs").is_dir() and (parent / "src" / "twinrl_msgs").is_dir():
            return cand
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("twinrl_bringup")) / "config"
    except Exception as exc:  # pragma: no cover - only without any install
        raise ConfigError(None, "", f"cannot locate the config directory ({exc}); set TWINRL_CONFIG_DIR") from exc


def resolve_config_path(name: str | os.PathLike, subdir: str = "") -> Path:
    """A path as given if it exists, else ``config_dir()/subdir/name[.yaml]``."""
    p = Path(name)
    if p.is_file():
        return p
    base = config_dir() / subdir if subdir else config_dir()
    for cand in (base / p, base / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(p, "", f"no such configuration file (looked in {base})")


def load_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file; syntax errors become ConfigError with line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, "", f"invalid YAML: {where}{problem}") from exc


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, source, key)
            except ConfigError as exc:
                errors.append(exc.problem)
        raise ConfigError(source, key, f"expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(source, key, f"expected one of {choices}, got {_describe(value)}")
    if dataclasses.is_dataclass(tp):
        return _from_mapping(value, tp, source, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(source, key, f"expected bool, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(source, key, f"expected int, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(source, key, f"expected float, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(source, key, f"expected str, got {_describe(value)}")
    if origin in (list, typing.List) or tp is list:
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected a list, got {_describe(value)}")
        item_t = args[0] if args else Any
        return [_convert(v, item_t, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(source, key, f"expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value))
        if args:
            if len(value) != len(args):
                raise ConfigError(source, key, f"expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(value)
    if origin in (dict, typing.Dict) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a mapping, got {_describe(value)}")
        key_t, val_t = args if args else (str, Any)
        out = {}
        for k, v in value.items():
            sub = f"{key}.{k}" if key else str(k)
            if key_t is str and not isinstance(k, str):
                raise ConfigError(source, sub, f"expected a string key, got {_describe(k)}")
            out[k] = _convert(v, val_t, source, sub)
        return out
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(source, key, f"expected {tp.__name__}, got {_describe(value)}")
    raise TypeError(f"unsupported config field type {tp!r} at {key}")


def _from_mapping(data: Any, cls: type, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(source, prefix, f"expected a mapping for {cls.__name__}, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in data:
        if k not in fields:
            sub = f"{prefix}.{k}" if prefix else str(k)
            known = ", ".join(sorted(fields))
            raise ConfigError(source, sub, f"unknown key (known keys of {cls.__name__}: {known})")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], source, sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(source, sub, f"missing key (required by {cls.__name__})")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(source, prefix, str(exc)) from exc
    return obj


def from_dict(data: Any, cls: type[T], source: str | os.PathLike = "<dict>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from plain data with the same strict checks as files.

    A dataclass may define ``validate(self)`` raising ValueError for cross-field rules;
    the error is reported with the file and key prefix.
    """
    return _from_mapping(data, cls, str(source), prefix)


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config dataclass (tuples become lists), YAML-serialisable."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as YAML (``x=[1,2]``, ``y=true``)."""
    if "=" not in text:
        raise ConfigError("--set", text, "expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError("--set", text, "empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict, overrides: typing.Iterable[str | tuple[str, Any]]) -> dict:
    """Return a copy of mapping ``data`` with dotted-key overrides applied."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part) if isinstance(node, dict) else None
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[parts[-1]] = value
    return out


def load_config(
    path: str | os.PathLike,
    cls: type[T],
    overrides: typing.Iterable[str | tuple[str, Any]] = (),
    section: str | None = None,
) -> T:
    """Load YAML ``path`` (optionally only its top-level ``section``) into dataclass ``cls``."""
    path = Path(path)
    data = load_yaml(path)
    if data is None:
        data = {}
    prefix = ""
    if section is not None:
        if not isinstance(data, dict) or section not in data:
            raise ConfigError(path, section, "missing section")
        data = data[section]
        prefix = section
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(path, prefix, f"expected a mapping, got {_describe(data)}")
        data = apply_overrides(data, overrides)
    return _from_mapping(data, cls, str(path), prefix)
