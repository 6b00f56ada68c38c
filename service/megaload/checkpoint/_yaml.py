"""YAML from a checkpoint (``run_config.yaml``), read with bounded nesting and alias expansion.

``yaml.safe_load`` builds no objects, but it still takes whatever shape the text asks for:
an *alias* (``*a``) shares the node its anchor (``&a``) names, so a 1 KB file of nested
aliases describes a value that code walking it (a JSON response, a ``repr`` in a message)
expands to gigabytes; and a file nested 100,000 levels deep exhausts the recursion of the
composer. :func:`load_yaml` composes the document with two budgets, checked while composing
(before any value is built):

- depth: at most :data:`MAX_DEPTH` nested collections;
- alias expansion: every alias adds the size of what it stands for (its nodes plus the
  characters of its scalars, expanded in turn); the total over the document may not exceed
  :data:`MAX_ALIAS_EXPANSION`. An alias to a collection still being composed (a recursive
  value) is refused too.

Real run configs are a few levels deep and alias little or nothing (PyYAML's dumper writes an
anchor where one object appears twice). Events come from libyaml's parser when PyYAML has it
(``yaml.CParser``), else from PyYAML's own; composing is PyYAML's ``Composer`` with the
budgets added, then ``SafeConstructor`` (no tags, no objects).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

__all__ = ["load_yaml", "YAMLBudgetError", "MAX_DEPTH", "MAX_ALIAS_EXPANSION"]

MAX_DEPTH = 100
MAX_ALIAS_EXPANSION = 100_000


class YAMLBudgetError(yaml.YAMLError):
    """The document is nested deeper, or expands through aliases further, than allowed."""


class _BoundedComposer(Composer):
    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._expanded = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, once composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise YAMLBudgetError(f"alias *{event.anchor} refers to a value that contains it, at {event.start_mark}")
                self._expanded += size
                if self._expanded > MAX_ALIAS_EXPANSION:
                    raise YAMLBudgetError(
                        f"aliases expand the document past {MAX_ALIAS_EXPANSION} nodes and characters "
                        f"(at *{event.anchor}, {event.start_mark})"
                    )
            return super().compose_node(parent, index)
        nested = self.check_event(SequenceStartEvent, MappingStartEvent)
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise YAMLBudgetError(f"the document nests deeper than {MAX_DEPTH} levels (at {self.peek_event().start_mark})")
        try:
            node = super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1
        self._sizes[id(node)] = self._size(node)
        return node

    def _size(self, node: Any) -> int:
        if isinstance(node, ScalarNode):
            return 1 + len(node.value)
        sizes = self._sizes
        if isinstance(node, SequenceNode):
            return 1 + sum(sizes.get(id(child), 1) for child in node.value)
        if isinstance(node, MappingNode):
            return 1 + sum(sizes.get(id(k), 1) + sizes.get(id(v), 1) for k, v in node.value)
        return 1


try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None
if _CParser is not None:

    class _Loader(_BoundedComposer, _CParser, SafeConstructor, Resolver):
        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(Reader, Scanner, Parser, _BoundedComposer, SafeConstructor, Resolver):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)


def load_yaml(text: str) -> Any:
    """The single document in ``text``, as ``yaml.safe_load`` builds it, within the budgets of
    the module docstring. Raises :class:`YAMLBudgetError` or another ``yaml.YAMLError``."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YAMLBudgetError("the document is nested too deeply to be read") from None
    finally:
        loader.dispose()
