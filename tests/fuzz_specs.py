"""A spec fuzzer: mutates the specs in `models/` and `tests/data` and runs them through the CLI in-process.

A case is made from a seeded `random.Random`, so case N of seed S is the same spec on every machine and
in every process (the pytest test and `tools/fuzz.py` share this module). The mutations know the schema:
a field's new value is drawn for its descriptor's type (integers in every spelling protobuf's text format
has, floats that overflow, enum names and numbers, strings with odd code points), tree edits move,
duplicate and delete fields and layers, rename blobs and swap layer types for other registered types,
text edits flip bytes, truncate and insert, and some cases are random stacks of registered layer types
on random shapes. Running a case asserts what the CLI promises: the spec is accepted, or refused with one
message line (and an optional hint line) and exit status 1 - never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import string
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from netspec._proto import netspec_pb2 as pb
from netspec.cli import main
from netspec.errors import NetspecError
from netspec.layers import all_types
from netspec.spec import tree as st
from netspec.spec.load import is_solver
from netspec.spec.prototxt import parse_prototxt
from netspec.spec.yamltree import parse_yaml

ROOT = Path(__file__).resolve().parent.parent
SEED_DIRS = (ROOT / "models", ROOT / "tests" / "data")
SUFFIXES = (".prototxt", ".yaml")
PACKAGE_DIR = str(ROOT / "netspec") + os.sep


# ----------------------------------------------------------------------------------------------- the tree


@dataclass
class Lit:
    """A scalar exactly as it will be written: `text` goes between the quotes verbatim when `quoted`."""

    text: str
    quoted: bool = False


@dataclass
class Seq:
    items: list[Any] = field(default_factory=list)


@dataclass
class Map:
    """A message body; a key repeats for a repeated field, as in prototxt."""

    items: list[list[Any]] = field(default_factory=list)

    def get(self, key: str) -> Any:
        return next((v for k, v in self.items if k == key), None)


Node = Lit | Seq | Map


def _escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return "".join(out)


def from_netspec(node: st.Node) -> Node:
    """Our tree from netspec's (which holds unescaped strings: they are escaped again here)."""
    if isinstance(node, st.Scalar):
        return Lit(_escape(node.text) if node.quoted else node.text, node.quoted)
    if isinstance(node, st.Sequence):
        return Seq([from_netspec(n) for n in node.items])
    return Map([[k, from_netspec(v)] for k, _, v in node.items])


def quote_strings(root: Map, desc: Descriptor) -> None:
    """Quotes the bare words of string fields (YAML's `name: data`), so the tree is valid prototxt too."""
    for m, d in walk(root, desc):
        for item in m.items:
            fd = d.fields_by_name.get(item[0]) if d is not None else None
            if fd is None or fd.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                continue
            for lit in item[1].items if isinstance(item[1], Seq) else [item[1]]:
                if isinstance(lit, Lit) and not lit.quoted:
                    lit.text, lit.quoted = _escape(lit.text), True


def to_prototxt(root: Map) -> str:
    lines: list[str] = []

    def value(v: Node) -> str:
        if isinstance(v, Lit):
            return f'"{v.text}"' if v.quoted else v.text
        if isinstance(v, Seq):
            return "[" + ", ".join("{ " + inline(i) + " }" if isinstance(i, Map) else value(i) for i in v.items) + "]"
        raise TypeError(v)

    def inline(m: Map) -> str:
        return " ".join(f"{k} {{ {inline(v)} }}" if isinstance(v, Map) else f"{k}: {value(v)}" for k, v in m.items)

    def body(m: Map, indent: str) -> None:
        for k, v in m.items:
            if isinstance(v, Map):
                lines.append(f"{indent}{k} {{")
                body(v, indent + "  ")
                lines.append(f"{indent}}}")
            else:
                lines.append(f"{indent}{k}: {value(v)}")

    body(root, "")
    return "\n".join(lines) + "\n"


