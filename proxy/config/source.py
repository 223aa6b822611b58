"""Reading a configuration file: YAML (JSON is YAML) with duplicate keys refused and each `$.path`'s line.

PyYAML keeps the last of two equal keys without a word; a configuration that says `maxQueueSize` twice
is a mistake, so it is an error naming both lines. The line of every key and list item is remembered so
that a validation error can say `config.yaml:12: $.listen.nats: ...`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.errors import ConfigError


@dataclass(frozen=True)
class ConfigSource:
    """One file's mapping, where each `$.path` of it is written, and the hash of its bytes."""

    name: str
    data: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)
    sha256: str = ""

    def line_of(self, path: str) -> int | None:
        """The line of `path`, or of its nearest written ancestor (None when nothing of it is in the file)."""
        while path:
            line = self.lines.get(path)
            if line is not None:
                return line
            path = _parent(path)
        return None

    def where(self, path: str) -> str:
        """`name:line` for an error at `path` (`name` alone when no line applies)."""
        line = self.line_of(path)
        return f"{self.name}:{line}" if line is not None else self.name


def _parent(path: str) -> str:
    """`$.a.b[0]` -> `$.a.b` -> `$.a` -> `$` -> ``."""
    if path == "$":
        return ""
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else "$"


def read_source(path: Path) -> ConfigSource:
    """Read and parse one configuration file; every problem is a ConfigError that names the file."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from err
    return parse_source(text, str(path), hashlib.sha256(raw).hexdigest())


def parse_source(text: str, name: str, sha256: str = "") -> ConfigSource:
    """Parse YAML text into a ConfigSource; `name` is what errors call it (the file's path)."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as err:
            raise ConfigError(_yaml_error(name, err)) from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{name}: invalid YAML: {err}") from None
        if node is None:
            return ConfigSource(name, {}, {}, sha256)
        lines: dict[str, int] = {"$": node.start_mark.line + 1}
        duplicates: list[str] = []
        _walk(node, "$", lines, duplicates, name)
        if duplicates:
            raise ConfigError(duplicates[0], duplicates)
        try:
            data = loader.construct_document(node)
        except yaml.MarkedYAMLError as err:
            raise ConfigError(_yaml_error(name, err)) from None
    finally:
        loader.dispose()
    if data is None:
        return ConfigSource(name, {}, lines, sha256)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the value {data!r}"
        raise ConfigError(
            f"{name}:{lines['$']}: $: expected a mapping of sections (upstream, listen, ...), got {kind}"
        )
    return ConfigSource(name, data, lines, sha256)


def _walk(node: yaml.Node, path: str, lines: dict[str, int], duplicates: list[str], name: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            child = f"{path}.{key}"
            if key in seen:
                duplicates.append(
                    f"{name}:{line}: {child}: duplicate key {key!r}, first written at line {seen[key]} "
                    "(YAML would silently keep the last one): remove one"
                )
                continue
            seen[key] = line
            lines[child] = line
            _walk(value_node, child, lines, duplicates, name)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            lines[child] = item.start_mark.line + 1
            _walk(item, child, lines, duplicates, name)


def _yaml_error(name: str, err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    problem = err.problem or "cannot parse"
    context = f" ({err.context})" if err.context else ""
    return f"{where}: invalid YAML: {problem}{context}"
