"""Reads the config's YAML with bounds, so that no file can hang the agent or exhaust its memory.

PyYAML alone accepts what a hostile or careless file can do to a loader: aliases
that repeat aliases (a few hundred bytes that expand to billions of nodes once
anything walks the tree), nesting deep enough to overflow Python's stack,
duplicate keys (the last silently wins, so a whole section can vanish) and bytes
that are not UTF-8. Here:

- the event stream is checked first, before any node is built: nesting depth is
  bounded (:data:`MAX_DEPTH`), and the nodes are counted as they would be once
  expanded, each alias counting as the whole node it repeats, against
  :data:`MAX_NODES`; an alias to the node that contains it is refused;
- a mapping that names a key twice is an error naming both lines;
- the file is read as bytes (at most :data:`MAX_FILE_BYTES`) and decoded strictly.

Every problem is a one-line :class:`~otel_kepler.schema.ConfigError` that starts
with ``file:line:column``.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    NodeEvent,
    ScalarEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from otel_kepler.schema import ConfigError

#: A config file larger than this is refused unread (real ones are a few KiB).
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Deepest nesting of mappings and sequences.
MAX_DEPTH = 64
#: Most nodes (scalars, mappings, sequences) once every alias is expanded.
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
# libyaml's parser when PyYAML was built with it: the same results, several times faster.
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc]
    """A safe loader that refuses duplicate keys."""

    filename = "<config>"

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            # PyYAML's constructors for explicit tags (!!int "0x", !!bool maybe,
            # !!timestamp 2026-13-45) fail with Python errors rather than YAML ones.
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            value = node.value if isinstance(node.value, str) else "..."
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise yaml.constructor.ConstructorError(
                None, None, f"{tag} cannot hold {shown!r}", node.start_mark
            ) from None

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            self._check_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _check_duplicates(self, node: MappingNode) -> None:
        first: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *base` merges: the explicit keys override, as YAML intends
            key = self.construct_object(key_node)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: the constructor reports it
            if earlier is not key_node:
                raise ConfigError(
                    "",
                    f"{_where(self.filename, key_node.start_mark)}: duplicate key {key!r} "
                    f"(first at {self.filename}:{earlier.start_mark.line + 1}); "
                    "each key may appear once in a mapping",
                )


def read_file(path: str) -> str:
    """The file's text, or a ConfigError naming the file (and where it is not UTF-8)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(
            "", f"cannot read config file {path}: {err.strerror or type(err).__name__}"
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            "", f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; not a config file"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ConfigError(
            "",
            f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
            f"{err.start})",
        ) from None


class Document:
    """A loaded document: its data, and the line of each config path, found on demand."""

    def __init__(self, data: Any, root: Node | None) -> None:
        self.data = data
        self._root = root
        self._lines: dict[str, int] | None = None

    def line_of(self, path: str) -> int | None:
        """The 1-based line of ``receivers.rapl.zones[1]``, or of its nearest parent."""
        if self._root is None:
            return None
        if self._lines is None:
            self._lines = _lines(self._root)
        while path:
            if path in self._lines:
                return self._lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None


def load_yaml(text: str, filename: str = "<config>") -> Any:
    """One YAML document as Python values, within the bounds above; ConfigError otherwise."""
    return load_document(text, filename).data


def load_document(text: str, filename: str = "<config>") -> Document:
    """Like :func:`load_yaml`, keeping what is needed to tell the line of a config path."""
    try:
        _check_events(text, filename)
        loader = _Loader(text)
        loader.filename = filename
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
            return Document(data, root)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = _where(filename, mark) if mark else filename
        problem = err.problem or err.context or "invalid YAML"
        if err.problem and err.context:
            problem = f"{err.problem} ({err.context})"
        raise ConfigError("", f"{where}: invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        raise ConfigError(
            "",
            f"{filename}:{line}:{column}: invalid YAML: character #x{err.character:04x} is not "
            "allowed (control characters other than tab and newline)",
        ) from None
    except yaml.YAMLError as err:
        problem = " ".join(str(err).split())
        raise ConfigError("", f"{filename}: invalid YAML: {problem}") from None


def _lines(root: Node) -> dict[str, int]:
    """Config path -> line, walked without recursion (the depth and size are bounded)."""
    lines: dict[str, int] = {}
    stack: list[tuple[str, Node]] = [("", root)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    continue
                child = f"{path}.{key_node.value}" if path else str(key_node.value)
                lines.setdefault(child, key_node.start_mark.line + 1)
                stack.append((child, value_node))
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                child = f"{path}[{index}]"
                lines.setdefault(child, item.start_mark.line + 1)
                stack.append((child, item))
    return lines


def _check_events(text: str, filename: str) -> None:
    """Walk the event stream once: bound the depth and the expanded node count.

    An anchored node's size is known when it ends; an alias adds that size, so
    the count is what a full walk of the built tree would visit, computed without
    building or expanding anything.
    """
    parser = _Base(text)
    try:
        depth = 0
        nodes = 0
        sizes: dict[str, int] = {}  # anchor -> expanded size of its node
        open_nodes: list[tuple[str | None, int]] = []  # collections not ended: anchor, start
        while not parser.check_event(StreamEndEvent):
            event = parser.get_event()
            if isinstance(event, AliasEvent):
                size = sizes.get(event.anchor or "")
                if size is None:
                    if any(anchor == event.anchor for anchor, _ in open_nodes):
                        raise ConfigError(
                            "",
                            f"{_where(filename, event.start_mark)}: alias *{event.anchor} "
                            "refers to the node that contains it (a loop)",
                        )
                    raise ConfigError(
                        "",
                        f"{_where(filename, event.start_mark)}: invalid YAML: found undefined "
                        f"alias *{event.anchor}",
                    )
                nodes += size
            elif isinstance(event, ScalarEvent):
                nodes += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, CollectionStartEvent):
                nodes += 1
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(
                        "",
                        f"{_where(filename, event.start_mark)}: nested deeper than {MAX_DEPTH} "
                        "levels",
                    )
                open_nodes.append((event.anchor, nodes - 1))
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
                anchor, start = open_nodes.pop()
                if anchor is not None:
                    sizes[anchor] = nodes - start
            if nodes > MAX_NODES and isinstance(event, NodeEvent):
                raise ConfigError(
                    "",
                    f"{_where(filename, event.start_mark)}: more than {MAX_NODES} values once "
                    "its aliases are expanded; refused (an alias counts as all it repeats)",
                )
    finally:
        parser.dispose()


def _where(filename: str, mark: Any) -> str:
    return f"{filename}:{mark.line + 1}:{mark.column + 1}"