def to_yaml(root: Map) -> str:
    """Block YAML; a key repeated in the tree becomes one key with a list, as the YAML reader wants."""

    def scalar(v: Lit) -> str:
        return f'"{v.text}"' if v.quoted else (v.text or "''")

    def mapping(m: Map, indent: str) -> list[str]:
        grouped: dict[str, list[Node]] = {}
        for k, v in m.items:
            grouped.setdefault(k, []).append(v)
        lines = []
        for k, vs in grouped.items():
            v = vs[0] if len(vs) == 1 else Seq(vs)
            if isinstance(v, Lit):
                lines.append(f"{indent}{k}: {scalar(v)}")
            elif not v.items:
                lines.append(f"{indent}{k}: " + ("{}" if isinstance(v, Map) else "[]"))
            else:
                lines.append(f"{indent}{k}:")
                lines += mapping(v, indent + "  ") if isinstance(v, Map) else sequence(v, indent + "  ")
        return lines

    def sequence(s: Seq, indent: str) -> list[str]:
        lines = []
        for item in s.items:
            if isinstance(item, Lit):
                lines.append(f"{indent}- {scalar(item)}")
            elif not item.items:
                lines.append(f"{indent}- " + ("{}" if isinstance(item, Map) else "[]"))
            elif isinstance(item, Map):
                sub = mapping(item, indent + "  ")
                lines += [f"{indent}- {sub[0].lstrip()}", *sub[1:]]
            else:
                lines += [f"{indent}-", *sequence(item, indent + "  ")]
        return lines

    return "\n".join(mapping(root, "")) + "\n"


# ------------------------------------------------------------------------------------------------ seeds


@dataclass
class Seed:
    name: str
    text: str
    tree: Map | None
    desc: Descriptor


def load_seeds() -> list[Seed]:
    """Every prototxt and YAML file under the seed folders; files netspec cannot parse stay text-only."""
    seeds = []
    for folder in SEED_DIRS:
        for path in sorted(folder.rglob("*")):
            if path.suffix not in SUFFIXES or "fuzz" in path.relative_to(ROOT).parts:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            desc = pb.NetParameter.DESCRIPTOR
            try:
                parsed = parse_prototxt(text, path.name) if path.suffix == ".prototxt" else parse_yaml(text, path.name)
                tree: Map | None = from_netspec(parsed)  # type: ignore[assignment]
            except NetspecError:
                tree = None
            name = str(path.relative_to(ROOT))
            if tree is not None and path.suffix == ".prototxt" and is_solver(parsed):
                seeds.append(Seed(name, text, tree, pb.SolverParameter.DESCRIPTOR))
                tree = tree.get("net_param")  # and the net inside it, as a net
                if not isinstance(tree, Map):
                    continue
                name += ":net_param"
            if tree is not None:
                quote_strings(tree, desc)
            seeds.append(Seed(name, text, tree, desc))
    return seeds


# ----------------------------------------------------------------------------------------------- values

_HUGE_INTS = [
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967296",
    "9223372036854775808",
    "18446744073709551616",
    "1" + "0" * 40,
    "1" + "0" * 400,
    "9" * 5000,
]
_INT_SPELLINGS = [
    "0",
    "-0",
    "00",
    "-1",
    "08",
    "010",
    "0x10",
    "0X1f",
    "0x",
    "1.5",
    "1e3",
    "+5",
    "0b1",
    "1_000",
    "007",
    "-010",
    "0xFFFFFFFF",
    "0x7fffffffffffffff",
    "true",
    "1f",
]
_FLOAT_SPELLINGS = [
    "0",
    "-0.0",
    "1e-8",
    "1e30",
    "1e38",
    "3.5e38",
    "1e309",
    "-1e309",
    "1e-400",
    "nan",
    "-nan",
    "NaN",
    "inf",
    "-inf",
    "infinity",
    "-Infinity",
    ".inf",
    "1" + "0" * 309,
    "1.5f",
    ".5",
    "5.",
    "1e",
    "0x10",
    "010",
    "0x1p3",
    "1.0e+5",
    "9" * 400 + ".0",
]
_ODD_STRINGS = [
    "",
    " ",
    "\u00e9t\u00e9",
    "\U0001f4a5",
    "\u202eabc",
    "\ufeffx",
    "a\u0301",
    "\u0000",
    "a b",
    "../x",
    "/dev/zero",
    "/nonexistent/x",
    ".",
    "~",
    "a" * 5000,
    "\u2028",
    "\u00a0",
    "x\ty",
    "CON",
    "%s%n",
    "{}",
    "'",
    "\\",
    '"',
]
_RAW_ESCAPES = [
    "\\ud800",
    "\\udfff",
    "\\xZZ",
    "\\x",
    "\\777",
    "\\400",
    "\\u12",
    "\\",
    "\\q",
    "\\U0010ffff",
    "\\x00",
    "\\0",
]
# Data paths: devices, folders, escapes from the run's folder (never /dev/stdin: a worker reads its cases there).
_PATH_FIELDS = {"source", "mean_file", "file_name", "root_folder", "snapshot_prefix"}
_PATHS = [
    "/dev/zero",
    "/dev/null",
    "/dev/urandom",
    "../outside.h5",
    "out/../../x.h5",
    "/tmp",
    ".",
    "",
    "missing.txt",
    "/etc/passwd",
    "/nonexistent/dir/x.h5",
    "a\nb",
    "/proc/self/status",
]
_BLOBS = ["data", "label", "conv1", "ip1", "loss", "x", "", "data2", "top", "a.b", "1"]


