"""Every layer type netspec knows, by its spec name.

The family modules are imported here explicitly, so the table is complete and greppable. The module
also serves the NetSpec builder as pycaffe's `caffe.layers` did: `L.Convolution(...)` is a layer call
(see netspec/builder.py).
"""

from __future__ import annotations

from netspec.errors import UnknownLayerTypeError, did_you_mean
from netspec.layers import (  # noqa: F401  (imported for their registrations)
    common,
    data,
    loss,
    netspec_additions,
    neuron,
    norm,
    recurrent,
    utility,
    vision,
)
from netspec.layers.base import LayerDef
from netspec.layers.norm import average_statistics, sync_batch_norm  # noqa: F401  (distributed training's BatchNorm)
from netspec.layers.registry import REGISTRY


def get(type_name: str) -> LayerDef:
    """The definition of a layer type; UnknownLayerTypeError (with a suggestion) if there is none."""
    found = REGISTRY.types.get(type_name)
    if found is not None:
        return found
    if not type_name:
        raise UnknownLayerTypeError(
            "the layer has no type", hint='add type: "Convolution" (or another type; `netspec layers` lists them)'
        )
    hint = did_you_mean(type_name, REGISTRY.types) or "`netspec layers` lists the known types"
    raise UnknownLayerTypeError(f"unknown layer type '{type_name}'", hint=hint)


def all_types() -> dict[str, LayerDef]:
    """Every registered layer type, by name."""
    return dict(REGISTRY.types)


def __getattr__(name: str) -> object:
    # `from netspec import layers as L; L.Convolution(...)`: the builder's layer calls, by type name
    if name.startswith("_") or name not in REGISTRY.types:
        hint = did_you_mean(name, REGISTRY.types) if not name.startswith("_") else None
        raise AttributeError(f"netspec.layers has no layer type '{name}'" + (f"; {hint}" if hint else ""))
    from netspec.builder import layer_function

    return layer_function(name)
