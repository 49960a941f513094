"""The table of layer types. Family modules register into it; `netspec.layers.get` reads it."""

from __future__ import annotations

from netspec.layers.base import Registry

REGISTRY = Registry()
register = REGISTRY.register