class Values:
    """Values for a field, drawn by its descriptor: mostly plausible, sometimes hostile."""

    def __init__(self, rng: random.Random, hostile: bool) -> None:
        self.rng = rng
        self.hostile = hostile
        self.types = sorted(all_types())

    def small_int(self) -> str:
        return str(self.rng.choice([0, 1, 1, 2, 2, 3, 3, 4, 5, 8, 16, 32]))

    def int_(self) -> str:
        r = self.rng.random() if self.hostile else self.rng.random() * 0.55
        if r < 0.45:
            return self.small_int()
        if r < 0.7:
            return self.rng.choice(_INT_SPELLINGS)
        if r < 0.9:
            return self.rng.choice(_HUGE_INTS)
        return str(self.rng.randint(-(2**40), 2**40))

    def float_(self) -> str:
        r = self.rng.random() if self.hostile else 0
        if r < 0.4:
            return self.rng.choice(["0", "1", "0.5", "2", "-1", "0.001", "10", "1e-5", "0.9"])
        return self.rng.choice(_FLOAT_SPELLINGS)

    def string(self, name: str) -> Lit:
        r = self.rng.random() if self.hostile else self.rng.random() * 0.4
        if name == "type":
            return Lit(self.rng.choice(self.types) if r < 0.9 else self.rng.choice(["", "conv", "Python", "X"]), True)
        if name in ("bottom", "top", "name") and r < 0.7:
            return Lit(self.rng.choice(_BLOBS), True)
        if name in _PATH_FIELDS and r < 0.6:
            return Lit(self.rng.choice(_PATHS), True)
        if r < 0.5:
            return Lit(_escape(self.rng.choice(_ODD_STRINGS)), True)
        if r < 0.7:
            return Lit(self.rng.choice(_RAW_ESCAPES), True)
        if r < 0.85:
            return Lit(self.rng.choice(["abc", "x", "Data", "LMDB"]), False)
        return Lit(_escape("".join(self.rng.choice(string.printable) for _ in range(self.rng.randint(0, 12)))), True)

    def enum(self, fd: FieldDescriptor) -> str:
        names = [v.name for v in fd.enum_type.values]
        r = self.rng.random() if self.hostile else 0
        if r < 0.6:
            return self.rng.choice(names)
        if r < 0.75:
            return str(self.rng.choice([0, 1, 2, 3, 99, -1, 2**31]))
        if r < 0.85:
            return self.rng.choice(names).lower()
        return self.rng.choice(["FOO", "MAX", "TRAIN", "LMDB", "CAFFE", "01", "0x1", "true"])

    def scalar(self, fd: FieldDescriptor) -> Lit:
        t = fd.type
        if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            return Lit(self.float_())
        if t == FieldDescriptor.TYPE_BOOL:
            return Lit(self.rng.choice(["true", "false", "True", "1", "0", "2", "yes", "t"]))
        if t == FieldDescriptor.TYPE_ENUM:
            return Lit(self.enum(fd))
        if t in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            return self.string(fd.name)
        return Lit(self.int_())

    def value(self, fd: FieldDescriptor, depth: int) -> Node:
        """A value for `fd`: a message body for message fields (a few random fields), else a scalar, and
        for repeated scalars sometimes a bracketed list."""
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            return self.message(fd.message_type, depth + 1)
        if fd.is_repeated and self.rng.random() < 0.2:
            return Seq([self.scalar(fd) for _ in range(self.rng.randint(0, 4))])
        return self.scalar(fd)

    def message(self, desc: Descriptor, depth: int, fields: int | None = None) -> Map:
        out = Map()
        if depth > 4 or not desc.fields:
            return out
        for _ in range(self.rng.randint(0, 3) if fields is None else fields):
            fd = self.rng.choice(desc.fields)
            out.items.append([fd.name, self.value(fd, depth)])
        return out

    def wrong_kind(self) -> Node:
        return self.rng.choice(
            [
                Lit("1"),
                Lit("x", True),
                Lit("MAX"),
                Map(),
                Seq(),
                Seq([Lit("1"), Lit("2")]),
                Map([["a", Lit("1")]]),
                Lit("nan"),
                Lit("{}", True),
            ]
        )


