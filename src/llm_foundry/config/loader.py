"""One way to read settings: dataclasses from plain data, ``key=value`` overrides, one-line errors.

Every part's settings are a dataclass (``ModelConfig``, ``TrainConfig``, ``StageConfig``,
``RLConfig``, ``OnlineSettings``, the speedrun's sections ...). A dataclass field whose
default is itself a dataclass is a *section* (``StageConfig.train``, ``SpeedrunConfig.rl``).
The same rules hold everywhere:

* plain data (a YAML preset, a saved ``*.json``) fills a dataclass with :func:`build`;
  unknown keys are errors, with a "did you mean" hint;
* an override is ``key=value``; ``key`` is a dotted path (``midtrain.train.lr``) or, where
  only one field has that name, the bare name (``lr``); the shallowest match wins, and a
  tie is an "ambiguous" error naming the paths to write instead;
* values are converted to the field's annotated type (``lr=1e-4`` a float, ``steps=40`` an
  int, ``none``/``null`` for optional fields); lists and mappings are read as YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from typing import Any, Iterable, Mapping

import yaml

from ..utils.errors import FoundryError
from .sampling import show_value

SCALARS = ("bool", "int", "float", "str")


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> annotation string, for override coercion."""
    return {f.name: f.type for f in dataclasses.fields(cls)}


def sections(obj_or_cls: Any) -> dict[str, Any]:
    """The fields of a dataclass (class or instance) that are dataclasses themselves: name -> default instance."""
    obj = obj_or_cls() if isinstance(obj_or_cls, type) else obj_or_cls
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if dataclasses.is_dataclass(getattr(obj, f.name)) and not isinstance(getattr(obj, f.name), type)}


def _hint(key: str, names: Iterable[str], section: str = "") -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    return f" (did you mean '{_join(section, close[0])}'?)" if close else ""


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def coerce(value: Any, annotation: str, key: str) -> Any:
    """``value`` converted to a field's annotated type (``"int | None"``, ``"float"``, ...).

    YAML reads ``1e-4`` as a string and a command line gives strings: this makes ``lr=1e-4``
    a float and ``steps=40`` an int, or raises a one-line error. Non-scalar annotations
    (lists, mappings) pass the value through for the dataclass's ``validate`` to check.
    """
    annotation = str(annotation)
    optional = "None" in annotation
    base = annotation.replace("| None", "").strip()
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or base not in SCALARS:
            return None
        raise FoundryError(f"invalid config: {key} cannot be null")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError
        if base == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str) and "e" in value.lower():
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            return str(value)
    except (TypeError, ValueError):
        raise FoundryError(f"invalid config: {key} expects {base}, got {show_value(value)}") from None
    return value


def _parse_text(text: str, annotation: str) -> Any:
    """A command-line value: scalars as given (``coerce`` converts them), lists and mappings as YAML."""
    base = str(annotation).replace("| None", "").strip()
    if base in SCALARS:
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_field(obj: Any, section: str, key: str, value: Any) -> None:
    """Set one scalar field of dataclass ``obj`` from plain data, converted to its type."""
    types = field_types(type(obj))
    if key not in types:
        raise FoundryError(f"unknown config key '{_join(section, key)}'{_hint(key, types, section)}")
    setattr(obj, key, coerce(value, types[key], _join(section, key)))


def fill(obj: Any, raw: Mapping[str, Any] | None, section: str = "") -> Any:
    """Set the fields of dataclass ``obj`` (in place) from plain data; sections recurse.

    Raises:
        FoundryError: an unknown key (with a hint), a section that is not a mapping, a bad value.
    """
    subs = sections(obj)
    for key, value in (raw or {}).items():
        if key in subs:
            if value is not None and not isinstance(value, Mapping):
                raise FoundryError(f"config section '{_join(section, key)}' must be a mapping")
            fill(getattr(obj, key), value, _join(section, key))
        else:
            set_field(obj, section, key, value)
    return obj


