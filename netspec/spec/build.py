"""Turns a syntax tree (from prototxt or YAML) into a protobuf message, checking it against the schema.

This is the one place where unknown fields, wrong value kinds, out-of-range numbers and bad enum names
are reported, so both spec formats give the same messages. Every field's location is recorded in a
`SourceMap` so that later stages (graph, shapes) can point at the exact line of the field they reject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from netspec.errors import SourceLoc, SpecFieldError, did_you_mean, shown
from netspec.spec.numbers import int_kind, read_bool, read_enum, read_float, read_int
from netspec.spec.tree import Mapping, Node, Scalar, Sequence

Path = tuple[str | int, ...]

_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)


@dataclass
class SourceMap:
    """Where each field of a message was written: a path such as ("layer", 3, "pooling_param", "pad")
    maps to the location of its key."""

    file: str
    locs: dict[Path, SourceLoc] = field(default_factory=dict)

    def find(self, path: Path) -> SourceLoc:
        """The location of `path`, or of its nearest enclosing field that has one."""
        while path:
            if path in self.locs:
                return self.locs[path]
            path = path[:-1]
        return self.locs.get((), SourceLoc(self.file, 1))


@dataclass
class BuildOptions:
    """Format-specific leniency. In YAML, quoting is only YAML syntax, so `pool: "MAX"` is as good as
    `pool: MAX`; in prototxt, quotes mark strings, as protobuf's own parser requires."""

    quotes_mark_strings: bool


def build_message(tree: Mapping, msg: Message, smap: SourceMap, opts: BuildOptions, path: Path = ()) -> None:
    """Fills `msg` from `tree`, recording locations in `smap`; raises SpecFieldError on any mismatch."""
    smap.locs.setdefault(path, tree.loc)
    desc = msg.DESCRIPTOR
    seen: dict[str, SourceLoc] = {}
    for key, key_loc, value in tree.items:
        fd = desc.fields_by_name.get(key)
        if fd is None:
            raise SpecFieldError(
                f"unknown field '{shown(key)}' in {_what(desc)}", loc=key_loc, hint=_unknown_field_hint(key, desc, tree)
            )
        if not fd.is_repeated:
            if key in seen:
                raise SpecFieldError(
                    f"field '{key}' is given twice (first on line {seen[key].line}); it takes one value", loc=key_loc
                )
            seen[key] = key_loc
        fpath = (*path, key)
        if fd.is_repeated:
            container = getattr(msg, key)
            start = len(container)
            smap.locs.setdefault(fpath, key_loc)
            items = repeated_items(fd, value)
            for i, item in enumerate(items):
                ipath = (*fpath, start + i)
                smap.locs[ipath] = item.loc if isinstance(item, (Scalar, Mapping, Sequence)) else key_loc
                if fd.type != FieldDescriptor.TYPE_MESSAGE:
                    container.append(scalar_value(fd, item, opts))
                    continue
                try:
                    fill_message(container.add(), fd, item, smap, opts, ipath)
                except SpecFieldError as e:
                    if fd.message_type.name in _LAYERS and isinstance(item, Mapping):
                        e.at(layer=_tree_value(item, "name"), layer_type=_tree_value(item, "type"))
                    raise
        else:
            smap.locs[fpath] = key_loc
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                sub = getattr(msg, key)
                sub.SetInParent()
                fill_message(sub, fd, value, smap, opts, fpath)
            else:
                setattr(msg, key, scalar_value(fd, value, opts))
    if not path:
        _check_required(msg, smap)


_LAYERS = ("LayerParameter", "V1LayerParameter")


def _tree_value(tree: Mapping, key: str) -> str | None:
    """The text of a scalar field as written (a layer's name or type, for error messages)."""
    return next((v.text for k, _, v in tree.items if k == key and isinstance(v, Scalar)), None)


def _what(desc: Descriptor) -> str:
    return {"LayerParameter": "a layer", "NetParameter": "the net", "SolverParameter": "the solver"}.get(
        desc.name, desc.name
    )


def repeated_items(fd: FieldDescriptor, value: Node) -> list[Node]:
    """A repeated field accepts a list, or a single value standing for a list of one."""
    if isinstance(value, Sequence):
        if fd.message_type is not None and fd.message_type.name == "BlobShape" and _all_scalars(value):
            return [value]  # `shape: [1, 3, 32, 32]` is one shape, not four
        return list(value.items)
    if isinstance(value, Scalar) and value.text == "" and not value.quoted:
        return []  # YAML `top:` with nothing after it: an empty list
    if (
        isinstance(value, Mapping)
        and fd.message_type is not None
        and fd.message_type.name == "SweepRange"
        and all("." in key for key, _, _ in value.items)
    ):
        # `parameters: {solver.base_lr: {type: loguniform, ...}}`: keyed by dotted path, as people write sweeps
        return [_keyed(key, key_loc, item) for key, key_loc, item in value.items]
    return [value]


def _keyed(key: str, key_loc: SourceLoc, item: Node) -> Node:
    if not isinstance(item, Mapping):
        return item  # reported by fill_message as a value that is not a message
    return Mapping(item.loc, [("path", key_loc, Scalar(key, True, key_loc)), *item.items])