# -------------------------------------------------------------------------------------------- tree edits


@dataclass
class Site:
    """A field of the tree: `parent.items[index]`, its descriptor (None for a field the schema lacks)."""

    parent: Map
    index: int
    desc: Descriptor | None
    fd: FieldDescriptor | None


def walk(m: Map, desc: Descriptor | None) -> Iterator[tuple[Map, Descriptor | None]]:
    """Every message body in the tree with its descriptor (when the schema tells it)."""
    yield m, desc
    for k, v in m.items:
        fd = desc.fields_by_name.get(k) if desc is not None else None
        sub = fd.message_type if fd is not None and fd.type == FieldDescriptor.TYPE_MESSAGE else None
        for item in v.items if isinstance(v, Seq) else [v]:
            if isinstance(item, Map):
                yield from walk(item, sub)


def sites(root: Map, desc: Descriptor) -> list[Site]:
    return [
        Site(m, i, d, d.fields_by_name.get(k) if d is not None else None)
        for m, d in walk(root, desc)
        for i, (k, _) in enumerate(m.items)
    ]


def layers_of(root: Map) -> list[Map]:
    out = []
    for k, v in root.items:
        if k in ("layer", "layers"):
            out += [i for i in (v.items if isinstance(v, Seq) else [v]) if isinstance(i, Map)]
    return out


def _blob_names(root: Map) -> list[str]:
    names = set()
    for layer in layers_of(root):
        for k, v in layer.items:
            if k in ("top", "bottom"):
                names.update(i.text for i in (v.items if isinstance(v, Seq) else [v]) if isinstance(i, Lit))
    return sorted(names) or ["data"]


