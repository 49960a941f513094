"""A syntax tree shared by the prototxt and YAML readers.

Both readers produce the same three node kinds, each carrying its place in the file, so that turning
a tree into a message (and every error that can arise on the way) is written once, for both formats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from netspec.errors import SourceLoc, SpecSyntaxError

MAX_DEPTH = 100
"""The deepest nesting of blocks and lists below a spec's top level that the readers accept. Real specs
nest fewer than ten levels; the limit keeps every recursive walk of a tree or message (building, upgrading,
writing, protobuf's own printer) far from Python's recursion limit."""


@dataclass
class Scalar:
    """A leaf value as written: `text` is unescaped; `quoted` tells a string literal from a bare word."""

    text: str
    quoted: bool
    loc: SourceLoc


@dataclass
class Mapping:
    """A message body: `(key, key location, value)` in file order.

    In prototxt a key may repeat (that is how repeated fields are written); the YAML reader rejects
    repeated keys before building this.
    """

    loc: SourceLoc
    items: list[tuple[str, SourceLoc, Node]] = field(default_factory=list)


@dataclass
class Sequence:
    """A bracketed list (`[1, 2]` in prototxt, any sequence in YAML)."""

    loc: SourceLoc
    items: list[Node] = field(default_factory=list)


Node = Scalar | Mapping | Sequence


def too_deep(loc: SourceLoc) -> SpecSyntaxError:
    """The error for a block opened at `loc` beyond MAX_DEPTH."""
    return SpecSyntaxError(
        f"blocks nest more than {MAX_DEPTH} levels deep here",
        loc=loc,
        hint="specs nest a few levels; is the file generated or damaged?",
    )


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_characters(text: str, file: str) -> None:
    """Refuses a lone surrogate, which no file read as UTF-8 holds but a command-line value can (Python
    keeps undecodable bytes of an argument that way) and which no later step could encode."""
    m = _SURROGATE.search(text)
    if m is not None:
        line = text.count("\n", 0, m.start()) + 1
        col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
        raise SpecSyntaxError(
            f"U+{ord(m.group()):04X} is not a Unicode character (an undecodable byte?)", loc=SourceLoc(file, line, col)
        )
