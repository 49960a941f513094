"""Every layer type netspec knows, by its spec name.

The family modules are imported here explicitly, so the table is complete and greppable.
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
from netspec.layers.registry import REGISTRY


def get(type_name: str) -> LayerDef:
    """The definition of a layer type; UnknownLayerTypeError (with a suggestion) if there is none."""
    found = REGISTRY.types.get(type_name)
    if found is not None:
        return found
    if not type_name:
        raise UnknownLayerTypeError("the layer has no type", hint="add type: \"Convolution\" (or another "
                                    "type; `netspec layers` lists them)")
    hint = did_you_mean(type_name, REGISTRY.types) or "`netspec layers` lists the known types"
    raise UnknownLayerTypeError(f"unknown layer type '{type_name}'", hint=hint)


def all_types() -> dict[str, LayerDef]:
    """Every registered layer type, by name."""
    return dict(REGISTRY.types)
