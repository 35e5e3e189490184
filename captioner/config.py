"""Configs are plain dataclasses, loaded from YAML and overridden with `--set key=value`.

Nested dataclasses map to nested YAML mappings; an override addresses them with dots
(`--set model.hidden_size=512`). Values in overrides are parsed as YAML scalars, so
`true`, `3` and `[a, b]` get their natural types; values are then checked against the field's
type, so `lr: 1e-3` (a string to YAML 1.1, which wants `1.0e-3`) is still a float and
`epochs: ten` is a one-line error instead of a crash deep inside training. Finally every
config class with a `validate()` method checks its ranges (`epochs: 0`, `lr: -1`), so a bad
value stops the command before any process group, file or model exists.

What a config says wrongly (an unknown key, a value of the wrong type or range, invalid YAML) is a
`UsageError` (exit 2, like a bad flag); a config file that is missing or unreadable is a
`CaptionerError` (exit 1, like any missing input).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .atomic import atomic_write
from .errors import CaptionerError, UsageError

T = TypeVar("T")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(name: str, tp, value, source: str):
    """`value` as the field's scalar type (float, int, bool, str), or a one-line error."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    if optional:
        if value is None:
            return None
        tp = next(t for t in typing.get_args(tp) if t is not type(None))
    if tp not in (float, int, bool, str):
        return value
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    if tp is int and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
    if isinstance(value, tp) and not (tp is not bool and isinstance(value, bool)):
        return value
    expected = {float: "a number", int: "a whole number", bool: "true or false", str: "a string"}[tp]
    raise UsageError(f"{name} must be {expected}{' or null' if optional else ''}, got {value!r}", source)


def from_dict(cls: type[T], data: dict, source: str = "config") -> T:
    """Build `cls` from a mapping, refusing unknown keys (typos must not pass silently)."""
    if not isinstance(data, dict):
        raise UsageError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}", source)
    field_types = _field_types(cls)
    unknown = sorted(set(data) - set(field_types))
    if unknown:
        raise UsageError(f"unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
                         f"known: {', '.join(field_types)}", source)
    kwargs = {}
    for name, value in data.items():
        tp = field_types[name]
        if _is_dataclass_type(tp):
            value = from_dict(tp, value or {}, source)
        else:
            value = _coerce(name, tp, value, source)
        kwargs[name] = value
    return cls(**kwargs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key given twice in one mapping is an error: PyYAML keeps the last
    value silently, so `epochs: 5` above a forgotten `epochs: 50` would train for 50."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # the keys written here; `<<: *anchor` merges may be overridden
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _refuse_cycles(value, source, where: str = "", inside: frozenset = frozenset()) -> None:
    """YAML anchors can make a list or mapping contain itself (`a: &m [*m]`); nothing here could
    use such a value, and walking it would recurse until Python gives up."""
    if not isinstance(value, (list, dict)):
        return
    if id(value) in inside:
        raise UsageError(f"a YAML alias refers to itself (at {where or 'the top level'}); write the value out",
                         source)
    inside = inside | {id(value)}
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        _refuse_cycles(item, source, f"{where}.{key}" if where and isinstance(value, dict)
                       else where if isinstance(value, list) else str(key), inside)


def validate_config(obj) -> None:
    """Call `validate()` on `obj` and on every config nested in it, innermost first."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_config(value)
    if hasattr(obj, "validate"):
        obj.validate()


def require(ok: bool, name: str, requirement: str, value) -> None:
    """A config range check: `name must be REQUIREMENT, got VALUE` unless `ok`."""
    if not ok:
        raise UsageError(f"{name} must be {requirement}, got {value!r}")


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def apply_overrides(obj: T, overrides: list[str] | None, source: str = "--set") -> T:
    """Return a copy of `obj` with `key.sub=value` overrides applied."""
    data = to_dict(obj)
    for item in overrides or []:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not key=value", source)
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _refuse_cycles(value, source, key.strip())
        node, cls = data, type(obj)
        parts = key.strip().split(".")
        for part in parts[:-1]:
            field_types = _field_types(cls)
            if part not in field_types or not _is_dataclass_type(field_types[part]):
                raise UsageError(f"unknown config section {part!r} in override {item!r}", source)
            node, cls = node[part], field_types[part]
        if parts[-1] not in _field_types(cls):
            raise UsageError(f"unknown config key {key!r} in override {item!r}; "
                             f"known: {', '.join(_field_types(cls))}", source)
        node[parts[-1]] = value
    return from_dict(type(obj), data, source)


def load_config(cls: type[T], path: str | os.PathLike | None = None,
                overrides: list[str] | None = None) -> T:
    """Load `cls` from a YAML file (or defaults when `path` is None), then apply overrides."""
    if path is None:
        obj = cls()
    else:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CaptionerError("config file not found", path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CaptionerError(f"cannot read config: {exc}", path) from None
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise UsageError(f"invalid YAML: {getattr(exc, 'problem', exc)}", path,
                             mark.line + 1 if mark else None) from None
        _refuse_cycles(data, path)
        obj = from_dict(cls, data, str(path))
    obj = apply_overrides(obj, overrides)
    try:
        validate_config(obj)
    except CaptionerError as exc:
        if exc.path is not None:
            raise
        # A value out of range is a usage error wherever the check lives (exit 2).
        raise UsageError(exc.reason, path if path is not None else "--set") from None
    return obj


def save_config(obj, path: str | os.PathLike) -> None:
    """Write `obj` as YAML, unless the file already says exactly that (its date then stays the
    date of the config's last change, e.g. a resume that changes nothing)."""
    text = yaml.safe_dump(to_dict(obj), sort_keys=False)
    try:
        if Path(path).read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write(path, text)
