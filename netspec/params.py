"""`netspec.params` (`P`): enum values by message, as pycaffe's `caffe.params` gave them.

`P.Pooling.MAX` is PoolingParameter's MAX, `P.Data.LMDB` DataParameter's LMDB, and `P.TRAIN`/`P.TEST`
the phases. Layer calls also take the names as strings (`pool="MAX"`).
"""

from __future__ import annotations

from typing import Any

from netspec._proto import netspec_pb2 as pb
from netspec.errors import did_you_mean


def __getattr__(name: str) -> Any:
    found = getattr(pb, f"{name}Parameter", None)
    if found is None and name in pb.Phase.DESCRIPTOR.values_by_name:
        found = pb.Phase.Value(name)
    if found is None or name.startswith("_"):
        known = [n[: -len("Parameter")] for n in pb.DESCRIPTOR.message_types_by_name if n.endswith("Parameter")]
        hint = did_you_mean(name, known)
        raise AttributeError(f"netspec.params has no '{name}'" + (f"; {hint}" if hint else ""))
    return found
