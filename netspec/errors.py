"""The errors netspec reports to users, and where in a spec they point.

Every mistake a user can make (in a spec, a data file, a weights file, a request) is a `NetspecError`:
the command line prints `str(error)` and exits 1, without a traceback. Layer code raises errors with
only the message; the drivers that walk the graph add the file, line and layer with `at()`, so that
context is attached in one place.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class SourceLoc:
    """A place in a spec file; line and column are 1-based."""

    file: str
    line: int
    col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" + (f":{self.col}" if self.col else "")


class NetspecError(Exception):
    """A problem with the user's input; printed as `FILE:LINE: layer 'NAME' (Type): message`."""

    def __init__(
        self,
        msg: str,
        *,
        loc: SourceLoc | None = None,
        layer: str | None = None,
        layer_type: str | None = None,
        hint: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.loc = loc
        self.layer = layer
        self.layer_type = layer_type
        self.hint = hint
        self.field = field

    def at(
        self,
        loc: SourceLoc | None = None,
        layer: str | None = None,
        layer_type: str | None = None,
    ) -> Self:
        """Fills in the location and layer where they are not known yet."""
        self.loc = self.loc or loc
        self.layer = self.layer if self.layer is not None else layer
        self.layer_type = self.layer_type or layer_type
        return self

    def __str__(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        if self.layer is not None:
            kind = f" ({shown(self.layer_type)})" if self.layer_type else ""
            where += f"layer '{shown(self.layer)}'{kind}: "
        text = one_line(where + self.msg)
        if self.hint:
            text += f"\n  hint: {one_line(self.hint)}"
        return text


def one_line(text: str) -> str:
    """`text` with the characters that would break its line or the terminal escaped (\\n, \\x1b, \\u202e,
    a lone surrogate): a message quotes what the user wrote, which may hold any code point."""
    if text.isprintable():
        return text
    return "".join(ch if ch == " " or unicodedata.category(ch)[0] not in "CZ" else ascii(ch)[1:-1] for ch in text)


class SpecSyntaxError(NetspecError):
    """The file is not valid prototxt or YAML (unbalanced braces, bad indentation, a stray token)."""


class SpecFieldError(NetspecError):
    """A field the schema does not have, or a value of the wrong kind for its field."""


class UnknownLayerTypeError(NetspecError):
    """A layer `type` that netspec does not know."""


class ParamError(NetspecError):
    """A layer's parameters are individually well-formed but break one of its rules."""


class GraphError(NetspecError):
    """The layers do not connect: an unknown bottom, a top produced twice, a wrong number of blobs."""


class ShapeError(NetspecError):
    """A layer cannot accept the shapes of its bottoms (or, as a compiled net runs, the tensors fed to it)."""


class ResourceError(NetspecError):
    """A net too big to allocate within the stated limits (checked before anything is allocated)."""


class DataError(NetspecError):
    """A data source (file, dataset, array) is missing, unreadable or of the wrong shape."""


class SolverError(NetspecError):
    """Solver settings that cannot be honoured."""


class RankStopped(NetspecError):
    """Distributed training: this rank stops because of a failure that another rank reports."""


class WeightsError(NetspecError):
    """A weights file or snapshot that is corrupt or does not match the net."""


class ExportError(NetspecError):
    """An export whose result fails its checks."""


class SweepError(NetspecError):
    """A sweep whose settings or ranges cannot be searched, or that cannot go on (Optuna missing, a
    finished sweep's folder reused)."""


def did_you_mean(word: str, choices: Iterable[str], what: str = "") -> str | None:
    """A hint naming the closest of `choices` to a misspelt `word`, or None. Case is ignored (a user who
    writes `convolution` means Convolution, not Deconvolution), and an exact match but for case wins."""
    by_lower: dict[str, str] = {}
    for c in choices:
        by_lower.setdefault(c.lower(), c)
    if word.lower() in by_lower:
        close = [by_lower[word.lower()]]
    else:
        close = [by_lower[c] for c in difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)]
    if not close:
        return None
    return f"did you mean {what}'{close[0]}'?" if what else f"did you mean '{close[0]}'?"


def shown(text: str) -> str:
    """A value from the user's input as a message quotes it: escaped and shortened, so that any value (a
    string with line breaks, an integer thousands of digits long) still gives one short line."""
    text = one_line(text)
    return text if len(text) <= 80 else f"{text[:40]}...{text[-10:]} ({len(text)} characters)"
