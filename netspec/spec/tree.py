"""A syntax tree shared by the prototxt and YAML readers.

Both readers produce the same three node kinds, each carrying its place in the file, so that turning
a tree into a message (and every error that can arise on the way) is written once, for both formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netspec.errors import SourceLoc


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
