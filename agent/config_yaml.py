"""YAML loading that keeps line numbers and the scalars' original text, for precise config errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from .storage import ConfigError


class Scalar(str):
    """A YAML scalar: the text as written (the str value), the YAML 1.1 value and the line."""

    value: Any
    line: int
    plain: bool


class _Map(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers its line."""

    line: int


class _Seq(list):  # type: ignore[type-arg]
    """A YAML sequence that remembers its line."""

    line: int


_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """SafeLoader whose scalars keep their source text and whose mappings reject duplicate keys."""


def _construct_scalar(loader: _Loader, node: yaml.ScalarNode) -> Scalar:
    text = loader.construct_scalar(node)
    value: Any = text
    try:
        if node.tag == _NULL_TAG:
            value = None
        elif node.tag == _BOOL_TAG:
            value = loader.construct_yaml_bool(node)
        elif node.tag == _INT_TAG:
            value = loader.construct_yaml_int(node)
        elif node.tag == _FLOAT_TAG:
            value = loader.construct_yaml_float(node)
    except ValueError:
        value = text
    s = Scalar(text)
    s.value = value
    s.line = node.start_mark.line + 1
    s.plain = node.style is None
    return s


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[_Map]:
    data = _Map()
    data.line = node.start_mark.line + 1
    yield data
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        if key_node.value in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key_node.value!r} is defined twice (first on line {seen[key_node.value]})",
                key_node.start_mark,
            )
        seen[key_node.value] = key_node.start_mark.line + 1
    data.update(loader.construct_mapping(node))


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Iterator[_Seq]:
    data = _Seq()
    data.line = node.start_mark.line + 1
    yield data
    data.extend(loader.construct_sequence(node))


for _tag in (
    _NULL_TAG,
    _BOOL_TAG,
    _INT_TAG,
    _FLOAT_TAG,
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:timestamp",
):
    _Loader.add_constructor(_tag, _construct_scalar)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = exc.problem or exc.context or "syntax error"
        # exc's own str() quotes the offending line, which may hold an expanded secret: leave it out.
        raise ConfigError(f"{source}: {where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {type(exc).__name__}") from None
