"""YAML a user gives (`--config`, `--set`): parsed as data within bounds, refused in one line otherwise.

Plain `yaml.safe_load` runs no code but trusts the text's size: a few hundred bytes of nested
aliases ("billion laughs") expand to billions of values once anything walks the result, a
duplicate key silently keeps the last value, and an integer of thousands of digits stops in
Python's int-string limit with a traceback. The loader here counts, while it composes the node
graph and before any object is built, how large the text would be with every alias written out,
and refuses a text past the bound, a key that appears twice, an alias that loops and a number
no setting can use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pipeline.ground.errors import UserError

MAX_YAML_BYTES = 1 << 20  # a config is a few KB: a file this large is a mistake or an attack
MAX_EXPANDED = 2 * MAX_YAML_BYTES  # values + characters once every alias is written out
MAX_NUMBER_CHARS = 100  # longer than any int64 in any YAML notation: refused without converting
INT_BOUND = 2**63  # every count, size and seed a setting takes fits an int64
INT_TAG = "tag:yaml.org,2002:int"


class YamlSyntaxError(UserError):
    """Text that is not YAML; `problem` is the parser's own words, for a caller to phrase."""

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that sizes, checks and names (by dotted key) every node as it composes it."""

    def __init__(self, text: str, where: str, root: str, lines: bool) -> None:
        super().__init__(text)
        self.where, self.root, self.lines = where, root, lines
        self.path = [root] if root else []
        self.expanded = 0
        self.sizes: dict[str, int] = {}  # anchor -> its value's size with aliases written out

    def refuse(self, node: Node | yaml.Event, problem: str) -> UserError:
        line = f"line {node.start_mark.line + 1}: " if self.lines and node.start_mark else ""
        return UserError(f"{self.where}: {line}{problem}")

    def named(self, key: str) -> str:
        return f"key '{'.'.join([*self.path, key])}'"

    def at(self) -> str:
        """The key of the node being composed, unless `where` names it already (the text's root)."""
        return f"key '{'.'.join(self.path)}': " if self.path[1 if self.root else 0 :] else ""

    def grow(self, size: int, event: yaml.Event) -> None:
        self.expanded += size
        if self.expanded > MAX_EXPANDED:
            if isinstance(event, yaml.AliasEvent):
                raise self.refuse(
                    event,
                    f"the alias *{event.anchor} expands the YAML past {MAX_EXPANDED:,} values "
                    f"and characters: refused as an alias bomb",
                )
            raise self.refuse(event, f"the YAML holds more than {MAX_EXPANDED:,} values and characters")

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self.anchors and event.anchor not in self.sizes:
                raise self.refuse(event, f"the alias *{event.anchor} sits inside the value it names (a loop)")
            node = super().compose_node(parent, index)  # an unknown anchor raises here
            self.grow(self.sizes[event.anchor], event)
            return node
        child = isinstance(parent, SequenceNode) or isinstance(parent, MappingNode) and index is not None
        if child:
            self.path.append(str(index) if isinstance(parent, SequenceNode) else _key_text(index))
        start = self.expanded
        self.grow(1 + len(event.value) if isinstance(event, yaml.ScalarEvent) else 1, event)
        node = super().compose_node(parent, index)
        if isinstance(node, MappingNode):
            self.check_keys(node)
        elif isinstance(node, ScalarNode):
            self.check_number(node)
        if child:
            self.path.pop()
        if event.anchor is not None:
            self.sizes[event.anchor] = self.expanded - start
        return node

    def check_keys(self, node: MappingNode) -> None:
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, ScalarNode):
                if (key.tag, key.value) in seen:
                    raise self.refuse(key, f"{self.named(key.value)} appears twice")
                seen.add((key.tag, key.value))

    def check_number(self, node: ScalarNode) -> None:
        if node.tag == INT_TAG:
            digits = sum(c.isdigit() for c in node.value)
            if len(node.value) > MAX_NUMBER_CHARS or abs(self.construct_yaml_int(node)) >= INT_BOUND:
                shown = node.value if len(node.value) <= 24 else f"{node.value[:12]}... ({digits:,} digits)"
                raise self.refuse(
                    node, f"{self.at()}the integer {shown} is out of range (a setting takes at most {INT_BOUND - 1:,})"
                )


def _key_text(key: Node) -> str:
    return key.value if isinstance(key, ScalarNode) else "?"


def load_yaml(text: str, where: str, root: str = "", lines: bool = True) -> Any:
    """The data of YAML `text`; `where` (e.g. "--config c.yaml") starts every error, `root` is the
    dotted key the text sits under, `lines` says whether line numbers mean anything to the user."""
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{where}: {len(text):,} characters, past the {MAX_YAML_BYTES:,} a config may hold")
    loader = _BoundedLoader(text, where, root, lines)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if lines and mark is not None else ""
        raise YamlSyntaxError(f"{where}: {line}{problem} (not valid YAML)", problem) from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path, where: str) -> Any:
    """The data of the YAML file `path`, read no further than the size bound; FileNotFoundError passes."""
    try:
        with open(path, "rb") as handle:  # a pipe or /dev/zero is read up to the bound, never whole
            raw = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UserError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise UserError(f"{where}: larger than {MAX_YAML_BYTES:,} bytes, which no config needs: is it the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{where}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start:,}): is it a YAML file?"
        ) from None
    return load_yaml(text, where)
