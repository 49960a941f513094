"""Reads spec files: a net (prototxt or YAML) or a Caffe solver (prototxt), into messages with locations."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from netspec._proto import netspec_pb2 as pb
from netspec.errors import DataError, SpecSyntaxError
from netspec.files import checked
from netspec.spec.build import BuildOptions, SourceMap, build_message
from netspec.spec.prototxt import parse_prototxt
from netspec.spec.tree import Mapping
from netspec.spec.yamltree import parse_yaml

PROTOTXT = "prototxt"
YAML = "yaml"
if TYPE_CHECKING:
    from netspec.data.datasets import Statistics

_SUFFIXES = {".prototxt": PROTOTXT, ".pbtxt": PROTOTXT, ".yaml": YAML, ".yml": YAML}


@dataclass
class SpecFile:
    """A spec as the user wrote it: the message, where each field was written, and the file's format."""

    path: str
    format: str
    message: Message
    smap: SourceMap
    # by data top: the preprocessing statistics a trained model stored (a snapshot's), which its data
    # layers use instead of computing them from their sources; empty for a spec alone
    stored: dict[str, Statistics] = field(default_factory=dict)

    @property
    def base_dir(self) -> str:
        return str(Path(self.path).parent)


def spec_format(path: str) -> str:
    """prototxt or yaml, from the file name."""
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise SpecSyntaxError(
            f"cannot tell the format of '{path}' from its name",
            hint="name spec files *.prototxt (or *.pbtxt) or *.yaml (or *.yml)",
        )
    return fmt


def read_text(path: str, what: str = "spec file") -> str:
    """A text file's contents, or a DataError saying why it cannot be read."""
    p = checked(path, what)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{what} '{path}' is not a text file (is it a binary .caffemodel?)") from None
    except OSError as e:
        raise DataError(f"cannot read {what} '{path}': {e.strerror}") from None


def parse_tree(text: str, path: str, fmt: str) -> Mapping:
    return parse_prototxt(text, path) if fmt == PROTOTXT else parse_yaml(text, path)


def parse_message(tree: Mapping, message: Message, path: str, fmt: str) -> SourceMap:
    smap = SourceMap(path)
    build_message(tree, message, smap, BuildOptions(quotes_mark_strings=fmt == PROTOTXT))
    return smap


def read_tree(path: str) -> tuple[str, Mapping]:
    """A spec file's format and syntax tree (a net or, in prototxt, a solver)."""
    fmt = spec_format(path)
    return fmt, parse_tree(read_text(path), path, fmt)


def parse_net(tree: Mapping, path: str, fmt: str) -> SpecFile:
    """A net spec from its syntax tree, as written: YAML's wiring defaults are netspec.netfile's to add."""
    net = pb.NetParameter()
    smap = parse_message(tree, net, path, fmt)
    return SpecFile(path, fmt, net, smap)


_SOLVER_ONLY = set(pb.SolverParameter.DESCRIPTOR.fields_by_name) - set(pb.NetParameter.DESCRIPTOR.fields_by_name)


def is_solver(tree: Mapping) -> bool:
    """Whether a prototxt holds a SolverParameter (base_lr, net, ...) rather than a NetParameter."""
    keys = {key for key, _, _ in tree.items}
    return bool(keys & _SOLVER_ONLY) and not keys & {"layer", "layers", "input"}
