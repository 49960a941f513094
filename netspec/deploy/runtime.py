"""An ONNX model in onnxruntime: one session, its inputs and outputs in Open Inference Protocol terms,
and its netspec metadata. Shared by `netspec serve` and `netspec predict`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from netspec.errors import DataError
from netspec.files import checked

# Open Inference Protocol datatype <-> onnxruntime type <-> numpy dtype
DATATYPES = {
    "tensor(float)": ("FP32", np.float32), "tensor(double)": ("FP64", np.float64),
    "tensor(float16)": ("FP16", np.float16), "tensor(int64)": ("INT64", np.int64),
    "tensor(int32)": ("INT32", np.int32), "tensor(int16)": ("INT16", np.int16), "tensor(int8)": ("INT8", np.int8),
    "tensor(uint8)": ("UINT8", np.uint8), "tensor(uint16)": ("UINT16", np.uint16),
    "tensor(uint32)": ("UINT32", np.uint32), "tensor(uint64)": ("UINT64", np.uint64),
    "tensor(bool)": ("BOOL", np.bool_),
}
NUMPY_OF = {name: dtype for name, dtype in DATATYPES.values()}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a free axis

    @property
    def dtype(self) -> Any:
        return NUMPY_OF[self.datatype]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def physical_cores() -> int:
    count = os.cpu_count() or 1
    return max(1, count // 2) if count >= 4 else count


class Runtime:
    """One onnxruntime session for a model file (run() may be called from several threads at once)."""

    def __init__(self, path: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        p = checked(path, "model file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # the CPU is shared
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own kinds for every unreadable model
            raise DataError(f"onnxruntime cannot load '{path}': {str(e).splitlines()[0][:300]}",
                            hint="export it with `netspec export SPEC --onnx FILE`") from None
        self.path = p
        self.inputs = [self._tensor(v) for v in self.session.get_inputs()]
        self.outputs = [self._tensor(v) for v in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels: list[str] | None = json.loads(meta["netspec.labels"]) if "netspec.labels" in meta else None
        self.channel_order = meta.get("netspec.channel_order", "BGR")

    @staticmethod
    def _tensor(value: Any) -> Tensor:
        if value.type not in DATATYPES:
            raise DataError(f"model tensor '{value.name}' has type {value.type}, which netspec does not serve")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in value.shape)
        return Tensor(value.name, DATATYPES[value.type][0], shape)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        return self.session.run(outputs or [o.name for o in self.outputs], feeds)
