"""Reads a YAML spec into the syntax tree shared with prototxt, keeping every node's line and column.

A spec is plain data, so the tree is built from the parser's events, never from constructed Python
objects: scalars keep their exact text (`1e-4` stays a number, `yes` stays a word), and tags (`!!str`,
`!!python/...`, any `!name`), anchors and aliases (`&a`, `*a`) are refused where they appear, before
anything could be expanded, so a small file cannot grow into a large tree. Duplicate keys, which
PyYAML would silently collapse, are errors, and nesting is limited to MAX_DEPTH, as in prototxt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, cast

import yaml

from netspec.errors import SourceLoc, SpecSyntaxError, shown
from netspec.spec.tree import MAX_DEPTH, Mapping, Node, Scalar, Sequence, check_characters, too_deep

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_DATA = "specs are plain data: write the value out"


class _Mark(Protocol):
    """A position in the YAML text, from the pure-Python parser or from libyaml's."""

    line: int
    column: int


def _loc(file: str, mark: _Mark | None) -> SourceLoc:
    if mark is None:
        return SourceLoc(file, 1)
    return SourceLoc(file, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, file: str) -> Mapping:
    """Parses a YAML document whose top level is a mapping (an empty file is an empty mapping)."""
    check_characters(text, file)
    try:
        tree = _tree(yaml.parse(text, Loader=_Loader), file)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(" ".join(str(x).split()) for x in (e.context, e.problem) if x) or "invalid YAML"
        raise SpecSyntaxError(
            f"YAML syntax: {msg}",
            loc=_loc(file, mark),
            hint="YAML nests by indentation: compare this line's with the lines above",
        ) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise SpecSyntaxError(
            f"YAML syntax: {e.reason} (character U+{e.character:04X})"
            if isinstance(e.character, int)
            else f"YAML syntax: {e.reason}",
            loc=SourceLoc(file, line, col),
        ) from None
    except yaml.YAMLError as e:
        raise SpecSyntaxError(f"YAML syntax: {' '.join(str(e).split())}", loc=SourceLoc(file, 1)) from None
    if tree is None:
        return Mapping(SourceLoc(file, 1, 1))
    if not isinstance(tree, Mapping):
        raise SpecSyntaxError("the top level of a YAML spec must be a mapping (name: ..., layer: [...])", loc=tree.loc)
    return tree


@dataclass
class _Open:
    """A mapping or sequence whose end has not been read yet; a mapping's key waiting for its value."""

    node: Mapping | Sequence
    key: tuple[str, SourceLoc] | None = None
    seen: dict[str, SourceLoc] = field(default_factory=dict)


def _tree(events: Iterator[yaml.Event], file: str) -> Node | None:
    """The one document's tree, built without recursion, from the parser's events."""
    root: Node | None = None
    open_: list[_Open] = []
    documents = 0
    for event in events:
        loc = _loc(file, event.start_mark)
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise SpecSyntaxError("a spec file holds one YAML document; this is a second", loc=loc)
            continue
        if isinstance(event, yaml.AliasEvent):
            raise SpecSyntaxError(
                f"YAML aliases (*{shown(event.anchor or '')}) are not allowed; {_PLAIN_DATA}", loc=loc
            )
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            node: Node = open_.pop().node
        elif isinstance(event, yaml.NodeEvent):
            if event.anchor is not None:
                raise SpecSyntaxError(f"YAML anchors (&{shown(event.anchor)}) are not allowed; {_PLAIN_DATA}", loc=loc)
            tag = getattr(event, "tag", None)
            if tag is not None:
                tag = tag.replace("tag:yaml.org,2002:", "!!", 1)
                raise SpecSyntaxError(f"YAML tags ({shown(tag)}) are not allowed; {_PLAIN_DATA}", loc=loc)
            if isinstance(event, yaml.ScalarEvent):
                node = _scalar(event, loc)
            else:
                if open_ and isinstance(open_[-1].node, Mapping) and open_[-1].key is None:
                    raise SpecSyntaxError("a mapping key must be a plain name", loc=loc)
                if len(open_) > MAX_DEPTH:
                    raise too_deep(loc)
                open_.append(_Open(Mapping(loc) if isinstance(event, yaml.MappingStartEvent) else Sequence(loc)))
                continue
        else:
            continue  # stream and document ends
        if not open_:
            root = node
        else:
            _attach(open_[-1], node)
    return root


def _scalar(event: yaml.ScalarEvent, loc: SourceLoc) -> Scalar:
    try:
        event.value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SpecSyntaxError(
            f"string holds U+{ord(event.value[e.start]):04X}, which is not a Unicode character (a lone surrogate)",
            loc=loc,
        ) from None
    return Scalar(event.value, event.style in ("'", '"'), loc)


def _attach(parent: _Open, node: Node) -> None:
    """Puts a finished node into the innermost open mapping (as a key or a value) or sequence."""
    if isinstance(parent.node, Sequence):
        parent.node.items.append(node)
    elif parent.key is not None:
        parent.node.items.append((*parent.key, node))
        parent.key = None
    else:
        key = cast(Scalar, node)  # a mapping or sequence as a key is refused at its start
        if key.text == "<<":
            raise SpecSyntaxError(
                "YAML merge keys ('<<') are not supported in specs; write the fields out", loc=key.loc
            )
        if key.text in parent.seen:
            raise SpecSyntaxError(
                f"duplicate key '{shown(key.text)}' (first given on line {parent.seen[key.text].line})", loc=key.loc
            )
        parent.seen[key.text] = key.loc
        parent.key = (key.text, key.loc)