def build(cls: type, raw: Mapping[str, Any] | None, section: str = "") -> Any:
    """A new ``cls()`` filled from plain data (not yet validated)."""
    return fill(cls(), raw, section)


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subs = sections(obj)
    out = []
    for f in dataclasses.fields(obj):
        if f.name in subs:
            out += _paths(subs[f.name], prefix + (f.name,))
        else:
            out.append(prefix + (f.name,))
    return out


def matching_paths(root: Any, name: str) -> list[tuple[str, ...]]:
    """The paths of the fields called ``name`` at the shallowest depth that has one (bare-key lookup)."""
    root = root() if isinstance(root, type) else root
    paths = [p for p in _paths(root) if p[-1] == name.strip().replace("-", "_")]
    depth = min((len(p) for p in paths), default=0)
    return [p for p in paths if len(p) == depth]


def resolve_key(root: Any, key: str, section: str = "") -> tuple[tuple[str, ...], str]:
    """The path of an override key in the settings ``root`` (class or instance), and its field's annotation.

    ``key`` is dotted (``train.lr``) or bare (``lr``, where one field at the shallowest
    depth has that name); ``-`` may stand for ``_``.
    """
    root = root() if isinstance(root, type) else root
    key = key.strip().replace("-", "_")
    if "." in key:
        path = tuple(key.split("."))
        node, where = root, section
        for part in path[:-1]:
            subs = sections(node)
            if part not in subs:
                hint = _hint(part, subs, where) or (f" (sections are {', '.join(s + '.' for s in subs)})" if subs else "")
                raise FoundryError(f"unknown config key '{_join(section, key)}'{hint}")
            node, where = subs[part], _join(where, part)
        types = field_types(type(node))
        if path[-1] not in types or path[-1] in sections(node):
            raise FoundryError(f"unknown config key '{_join(section, key)}'{_hint(path[-1], types, _join(section, '.'.join(path[:-1])))}")
        return path, str(types[path[-1]])
    paths = matching_paths(root, key)
    if not paths:
        names = {p[-1] for p in _paths(root)}
        raise FoundryError(f"unknown config key '{_join(section, key)}'{_hint(key, names)}")
    if len(paths) > 1:
        raise FoundryError(f"config key '{key}' is ambiguous; write {' or '.join('.'.join(p) for p in paths)}")
    node = root
    for part in paths[0][:-1]:
        node = getattr(node, part)
    return paths[0], str(field_types(type(node))[key])


def parse_override(root: Any, item: str, section: str = "") -> tuple[tuple[str, ...], Any]:
    """``"key=value"`` -> (path in ``root``, value converted to the field's type)."""
    if "=" not in item:
        raise FoundryError(f"override '{item}' must look like key=value (e.g. lr=3e-4, or a dotted path such as model.dim=128)")
    key, text = item.split("=", 1)
    path, annotation = resolve_key(root, key, section)
    return path, coerce(_parse_text(text.strip(), annotation), annotation, _join(section, ".".join(path)))


def apply_to(obj: Any, overrides: Iterable[str], section: str = "") -> Any:
    """A deep copy of dataclass ``obj`` with ``key=value`` overrides set (not yet validated)."""
    obj = copy.deepcopy(obj)
    for item in overrides:
        path, value = parse_override(obj, item, section)
        node = obj
        for part in path[:-1]:
            node = getattr(node, part)
        setattr(node, path[-1], value)
    return obj


def override_dict(root: Any, raw: Mapping[str, Any] | None, overrides: Iterable[str], section: str = "") -> dict[str, Any]:
    """A deep copy of plain data ``raw`` (the data of settings ``root``) with ``key=value`` overrides set.

    For settings kept as the data they were written in (a speedrun's state, a stage's preset
    section): the keys are checked and the values converted exactly as :func:`apply_to` does.
    """
    out = copy.deepcopy(dict(raw or {}))
    for item in overrides:
        path, value = parse_override(root, item, section)
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = dict(node.get(part) or {})
            node = node[part]
        node[path[-1]] = value
    return out
