"""Reads protobuf text format (Caffe's .prototxt) into a syntax tree with a location on every node.

netspec reads the text itself, rather than through `google.protobuf.text_format`, so that every field
and value keeps its line and column and so that errors in both spec formats come from one place
(`netspec.spec.build`). The grammar is protobuf's: `name: value`, `name { ... }` (or `<...>`, or
`name: {...}`), repeated fields written by repetition or as `name: [a, b]`, `#` comments, adjacent
string literals concatenated.
"""

from __future__ import annotations

import bisect
import re

from netspec.errors import SourceLoc, SpecSyntaxError
from netspec.spec.tree import Mapping, Node, Scalar, Sequence

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n\f\v]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>\[\]:,;])
  | (?P<unterminated>["'])
  | (?P<other>.)
    """,
    re.VERBOSE,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|u[0-9a-fA-F]{4}|.)", re.DOTALL)


def _unescape(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] == "x":
            return chr(int(e[1:], 16))
        if e[0] == "u" and len(e) == 5:
            return chr(int(e[1:], 16))
        if e[0] in "01234567":
            return chr(int(e, 8))
        return _ESCAPES.get(e, e)

    return _ESCAPE.sub(one, body)


class _Tokens:
    """The token stream of one file, with 1-based line/column for every token."""

    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self._line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        self.toks: list[tuple[str, str, int]] = []
        for m in _TOKEN.finditer(text):
            kind = m.lastgroup or "other"
            if kind == "space":
                continue
            if kind == "unterminated":
                raise SpecSyntaxError("string literal is not closed on its line", loc=self.loc(m.start()))
            if kind == "other":
                raise SpecSyntaxError(f"unexpected character {m.group()!r}", loc=self.loc(m.start()))
            self.toks.append((kind, m.group(), m.start()))
        self.pos = 0
        self.end = len(text)

    def loc(self, offset: int) -> SourceLoc:
        line = bisect.bisect_right(self._line_starts, offset)
        return SourceLoc(self.file, line, offset - self._line_starts[line - 1] + 1)

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def here(self) -> SourceLoc:
        tok = self.peek()
        return self.loc(tok[2] if tok else self.end)

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise SpecSyntaxError("unexpected end of file", loc=self.here())
        self.pos += 1
        return tok

    def accept(self, text: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "punct" and tok[1] == text:
            self.pos += 1
            return True
        return False

    def expect(self, text: str, what: str) -> None:
        if not self.accept(text):
            tok = self.peek()
            got = f"'{tok[1]}'" if tok else "end of file"
            raise SpecSyntaxError(f"expected '{text}' {what}, found {got}", loc=self.here())


_CLOSE = {"{": "}", "<": ">"}


def parse_prototxt(text: str, file: str) -> Mapping:
    """Parses a whole prototxt file into the Mapping of its top-level message."""
    toks = _Tokens(text, file)
    root = _body(toks, Mapping(SourceLoc(file, 1, 1)), closer=None)
    return root


def _body(toks: _Tokens, out: Mapping, closer: str | None) -> Mapping:
    while True:
        tok = toks.peek()
        if tok is None:
            if closer is not None:
                raise SpecSyntaxError(f"missing '{closer}' before the end of the file", loc=out.loc,
                                      hint="the block opened here is never closed: a closing brace is missing "
                                      "inside or after it")
            return out
        kind, text, offset = tok
        if kind == "punct" and text == closer:
            toks.take()
            return out
        if kind != "ident" or text.startswith("-"):
            hint = None
            if kind == "punct" and text in "}>" and closer is None:
                hint = "there is one closing brace too many above this line"
            raise SpecSyntaxError(f"expected a field name, found '{text}'", loc=toks.loc(offset), hint=hint)
        toks.take()
        key_loc = toks.loc(offset)
        out.items.append((text, key_loc, _value(toks, text)))
        if not toks.accept(","):
            toks.accept(";")


def _value(toks: _Tokens, name: str) -> Node:
    colon = toks.accept(":")
    tok = toks.peek()
    if tok is None:
        raise SpecSyntaxError(f"field '{name}' has no value", loc=toks.here())
    kind, text, offset = tok
    if kind == "punct" and text in _CLOSE:
        toks.take()
        return _body(toks, Mapping(toks.loc(offset)), _CLOSE[text])
    if not colon:
        raise SpecSyntaxError(
            f"expected ':' or '{{' after field name '{name}', found '{text}'", loc=toks.loc(offset)
        )
    if kind == "punct" and text == "[":
        toks.take()
        seq = Sequence(toks.loc(offset))
        if toks.accept("]"):
            return seq
        while True:
            item_tok = toks.peek()
            if item_tok is not None and item_tok[0] == "punct" and item_tok[1] in _CLOSE:
                toks.take()
                seq.items.append(_body(toks, Mapping(toks.loc(item_tok[2])), _CLOSE[item_tok[1]]))
            else:
                seq.items.append(_scalar(toks, name))
            if toks.accept("]"):
                return seq
            toks.expect(",", f"or ']' in the list of '{name}'")
    return _scalar(toks, name)


def _scalar(toks: _Tokens, name: str) -> Scalar:
    kind, text, offset = toks.take()
    loc = toks.loc(offset)
    if kind == "string":
        parts = [_unescape(text[1:-1])]
        while (nxt := toks.peek()) is not None and nxt[0] == "string":
            parts.append(_unescape(toks.take()[1][1:-1]))
        return Scalar("".join(parts), True, loc)
    if kind in ("number", "ident"):
        return Scalar(text, False, loc)
    raise SpecSyntaxError(f"expected a value for field '{name}', found '{text}'", loc=loc)
