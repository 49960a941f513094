"""Imports flow one way, down the stack DEVELOPERS.md draws: every import in netspec/ (lazy ones inside
functions too) goes to a lower tier or stays inside its own package or module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "netspec"

# Top to bottom. A unit may import its own modules and any unit of a lower tier; units of one tier do not
# import each other. A module belongs to the unit that is the longest prefix of its name.
STACK: list[tuple[str, ...]] = [
    ("netspec.__main__",),
    ("netspec", "netspec.cli"),  # the public API and the command line
    ("netspec.train", "netspec.deploy"),
    ("netspec.lower", "netspec.data.feeder", "netspec.draw", "netspec.report", "netspec.editor_schema"),
    ("netspec.net", "netspec.builder"),
    ("netspec.shapes",),
    ("netspec.graph",),
    ("netspec.netfile",),  # YAML's wiring defaults need both the syntax and the layer types' arity
    ("netspec.layers", "netspec.spec"),
    ("netspec.fillers",),  # torch's fillers, for weights and DummyData
    # formats and sources that several stages read
    ("netspec.caffemodel", "netspec.snapshot", "netspec.fillerspec", "netspec.params", "netspec.data"),
    ("netspec.files",),  # the one check that a path a user names is a regular file or folder
    # the package's version is read from its root, which Python imports before any module in it
    ("netspec.errors", "netspec._proto", "netspec.__version__"),
]
TIER = {unit: i for i, units in enumerate(STACK) for unit in units}

# Outside netspec/layers/, a layer type is reached through the registry and LayerDef, not its family module.
LAYERS_API = {"netspec.layers", "netspec.layers.base", "netspec.layers.registry", "netspec.layers.docs"}
ALLOWED = {
    # drawings show convolution and pooling windows with the geometry the shape rules compute
    ("netspec.draw", "netspec.layers.vision"),
    # `from netspec import layers as L; L.Convolution(...)`: the builder's calls by type name (Caffe's net_spec)
    ("netspec.layers", "netspec.builder"),
    # the record readers take the LayerSpec that their data layer's `records` hook passes (for types only)
    ("netspec.data.records", "netspec.layers.base"),
    # a deploy prototxt declares its inputs with Caffe's Input layer, named by its class
    ("netspec.deploy.caffe", "netspec.layers.data"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def unit(module: str) -> str:
    if module == "netspec":
        return module
    return max(
        (u for u in TIER if u != "netspec" and (module == u or module.startswith(u + "."))), key=len, default=module
    )


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every netspec import in a module's source, wherever it stands (in functions too)."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from netspec.data import probe` imports the module netspec.data.probe
            out += [
                (node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES or a.name == "__version__" else base)
                for a in node.names
            ]
    return [(line, name) for line, name in out if name == "netspec" or name.startswith("netspec.")]


def violations(module: str, found: list[tuple[int, str]]) -> list[str]:
    here = unit(module)
    out = []
    for line, target in found:
        there = unit(target)
        if (module, target) in ALLOWED or here == there:
            continue
        where = f"{module}:{line} imports {target}"
        if TIER[there] <= TIER[here]:
            out.append(f"{where}, which is not below it (tier {TIER[there]}: {there}; tier {TIER[here]}: {here})")
        elif there == "netspec.layers" and target not in LAYERS_API:
            out.append(f"{where}, a layer family module (ask the registry or the LayerDef instead)")
    return out


def test_imports_go_down_the_stack() -> None:
    found = [
        v
        for module, path in sorted(MODULES.items())
        for v in violations(module, imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"))
    ]
    assert found == []


def test_every_module_has_a_place_in_the_stack() -> None:
    assert all(unit(m) in TIER for m in MODULES)


def test_the_check_sees_lazy_relative_and_submodule_imports() -> None:
    source = (
        "from netspec.errors import ParamError\n\n\ndef f():\n    from netspec.data import probe\n"
        "    from ..layers import neuron\n    import netspec.spec.build\n"
    )
    found = imports(source, "netspec.spec.x")
    assert found == [
        (1, "netspec.errors"),
        (5, "netspec.data.probe"),
        (6, "netspec.layers.neuron"),
        (7, "netspec.spec.build"),
    ]
    assert violations("netspec.spec.x", found) == [
        "netspec.spec.x:6 imports netspec.layers.neuron, which is not below it (tier 8: netspec.layers; tier 8: "
        "netspec.spec)"
    ]
    assert violations("netspec.graph", [(3, "netspec.layers.neuron")]) == [
        "netspec.graph:3 imports netspec.layers.neuron, a layer family module (ask the registry or the LayerDef "
        "instead)"
    ]
