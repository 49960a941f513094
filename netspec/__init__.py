"""netspec: Caffe-style network specs (prototxt or YAML), checked statically, run with PyTorch.

net = netspec.load("models/lenet.yaml")            # parse, build the graph, infer shapes (no torch)
module = netspec.compile(net)                       # a torch.nn.Module
outputs = module(data=torch.randn(64, 1, 28, 28))   # {"prob": tensor(...)}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netspec import params
from netspec.builder import NetSpec, to_proto
from netspec.errors import NetspecError
from netspec.net import Net, load

TRAIN, TEST = params.TRAIN, params.TEST

if TYPE_CHECKING:
    from netspec.deploy.export import export_onnx
    from netspec.lower.module import NetModule
    from netspec.train.solver import Solver

__version__ = "0.1.0"
__all__ = [
    "TEST",
    "TRAIN",
    "Net",
    "NetSpec",
    "NetspecError",
    "Solver",
    "__version__",
    "compile",
    "export_onnx",
    "layers",
    "load",
    "params",
    "to_proto",
]


def __getattr__(name: str) -> object:
    # Solver and export_onnx need torch; importing them only when asked keeps `import netspec` (and
    # checking) torch-free.
    if name == "Solver":
        from netspec.train.solver import Solver

        return Solver
    if name == "export_onnx":
        from netspec.deploy.export import export_onnx

        return export_onnx
    raise AttributeError(f"module 'netspec' has no attribute '{name}'")


def compile(net_or_path: Net | str, phase: str | None = None, weights: str | None = None) -> NetModule:
    """A net as a torch.nn.Module computing what Caffe computes.

    Args:
        net_or_path: a Net from `load`, or the path of a spec.
        phase: TRAIN or TEST. By default a Net keeps its own phase and a path is compiled for TEST.
        weights: a netspec snapshot (.pt) or a Caffe .caffemodel / .caffemodel.h5 to load, matching
            layers by name; without it the spec's fillers initialise the weights. Blobs whose shapes do
            not match are an error (WeightsError).

    Returns:
        A module whose call takes the input blobs as keyword tensors and returns the output blobs as a
        dict; `module.blobs(**inputs)` returns every blob, and `module.caffe_params()` each layer's
        parameter blobs in Caffe's order and shapes.
    """
    from netspec.lower.module import compile_net

    return compile_net(net_or_path, phase, weights)