class Mutator:
    def __init__(self, rng: random.Random, hostile: bool) -> None:
        self.rng = rng
        self.values = Values(rng, hostile)
        self.types = all_types()
        self.hostile = hostile

    def mutate(self, root: Map, desc: Descriptor) -> str:
        """Applies one tree edit in place; says which. Mild mutators keep to edits that often leave a
        spec valid, so that shape rules and lowering see many specs too."""
        edits = [
            self.set_value,
            self.set_value,
            self.set_value,
            self.add_field,
            self.add_field,
            self.delete,
            self.duplicate,
            self.rename_blob,
            self.swap_type,
            self.swap_type,
        ]
        if self.hostile:
            edits += [self.move, self.wrong_kind, self.delete]
        return self.rng.choice(edits)(root, desc)

    def _site(self, root: Map, desc: Descriptor, scalar: bool = False) -> Site | None:
        found = [s for s in sites(root, desc) if not scalar or isinstance(s.parent.items[s.index][1], Lit)]
        return self.rng.choice(found) if found else None

    def set_value(self, root: Map, desc: Descriptor) -> str:
        s = self._site(root, desc, scalar=True)
        if s is None or s.fd is None:
            return self.add_field(root, desc)
        s.parent.items[s.index][1] = self.values.value(s.fd, 3)
        return f"set {s.fd.name}"

    def wrong_kind(self, root: Map, desc: Descriptor) -> str:
        s = self._site(root, desc)
        if s is None:
            return "nothing"
        s.parent.items[s.index][1] = self.values.wrong_kind()
        return f"wrong kind for {s.parent.items[s.index][0]}"

    def add_field(self, root: Map, desc: Descriptor) -> str:
        bodies = [(m, d) for m, d in walk(root, desc) if d is not None and d.fields]
        m, d = self.rng.choice(bodies)
        fields = d.fields if self.hostile else [f for f in d.fields if f.is_repeated or m.get(f.name) is None]
        if not fields:
            return "nothing"
        fd = self.rng.choice(fields)
        m.items.insert(self.rng.randint(0, len(m.items)), [fd.name, self.values.value(fd, 2)])
        return f"add {fd.name}"

    def delete(self, root: Map, desc: Descriptor) -> str:
        s = self._site(root, desc)
        if s is None:
            return "nothing"
        key = s.parent.items.pop(s.index)[0]
        return f"delete {key}"

    def duplicate(self, root: Map, desc: Descriptor) -> str:
        s = self._site(root, desc)
        if s is None:
            return "nothing"
        k, v = s.parent.items[s.index]
        if not self.hostile and s.fd is not None and not s.fd.is_repeated:
            return "nothing"
        s.parent.items.insert(self.rng.randint(0, len(s.parent.items)), [k, _copy(v)])
        return f"duplicate {k}"

    def move(self, root: Map, desc: Descriptor) -> str:
        s = self._site(root, desc)
        if s is None:
            return "nothing"
        item = s.parent.items.pop(s.index)
        target, _ = self.rng.choice(list(walk(root, desc)))
        target.items.insert(self.rng.randint(0, len(target.items)), item)
        return f"move {item[0]}"

    def rename_blob(self, root: Map, desc: Descriptor) -> str:
        refs = [
            (layer, i)
            for layer in layers_of(root)
            for i, (k, v) in enumerate(layer.items)
            if k in ("top", "bottom") and isinstance(v, Lit)
        ]
        if not refs:
            return self.swap_type(root, desc)
        layer, i = self.rng.choice(refs)
        names = _blob_names(root)
        layer.items[i][1] = Lit(self.rng.choice([*names, "renamed", ""]), True)
        return f"rename {layer.items[i][0]}"

    def swap_type(self, root: Map, desc: Descriptor) -> str:
        layers = layers_of(root)
        if not layers:
            root.items.append(["layer", self.random_layer(["data"], 0)])
            return "add a layer"
        layer = self.rng.choice(layers)
        name = self.rng.choice(sorted(self.types))
        for item in layer.items:
            if item[0] == "type":
                item[1] = Lit(name, True)
                break
        else:
            layer.items.append(["type", Lit(name, True)])
        param = self.types[name].param_field
        if param and self.rng.random() < 0.6:
            fd = pb.LayerParameter.DESCRIPTOR.fields_by_name[param]
            layer.items.append([param, self.values.message(fd.message_type, 1, self.rng.randint(1, 3))])
        return f"type -> {name}"

    def random_layer(self, blobs: list[str], n: int) -> Map:
        """A layer of a random registered type reading from `blobs`, with random parameters."""
        name = self.rng.choice(sorted(self.types))
        d = self.types[name]
        layer = Map([["name", Lit(f"l{n}", True)], ["type", Lit(name, True)]])
        bottoms = d.bottoms.min + (self.rng.random() < 0.2)
        for _ in range(bottoms):
            layer.items.append(["bottom", Lit(self.rng.choice(blobs[-3:]), True)])
        tops = max(d.tops.min, 1 if d.tops.max != 0 else 0) + (self.rng.random() < 0.1)
        for t in range(tops):
            layer.items.append(["top", Lit(f"l{n}" if t == 0 else f"l{n}_{t}", True)])
        if d.param_field:
            fd = pb.LayerParameter.DESCRIPTOR.fields_by_name[d.param_field]
            layer.items.append([d.param_field, self.plausible(fd.message_type)])
        return layer

    def plausible(self, desc: Descriptor) -> Map:
        """Parameters that are mostly small and valid, so that stacks get past the parser."""
        out = Map()
        for fd in self.rng.sample(list(desc.fields), min(len(desc.fields), self.rng.randint(0, 3))):
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                out.items.append([fd.name, self.values.message(fd.message_type, 3, 1)])
            elif fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                continue
            elif fd.type == FieldDescriptor.TYPE_ENUM:
                out.items.append([fd.name, Lit(self.rng.choice(fd.enum_type.values).name)])
            elif fd.type == FieldDescriptor.TYPE_BOOL:
                out.items.append([fd.name, Lit(self.rng.choice(["true", "false"]))])
            elif fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
                edge = ["1e30", "-1e30", "nan", "inf", "1e-30"] if self.rng.random() < 0.1 else []
                out.items.append([fd.name, Lit(self.rng.choice(["0", "0.5", "1", "2", "-1", "1e-3", *edge]))])
            else:
                edge = ["100000", "2147483647", "-2", "65536"] if self.rng.random() < 0.1 else []
                out.items.append([fd.name, Lit(self.rng.choice(["0", "1", "1", "2", "3", "-1", "4", *edge]))])
        return out

    def stack(self) -> Map:
        """An Input of a random shape and a chain of random layers."""
        dims = [self.rng.choice([1, 1, 2, 3, 4, 5, 8]) for _ in range(self.rng.choice([0, 1, 2, 2, 3, 4, 4, 4]))]
        if dims and self.rng.random() < 0.25:
            dims[self.rng.randrange(len(dims))] = self.rng.choice([0, 0, 0, 100000, 2**31 - 1, 10**12])
        shape = Map([["dim", Lit(str(d))] for d in dims])
        root = Map(
            [
                ["name", Lit("stack", True)],
                [
                    "layer",
                    Map(
                        [
                            ["name", Lit("data", True)],
                            ["type", Lit("Input", True)],
                            ["top", Lit("data", True)],
                            ["top", Lit("label", True)],
                            [
                                "input_param",
                                Map([["shape", shape], ["shape", Map([["dim", Lit(str(dims[0] if dims else 1))]])]]),
                            ],
                        ]
                    ),
                ],
            ]
        )
        blobs = ["data", "label"]
        for n in range(self.rng.randint(1, 5)):
            layer = self.random_layer(blobs, n)
            root.items.append(["layer", layer])
            blobs += [v.text for k, v in layer.items if k == "top"]
        return root


