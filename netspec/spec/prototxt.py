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
from netspec.spec.tree import MAX_DEPTH, Mapping, Node, Scalar, Sequence, check_characters, too_deep

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n\f\v]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[fF]?))
  | (?P<ident>[-+]?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>\[\]:,;])
  | (?P<unterminated>["'])
  | (?P<other>.)
    """,
    re.VERBOSE,
)

_ESCAPES = {
    "n": b"\n",
    "t": b"\t",
    "r": b"\r",
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "v": b"\v",
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
    "?": b"?",
}
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))", re.DOTALL)
_HEX_DIGITS = {"x": "one or two", "u": "four", "U": "eight"}


def _unescape(body: str, toks: _Tokens, start: int) -> str:
    """A string literal's text. As in protobuf, escapes stand for bytes (`\\303\\251` is 'é' in UTF-8) and
    the bytes must be UTF-8; `start` is the body's offset in the file, for locating a bad escape."""
    if "\\" not in body:
        return body  # the file's own text is valid Unicode (parse_prototxt checked it)
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(body):
        out += body[pos : m.start()].encode("utf-8")
        pos = m.end()
        octal, hex_byte, u4, u8, other = m.groups()
        if octal is not None and int(octal, 8) <= 0o377:
            out.append(int(octal, 8))
        elif hex_byte is not None:
            out.append(int(hex_byte, 16))
        elif (u4 or u8) and not 0xD800 <= int(u4 or u8, 16) <= 0xDFFF and int(u4 or u8, 16) <= 0x10FFFF:
            out += chr(int(u4 or u8, 16)).encode("utf-8")
        elif other in _ESCAPES:
            out += _ESCAPES[other]
        else:
            raise SpecSyntaxError(
                _bad_escape(m.group(), other) + " in a string",
                loc=toks.loc(start + m.start()),
                hint=r"write \\ for a backslash" if other and other not in _HEX_DIGITS else None,
            )
    out += body[pos:].encode("utf-8")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecSyntaxError(
            f"string is not valid UTF-8 text (at byte {e.start}: {bytes(out[e.start : e.end]).hex(' ')})",
            loc=toks.loc(start - 1),
            hint="a string field holds Unicode text; escapes stand for its UTF-8 bytes",
        ) from None


def _bad_escape(escape: str, other: str | None) -> str:
    if other is None:
        kind = "octal escape" if escape[1] in "01234567" else "escape"
        return f"{kind} '{escape}' is not a byte or a Unicode character"
    if other in _HEX_DIGITS:
        return f"escape '\\{other}' needs {_HEX_DIGITS[other]} hex digits"
    return f"unknown escape '\\{other}'" if other.isprintable() else f"unknown escape (U+{ord(other):04X})"


class _Tokens:
    """The token stream of one file, with 1-based line/column for every token."""

    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
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
    check_characters(text, file)
    toks = _Tokens(text, file)
    return _body(toks, Mapping(SourceLoc(file, 1, 1)), closer=None, depth=0)


def _body(toks: _Tokens, out: Mapping, closer: str | None, depth: int) -> Mapping:
    """The fields of a block nested `depth` deep (the top level is 0), up to its `closer`."""
    while True:
        tok = toks.peek()
        if tok is None:
            if closer is not None:
                raise SpecSyntaxError(
                    f"missing '{closer}' before the end of the file",
                    loc=out.loc,
                    hint="the block opened here is never closed: a closing brace is missing inside or after it",
                )
            return out
        kind, text, offset = tok
        if kind == "punct" and text == closer:
            toks.take()
            return out
        if kind != "ident" or text[0] in "-+":
            hint = None
            if kind == "punct" and text in "}>" and closer is None:
                hint = "there is one closing brace too many above this line"
            raise SpecSyntaxError(f"expected a field name, found '{text}'", loc=toks.loc(offset), hint=hint)
        toks.take()
        key_loc = toks.loc(offset)
        out.items.append((text, key_loc, _value(toks, text, depth)))
        if not toks.accept(","):
            toks.accept(";")


def _open(toks: _Tokens, offset: int, depth: int) -> int:
    """The depth of a block or list opened at `offset` inside one `depth` deep."""
    if depth >= MAX_DEPTH:
        raise too_deep(toks.loc(offset))
    return depth + 1


def _value(toks: _Tokens, name: str, depth: int) -> Node:
    colon = toks.accept(":")
    tok = toks.peek()
    if tok is None:
        raise SpecSyntaxError(f"field '{name}' has no value", loc=toks.here())
    kind, text, offset = tok
    if kind == "punct" and text in _CLOSE:
        toks.take()
        return _body(toks, Mapping(toks.loc(offset)), _CLOSE[text], _open(toks, offset, depth))
    if not colon:
        raise SpecSyntaxError(f"expected ':' or '{{' after field name '{name}', found '{text}'", loc=toks.loc(offset))
    if kind == "punct" and text == "[":
        toks.take()
        inner = _open(toks, offset, depth)
        seq = Sequence(toks.loc(offset))
        if toks.accept("]"):
            return seq
        while True:
            item_tok = toks.peek()
            if item_tok is not None and item_tok[0] == "punct" and item_tok[1] in _CLOSE:
                toks.take()
                block = Mapping(toks.loc(item_tok[2]))
                seq.items.append(_body(toks, block, _CLOSE[item_tok[1]], _open(toks, item_tok[2], inner)))
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
        parts = [_unescape(text[1:-1], toks, offset + 1)]
        while (nxt := toks.peek()) is not None and nxt[0] == "string":
            toks.take()
            parts.append(_unescape(nxt[1][1:-1], toks, nxt[2] + 1))
        return Scalar("".join(parts), True, loc)
    if kind in ("number", "ident"):
        return Scalar(text, False, loc)
    raise SpecSyntaxError(f"expected a value for field '{name}', found '{text}'", loc=loc)
