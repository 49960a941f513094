"""Reads a YAML spec into the syntax tree shared with prototxt, keeping every node's line and column.

The file is only composed (parsed into nodes), never constructed into Python objects, so scalars keep
their exact text (`1e-4` stays a number, `yes` stays a word) and nothing in the file can name Python
code. Duplicate keys, which PyYAML would silently collapse, are errors here.
"""

from __future__ import annotations

import yaml

from netspec.errors import SourceLoc, SpecSyntaxError
from netspec.spec.tree import Mapping, Node, Scalar, Sequence

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _loc(file: str, mark: yaml.Mark | None) -> SourceLoc:
    if mark is None:
        return SourceLoc(file, 1)
    return SourceLoc(file, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, file: str) -> Mapping:
    """Parses a YAML document whose top level is a mapping (an empty file is an empty mapping)."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(str(x) for x in (e.context, e.problem) if x) or "invalid YAML"
        raise SpecSyntaxError(f"YAML syntax: {msg}", loc=_loc(file, mark),
                              hint="YAML nests by indentation: compare this line's with the lines above") from None
    except yaml.YAMLError as e:
        raise SpecSyntaxError(f"YAML syntax: {e}", loc=SourceLoc(file, 1)) from None
    if node is None:
        return Mapping(SourceLoc(file, 1, 1))
    tree = _convert(node, file)
    if not isinstance(tree, Mapping):
        raise SpecSyntaxError("the top level of a YAML spec must be a mapping (name: ..., layer: [...])",
                              loc=tree.loc)
    return tree


def _convert(node: yaml.Node, file: str) -> Node:
    loc = _loc(file, node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        quoted = node.style in ("'", '"')
        return Scalar(node.value, quoted, loc)
    if isinstance(node, yaml.SequenceNode):
        return Sequence(loc, [_convert(item, file) for item in node.value])
    if isinstance(node, yaml.MappingNode):
        out = Mapping(loc)
        seen: dict[str, SourceLoc] = {}
        for key_node, value_node in node.value:
            key_loc = _loc(file, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecSyntaxError("a mapping key must be a plain name", loc=key_loc)
            key = key_node.value
            if key == "<<":
                raise SpecSyntaxError("YAML merge keys ('<<') are not supported in specs; write the "
                                      "fields out", loc=key_loc)
            if key in seen:
                first = seen[key]
                raise SpecSyntaxError(f"duplicate key '{key}' (first given on line {first.line})",
                                      loc=key_loc)
            seen[key] = key_loc
            out.items.append((key, key_loc, _convert(value_node, file)))
        return out
    raise SpecSyntaxError("unsupported YAML node", loc=loc)