def _copy(v: Node) -> Node:
    if isinstance(v, Lit):
        return Lit(v.text, v.quoted)
    if isinstance(v, Seq):
        return Seq([_copy(i) for i in v.items])
    return Map([[k, _copy(i)] for k, i in v.items])


# -------------------------------------------------------------------------------------------- text edits

_SNIPPETS = [
    "{",
    "}",
    "[",
    "]",
    ":",
    '"',
    "'",
    "\\",
    "#",
    ",",
    ";",
    "<",
    ">",
    "\t",
    "\x00",
    "\ufeff",
    "\ud800",
    "&a ",
    "*a ",
    "!!python/object/apply:os.system ['true'] ",
    "<<: *a\n",
    "- ",
    "? ",
    "|\n",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    " layer { ",
    "layer:\n  - {",
    "a {" * 600,
    "[" * 600,
    "{" * 600,
    "- " * 600,
    "x: " + "[" * 300,
    "\u202e",
    "\U0001f4a5",
    "1e309",
    "08",
    "nan",
    "\\xZZ",
    "\r",
    "\x1b[31m",
]


def text_edit(text: str, rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["flip", "truncate", "insert", "insert", "delete", "dupline"])
    if not text:
        kind = "insert"
    pos = rng.randint(0, len(text))
    if kind == "flip":
        data = bytearray(text.encode("utf-8", "surrogatepass"))
        for _ in range(rng.randint(1, 4)):
            if data:
                i = rng.randrange(len(data))
                data[i] = data[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.7 else rng.randrange(256)
        return data.decode("utf-8", "surrogateescape"), "flip bytes"
    if kind == "truncate":
        return text[:pos], "truncate"
    if kind == "insert":
        return text[:pos] + rng.choice(_SNIPPETS) + text[pos:], "insert"
    if kind == "delete":
        return text[:pos] + text[pos + rng.randint(1, 40) :], "delete span"
    lines = text.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    return "".join(lines[: i + 1] + lines[i:]), "duplicate a line"


# ------------------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    name: str  # file name to write, whose suffix sets the format
    text: str
    how: str

    def data(self) -> bytes:
        try:
            return self.text.encode("utf-8", "surrogateescape")  # bytes that flips made invalid
        except UnicodeEncodeError:
            return self.text.encode("utf-8", "surrogatepass")  # a lone surrogate written as such


class Generator:
    """Case `i` of seed `seed`, the same in every process."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.seeds = load_seeds()
        self.net_seeds = [s for s in self.seeds if s.tree is not None and s.desc is pb.NetParameter.DESCRIPTOR]

    def case(self, i: int) -> Case:
        rng = random.Random(f"{self.seed}:{i}")
        hostile = rng.random() < 0.5
        m = Mutator(rng, hostile)
        fmt = rng.choice(SUFFIXES)
        r = rng.random()
        if r < 0.3:
            root, desc, how = m.stack(), pb.NetParameter.DESCRIPTOR, ["random stack"]
        else:
            seed = rng.choice(self.seeds if hostile else self.net_seeds)
            how = [seed.name]
            if seed.tree is None or (hostile and r > 0.9):
                return self._text_only(seed, rng, how)
            root, desc = _copy(seed.tree), seed.desc
            assert isinstance(root, Map)
            for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5] if hostile else [1, 1, 2])):
                how.append(m.mutate(root, desc))
        text = to_yaml(root) if fmt == ".yaml" else to_prototxt(root)
        if hostile and rng.random() < 0.3:
            text, edit = text_edit(text, rng)
            how.append(edit)
        return Case(f"case{i}{fmt}", text, "; ".join(how))

    def _text_only(self, seed: Seed, rng: random.Random, how: list[str]) -> Case:
        text = seed.text
        for _ in range(rng.randint(1, 3)):
            text, edit = text_edit(text, rng)
            how.append(edit)
        path = Path(seed.name.removesuffix(":net_param"))
        return Case(f"case{path.stem}{path.suffix}", text, "; ".join(how))


# ------------------------------------------------------------------------------------------------ running


class CaseTimeout(BaseException):
    """A case ran past its time limit (raised by SIGALRM inside whatever it was doing)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"no answer after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Defect:
    """A broken promise: an exception that escaped (signature: its type and innermost netspec frame), or
    output that is not one message line."""

    signature: str
    where: str  # file:line of the innermost netspec frame
    command: str
    detail: str  # the traceback, or the output


def _innermost(tb: Any) -> tuple[str, str]:
    """The innermost netspec frame: `file:qualified function` (stable across edits, unlike line numbers,
    and telling one layer's `infer` from another's), and `file:line`."""
    found = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(PACKAGE_DIR):
            found = tb
        tb = tb.tb_next
    if found is None:
        return "(outside netspec)", "?"
    code = found.tb_frame.f_code
    rel = Path(os.path.relpath(code.co_filename, ROOT)).as_posix()
    return f"{rel}:{code.co_qualname}", f"{rel}:{found.tb_lineno}"


def defect_of(exc: BaseException) -> tuple[str, str]:
    frame, where = _innermost(exc.__traceback__)
    kind = "Hang" if isinstance(exc, CaseTimeout) else type(exc).__name__
    if isinstance(exc, RecursionError):  # which frame of the cycle overflows depends on the caller's depth
        frame = frame.split(":")[0]
    return f"{kind} in {frame}", where


def invoke(args: list[str], timeout: float) -> tuple[int, str, Defect | None]:
    """One CLI command in-process: its exit status, its standard output, and the defect it shows, if any."""
    command = " ".join(["netspec"] + [Path(a).name if os.sep in a else a for a in args])
    try:
        with time_limit(timeout):
            result = CliRunner().invoke(main, args, catch_exceptions=True)
    except CaseTimeout as e:  # raised outside the command's own frames (in click's teardown)
        sig, where = defect_of(e)
        return 1, "", Defect(sig, where, command, "".join(traceback.format_exception(e)))
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        sig, where = defect_of(exc)
        return 1, result.stdout, Defect(sig, where, command, "".join(traceback.format_exception(exc)))
    if result.exit_code == 0:
        return 0, result.stdout, None
    lines = result.stderr.rstrip("\n").split("\n")
    if (
        result.exit_code == 1
        and lines[0].strip()
        and (len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  hint: ")))
    ):
        return 1, result.stdout, None
    return (
        result.exit_code,
        result.stdout,
        Defect(f"{args[0]}: exit {result.exit_code} with {len(lines)} lines", "?", command, result.stderr),
    )


@dataclass
class Outcome:
    accepted: bool
    defects: list[Defect]
    timed: bool = False
    trained: bool = False


def _tiny(summary_json: str) -> bool:
    """Whether a checked net is small enough to time in a test: every blob small, few parameters."""
    report = json.loads(summary_json)
    sizes = [math.prod(shape) for shape in report["blobs"].values()]
    return max(sizes, default=0) <= 50_000 and report["total_params"] <= 200_000


def run_case(
    case: Case,
    workdir: Path,
    timeout: float = 10.0,
    time_fraction: float = 0.0,
    rng: random.Random | None = None,
    train_fraction: float = 0.0,
) -> Outcome:
    """`check` and `convert` on one case, and `draw` (SVG) when `check` accepts it, and for `time_fraction`
    of the small accepted nets, `time` for one iteration; a spec that `check` accepts must convert to
    one that is accepted too. For `train_fraction` of the accepted specs with a solver section, `train`
    for one iteration (slow: for long runs, not the test)."""
    with contextlib.chdir(workdir):  # whatever a case writes by a relative path lands there
        return _run_case(case, workdir, timeout, time_fraction, rng, train_fraction)


def _run_case(
    case: Case, workdir: Path, timeout: float, time_fraction: float, rng: random.Random | None, train_fraction: float
) -> Outcome:
    spec = workdir / case.name
    spec.write_bytes(case.data())
    defects = []
    code, summary, d = invoke(["check", str(spec), "--json"], timeout)
    defects += [d] if d else []
    accepted = code == 0
    other = ".yaml" if spec.suffix == ".prototxt" else ".prototxt"
    target = workdir / f"converted{other}"
    code_c, _, d = invoke(["convert", str(spec), str(target)], timeout)
    defects += [d] if d else []
    if code_c == 0 and accepted:
        code_2, _, d = invoke(["check", str(target)], timeout)
        defects += [d] if d else []
        if code_2 != 0 and d is None:
            defects.append(
                Defect(
                    "convert: an accepted spec converts to a refused one",
                    "?",
                    "netspec convert + check",
                    target.read_text(errors="replace"),
                )
            )
    if accepted:
        _, _, d = invoke(["draw", str(spec), "-o", str(workdir / "net.svg")], timeout)
        defects += [d] if d else []
    timed = False
    if accepted and rng is not None and rng.random() < time_fraction and _tiny(summary):
        timed = True
        _, _, d = invoke(["time", str(spec), "--iterations", "1", "--device", "cpu"], timeout * 3)
        defects += [d] if d else []
    trained = accepted and rng is not None and rng.random() < train_fraction and "solver" in case.text
    if trained:
        _, _, d = invoke(
            [
                "train",
                str(spec),
                "--set",
                "solver.max_iter=1",
                "--set",
                "solver.max_epoch=0",
                "--out",
                str(workdir / "run"),
                "--device",
                "cpu",
                "--quiet",
            ],
            timeout * 6,
        )
        defects += [d] if d else []
        shutil.rmtree(workdir / "run", ignore_errors=True)
    return Outcome(accepted, defects, timed, trained)


@contextmanager
def memory_limit(megabytes: int) -> Iterator[None]:
    """Caps this process's address space at its present size plus `megabytes`, so that a spec that makes
    netspec allocate without bound gets a MemoryError instead of the machine's memory."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    statm = Path("/proc/self/statm")
    if not statm.exists():  # not Linux: no limit
        yield
        return
    pages = int(statm.read_text().split()[0])
    limit = pages * resource.getpagesize() + megabytes * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def reproduces(case: Case, defect: Defect, workdir: Path, timeout: float) -> bool:
    timed = 1.0 if defect.command.startswith("netspec time") else 0.0
    trained = 1.0 if defect.command.startswith("netspec train") else 0.0
    outcome = run_case(case, workdir, timeout, timed, random.Random(0), trained)
    return any(d.signature == defect.signature for d in outcome.defects)


def minimize(case: Case, defect: Defect, workdir: Path, timeout: float = 5.0, attempts: int = 400) -> Case:
    """The case with as many lines taken out as still show the defect: greedy delta debugging, good
    enough to make a repro readable."""
    lines = case.text.splitlines(keepends=True)
    chunk = max(1, len(lines) // 2)
    while chunk >= 1 and attempts > 0:
        i, changed = 0, False
        while i < len(lines) and attempts > 0:
            trial = lines[:i] + lines[i + chunk :]
            attempts -= 1
            if trial and reproduces(Case(case.name, "".join(trial), case.how), defect, workdir, timeout):
                lines, changed = trial, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return Case(case.name, "".join(lines), case.how)
