"""The contract every layer type fulfils, and helpers its rules share.

A layer type is one `LayerDef` subclass in one module: its parameters (a message of the schema), its
arity, its shape rule (`infer`, pure Python), its parameter blobs (`blobs`, shapes in Caffe's order),
its cost (`macs`) and its lowering to PyTorch (`lower`, the only method that imports torch). Every other
fact about the type that the rest of netspec needs (its ONNX operators, whether only training needs it, its
class or batch axis, how a data layer's records are read, its summary in drawings) is an attribute or
method here too, so that code outside `netspec/layers/` never compares type names. Layer code raises
`ParamError`/`ShapeError` with the message alone; the driver adds file, line and layer name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from netspec._proto import netspec_pb2 as pb
from netspec.errors import DataError, ParamError, ShapeError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from netspec.data.datasets import Statistics
    from netspec.data.records import Records

Shape = tuple[int, ...]
# params (in blob order), bottoms -> tops
Forward = Callable[[Sequence["torch.Tensor"], Sequence["torch.Tensor"]], list["torch.Tensor"]]
# Caffe's gradient formula: (input at forward, bottom data, top data, top diff) -> bottom diff
Grad = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Arity:
    """How many bottoms or tops a layer takes: from `min` to `max` (None: no upper bound)."""

    min: int
    max: int | None

    def accepts(self, n: int) -> bool:
        return n >= self.min and (self.max is None or n <= self.max)

    def __str__(self) -> str:
        if self.max == self.min:
            return str(self.min)
        if self.max is None:
            return f"at least {self.min}"
        return f"{self.min} to {self.max}"


ONE = Arity(1, 1)
NONE = Arity(0, 0)


@dataclass(frozen=True)
class BlobDef:
    """One parameter blob: its role, its shape (Caffe's), how it starts, whether the solver updates it."""

    role: str
    shape: Shape
    filler: pb.FillerParameter
    learnable: bool = True
    filler_field: str = "filler"  # the field of the layer's parameter message that gives `filler`


@dataclass(frozen=True)
class LayerSpec:
    """What a LayerDef sees of one layer: the layer message, its own parameter message and the phase."""

    lp: pb.LayerParameter
    p: Any
    phase: int
    base_dir: str = "."
    # what a trained model stored of this data layer's preprocessing (a snapshot's), used instead of
    # computing it from the source again; None for a spec alone
    stored: Statistics | None = None

    @property
    def num_bottoms(self) -> int:
        return len(self.lp.bottom)

    @property
    def num_tops(self) -> int:
        return len(self.lp.top)

    @property
    def train(self) -> bool:
        return self.phase == pb.TRAIN


@dataclass(frozen=True)
class In:
    """An example input. kind: float, positive, prob (rows summing to 1) - all differentiated - or
    label (ints in [0, high)), binary, constant (positive, not differentiated)."""

    shape: Shape
    kind: str = "float"
    high: int = 0


@dataclass(frozen=True)
class Example:
    """A layer configuration that the contract tests run: fields of the layer (prototxt text) and inputs."""

    fields: str
    inputs: tuple[In, ...]
    tops: int = 1
    phase: str = "TEST"
    gradcheck: bool = True


class LayerDef:
    """Base of every layer type. Subclasses set the class attributes and override the rules they need."""

    type: ClassVar[str]
    param_field: ClassVar[str | None] = None
    category: ClassVar[str] = "utility"
    origin: ClassVar[str] = "caffe"  # or "netspec" for netspec's additions
    bottoms: ClassVar[Arity] = ONE
    tops: ClassVar[Arity] = ONE
    # A loss: its first top's loss_weight defaults to 1.
    loss: ClassVar[bool] = False
    # A data layer: its tops are fed from outside the module (by the caller or the solver's data).
    feeds: ClassVar[bool] = False
    # Caffe forbids computing this layer in place (top == bottom).
    no_in_place: ClassVar[bool] = False
    # The size of some top depends on the data (Filter); its inferred shape is an upper bound.
    data_dependent: ClassVar[bool] = False
    # What the layer computes is unknowable (Caffe's Python layer): its tops' shapes are unknown.
    opaque: ClassVar[bool] = False
    examples: ClassVar[tuple[Example, ...]] = ()
    # The ONNX operator types its export may produce; empty: the deploy graph leaves it out (losses, data
    # layers, what only training needs) or it cannot be exported.
    onnx_ops: ClassVar[frozenset[str]] = frozenset()
    # Only training needs it (a loss, Accuracy, Silence): the deploy graph drops it and what only it reads.
    train_only: ClassVar[bool] = False
    # A data layer whose second top, when it has one, holds one label per record: shape (N,).
    label_top: ClassVar[bool] = False
    # A data layer whose records the solver reads from the source its spec names (see `records`).
    reads_records: ClassVar[bool] = False
    # The channel order of the images a data layer's first top holds (Caffe's image layers: BGR).
    channel_order: ClassVar[str] = "RGB"
    # The axis of its bottoms that holds the batch (recurrent layers take (T, N, ...)).
    batch_axis: ClassVar[int] = 0
    # The colour drawings give it (Caffe's draw_net colours, lightened); None: the colour of its kind.
    draw_colour: ClassVar[str | None] = None

    def params(self, lp: pb.LayerParameter) -> Any:
        """This layer's own parameter message (the default message when the spec leaves it out)."""
        return getattr(lp, self.param_field) if self.param_field else None

    def check(self, s: LayerSpec) -> None:
        """Rules on the parameters alone, before any shape is known."""

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        """The shapes of the tops. Pure Python: never imports torch."""
        raise NotImplementedError

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        """The parameter blobs, in Caffe's order and shapes."""
        return []

    def macs(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> int:
        """Multiply-accumulates of one forward pass."""
        return 0

    def scratch(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Shape | None:
        """The shape of the largest temporary tensor the lowering makes besides its tops (unfolded windows,
        say), which the memory limit counts before anything is allocated; None when there is none."""
        return None

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        """A function computing the tops from the parameter blobs and the bottoms, with torch."""
        raise NotImplementedError(f"{self.type} has no lowering")

    # Caffe's backward pass reads blob values as they are at backward time; neurons override these so that
    # the graph can tell when a later in-place layer changes that value (graph.stale_reads).

    def caffe_backward(self, s: LayerSpec) -> Grad | None:
        """Caffe's gradient formula, with bottom and top data as Caffe reads them at backward time. None:
        the backward pass reads no blob data."""
        return None

    @classmethod
    def reads_blobs_in_backward(cls) -> bool:
        return cls.caffe_backward is not LayerDef.caffe_backward

    def inplace_exact(self, s: LayerSpec) -> bool:
        """Whether reading its own in-place output in backward still gives the true gradient."""
        return True

    def reads_only_sign(self, s: LayerSpec) -> bool:
        """Whether Caffe's backward uses only where the blob is > 0 (so a later layer that keeps the
        sign does not change the gradient)."""
        return False

    def keeps_sign(self, s: LayerSpec) -> bool:
        """Whether, wherever its gradient is not zero, the output is > 0 exactly where the input is."""
        return False

    def keeps_values(self, s: LayerSpec) -> bool:
        """Whether the output equals the input (so overwriting a blob with it changes nothing)."""
        return False

    def summary(self, s: LayerSpec, bottoms: Sequence[Shape]) -> str:
        """One line with the parameters that decide the output's size, for drawings and tables ("" for none)."""
        return ""

    def class_axis(self, s: LayerSpec) -> int | None:
        """For a classifier, whose second bottom holds class indices: the axis of its first bottom that
        holds the classes (may count from the end). None for other layers."""
        return None

    def ignore_label(self, s: LayerSpec) -> int | None:
        """The label a classifier skips, if any."""
        lp = s.lp.loss_param
        return lp.ignore_label if lp.HasField("ignore_label") else None

    def counted(self, s: LayerSpec, label: torch.Tensor) -> torch.Tensor | None:
        """For a scalar top that is a mean over the predictions whose label (`label`, its second bottom)
        is not ignore_label: how many of them count. Tests add such means up as sums and counts, so a mean
        over batches (and ranks) is the mean over all those predictions. None: a mean over the batch."""
        return None

    def int_inputs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> dict[int, int]:
        """Bottoms that hold integer ids, by index, with the bound their values stay below."""
        return {}

    def records(self, s: LayerSpec) -> dict[str, np.ndarray] | Records:
        """A `reads_records` data layer's source: whole arrays by top when the source is array-shaped, else
        random access to its records. Reads files; never imports torch."""
        raise NotImplementedError(f"{self.type} reads no records")

    def statistics(self, s: LayerSpec) -> Statistics | None:
        """What a data layer computes from its whole source and applies to every record (a `standardize`
        Dataset's mean and std): the trained model depends on it, so a snapshot stores it and the export
        moves it into the graph. None for layers that compute nothing so."""
        return None

    def shuffles(self, s: LayerSpec) -> bool:
        """Whether the solver reads a `reads_records` layer's records in a shuffled order when training."""
        return bool(s.p.shuffle)


# ---- helpers shared by the shape rules --------------------------------------------------------------


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """The number of elements in shape[start:end]."""
    return math.prod(shape[start:end])


def canonical_axis(axis: int, ndim: int, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex: a negative axis counts from the end; out of range is an error."""
    if ndim == 0:
        raise ShapeError(f"{what} {axis} needs a bottom with axes, got a 0-axis (scalar) bottom", field=what)
    if not -ndim <= axis < ndim:
        raise ShapeError(
            f"{what} {axis} is out of range for a {ndim}-axis bottom (valid: {-ndim} to {ndim - 1})", field=what
        )
    return axis + ndim if axis < 0 else axis


def expect_axes(shape: Shape, n: int, what: str = "bottom") -> Shape:
    if len(shape) != n:
        raise ShapeError(f"{what} must have {n} axes, got shape {fmt(shape)}")
    return shape


def at_least_axes(shape: Shape, n: int, axes: str, which: str = "the bottom") -> Shape:
    """Refuses a bottom with fewer than n axes (a 0-axis scalar, say); `axes` names the axes the layer
    reads, e.g. "(N, ...)"."""
    if len(shape) < n:
        raise ShapeError(f"{which} has shape {fmt(shape)}, but needs at least {n} axis{'es' if n > 1 else ''} {axes}")
    return shape


def fmt(shape: Sequence[int | str]) -> str:
    """A shape as users read it: (64, 1, 28, 28), or (N, 1, 28, 28) with its batch axis left open."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def shape_of(bs: pb.BlobShape, field: str) -> Shape:
    """A BlobShape from a spec as a tuple; negative dims are errors."""
    dims = tuple(int(d) for d in bs.dim)
    if any(d < 0 for d in dims):
        raise ParamError(f"shape {fmt(dims)} has a negative dimension", field=field)
    return dims


def filler_or(
    f: pb.FillerParameter, present: bool, default_type: str = "constant", value: float = 0.0
) -> pb.FillerParameter:
    """The filler a spec gives, or Caffe's default for that blob when the spec gives none."""
    if present:
        return f
    return pb.FillerParameter(type=default_type, value=value)


def filled(role: str, shape: Shape, p: Any, field: str, value: float = 0.0) -> BlobDef:
    """A learnable blob whose filler is `field` of the parameter message p, or Caffe's default for it (a
    constant `value`) when the spec gives none."""
    return BlobDef(role, shape, filler_or(getattr(p, field), p.HasField(field), value=value), filler_field=field)


def weight_and_bias(p: Any, weight: Shape, bias: Shape) -> list[BlobDef]:
    """A weight blob from weight_filler and, when p.bias_term, a bias blob from bias_filler."""
    out = [filled("weight", weight, p, "weight_filler")]
    if p.bias_term:
        out.append(filled("bias", bias, p, "bias_filler"))
    return out


def describe_bottoms(s: LayerSpec, bottoms: Sequence[Shape]) -> str:
    """The shapes of the bottoms by name, for hints: 'a' is (2, 3), 'b' is (2, 4)."""
    return ", ".join(f"'{name}' is {fmt(b)}" for name, b in zip(s.lp.bottom, bottoms, strict=False))


def as_ids(x: torch.Tensor, bound: int, what: str, of: str) -> torch.Tensor:
    """`x` as integer ids (truncated, as Caffe's cast does), or a DataError naming the first one outside
    [0, bound): torch's own index error would name neither the value nor the range. Skipped while torch
    compiles or exports the net, which cannot branch on values."""
    import torch

    ids = x.detach().long()
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return ids
    bad = (ids < 0) | (ids >= bound) | ~torch.isfinite(x.detach())
    if bool(bad.any()):
        value = float(x.detach()[bad].flatten()[0])
        raise DataError(f"{what} holds {value:g}, outside the valid range [0, {bound}) of {of}")
    return ids


def require(cond: bool, msg: str, field: str | None = None) -> None:
    """Raises ParamError(msg) unless cond."""
    if not cond:
        raise ParamError(msg, field=field)


@dataclass
class Registry:
    """Layer types by name; `register` refuses a second definition of a type."""

    types: dict[str, LayerDef] = field(default_factory=dict)

    def register(self, cls: type[LayerDef]) -> type[LayerDef]:
        if cls.type in self.types:
            raise ValueError(f"layer type {cls.type} is registered twice")
        self.types[cls.type] = cls()
        return cls