def _all_scalars(seq: Sequence) -> bool:
    return bool(seq.items) and all(isinstance(i, Scalar) for i in seq.items)


def fill_message(
    sub: Message, fd: FieldDescriptor, value: Node, smap: SourceMap, opts: BuildOptions, path: Path
) -> None:
    name = fd.message_type.name
    if isinstance(value, Mapping):
        build_message(value, sub, smap, opts, path)
    elif name == "BlobShape" and isinstance(value, Sequence) and (not value.items or _all_scalars(value)):
        smap.locs.setdefault(path, value.loc)
        dim = sub.DESCRIPTOR.fields_by_name["dim"]
        for i, item in enumerate(value.items):
            smap.locs[(*path, "dim", i)] = item.loc
            sub.dim.append(scalar_value(dim, item, opts))
    elif name == "FillerParameter" and isinstance(value, Scalar) and value.text:
        smap.locs.setdefault(path, value.loc)
        smap.locs[(*path, "type")] = value.loc
        sub.type = value.text  # `weight_filler: xavier` for `weight_filler { type: "xavier" }`
    elif isinstance(value, Scalar) and value.text == "" and not value.quoted:
        smap.locs.setdefault(path, value.loc)  # YAML `loss_param:` with nothing: present but empty
    else:
        got = "a list" if isinstance(value, Sequence) else f"'{shown(value.text)}'"
        raise SpecFieldError(f"field '{fd.name}' takes a {name} message ({{ ... }}), got {got}", loc=value.loc)


def scalar_value(fd: FieldDescriptor, node: Node, opts: BuildOptions) -> object:
    if not isinstance(node, Scalar):
        kind = "a list" if isinstance(node, Sequence) else "a message"
        raise SpecFieldError(f"field '{fd.name}' takes a single value, got {kind}", loc=node.loc)
    text = node.text
    if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        if opts.quotes_mark_strings and not node.quoted:
            raise SpecFieldError(
                f"field '{fd.name}' takes a string, got the bare word {shown(text)}",
                loc=node.loc,
                hint=f'strings need quotes: {fd.name}: "{shown(text)}"',
            )
        return text.encode("latin-1", "replace") if fd.type == FieldDescriptor.TYPE_BYTES else text
    if node.quoted and opts.quotes_mark_strings:
        raise SpecFieldError(
            f"field '{fd.name}' takes {_kind(fd)}, got the string \"{shown(text)}\"",
            loc=node.loc,
            hint="remove the quotes",
        )
    if text == "":
        raise SpecFieldError(f"field '{fd.name}' has no value; it takes {_kind(fd)}", loc=node.loc)
    yaml = not opts.quotes_mark_strings
    try:
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return read_bool(fd, text, yaml)
        if fd.type == FieldDescriptor.TYPE_ENUM:
            return read_enum(fd, text, yaml)
        if fd.type in _FLOATS:
            return read_float(fd, text, yaml)
        return read_int(fd, text, yaml)
    except SpecFieldError as e:
        raise e.at(node.loc) from None


def _kind(fd: FieldDescriptor) -> str:
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return "true or false"
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return "one of " + ", ".join(v.name for v in fd.enum_type.values)
    if fd.type in _FLOATS:
        return "a number"
    return int_kind(fd)


def _unknown_field_hint(key: str, desc: Descriptor, tree: Mapping) -> str | None:
    hint = did_you_mean(key, desc.fields_by_name)
    if hint or desc.name != "LayerParameter":
        return hint
    # A layer parameter written directly in the layer: name the *_param block it belongs in.
    owners = [
        f.name
        for f in desc.fields
        if f.message_type is not None and f.name.endswith("_param") and key in f.message_type.fields_by_name
    ]
    if not owners:
        return None
    layer_type = _tree_value(tree, "type") or ""
    squashed = layer_type.lower().replace("_", "")
    best = next((o for o in owners if o[: -len("_param")].replace("_", "") == squashed), None)
    if best is None and len(owners) == 1:
        best = owners[0]
    if best is None:
        return f"'{key}' belongs inside one of: " + ", ".join(owners)
    return f"'{key}' belongs inside {best} {{ ... }}"


def _check_required(msg: Message, smap: SourceMap) -> None:
    missing = msg.FindInitializationErrors()
    if not missing:
        return
    first = missing[0]  # e.g. "layer[3].clip_param.max"
    parts: list[str | int] = []
    for piece in first.split("."):
        m = re.match(r"^(\w+)(?:\[(\d+)\])?$", piece)
        if m is None:
            break
        parts.append(m.group(1))
        if m.group(2) is not None:
            parts.append(int(m.group(2)))
    owner = ".".join(str(p) for p in parts[-2:-1]) or "the spec"
    error = SpecFieldError(f"required field '{parts[-1]}' of {owner} is missing", loc=smap.find(tuple(parts)))
    if len(parts) > 2 and parts[0] in ("layer", "layers") and isinstance(parts[1], int):
        layer = getattr(msg, parts[0])[parts[1]]
        error.at(layer=layer.name or None, layer_type=str(layer.type) if parts[0] == "layer" else None)
    raise error
