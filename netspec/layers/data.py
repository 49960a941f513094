"""Data layers: Input, DummyData, Data, ImageData, HDF5Data, MemoryData, HDF5Output.

Input and the source-reading layers (Data, ImageData, HDF5Data, MemoryData) are "fed" layers: a compiled
module takes their tops as keyword inputs, and the solver fills them from the sources. Their shapes come
from the spec or, as in Caffe, from the first record of the source.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from netspec._proto import netspec_pb2 as pb
from netspec.data import probe
from netspec.errors import DataError, ParamError, ShapeError
from netspec.files import confinement_problem, output_path
from netspec.fillerspec import check_filler
from netspec.layers.base import (
    NONE,
    Arity,
    Example,
    Forward,
    LayerDef,
    LayerSpec,
    Shape,
    at_least_axes,
    count,
    fmt,
    require,
    shape_of,
)
from netspec.layers.registry import register

if TYPE_CHECKING:
    import numpy as np
    import torch

    from netspec.data.datasets import Statistics
    from netspec.data.records import Records


def transformed(s: LayerSpec, channels: int, height: int, width: int) -> Shape:
    """One record's (C, H, W) after transform_param: crop_size shrinks H and W; mean_value must fit C."""
    tp = s.lp.transform_param
    if tp.mean_value and tp.HasField("mean_file"):
        raise ParamError("give mean_file or mean_value, not both", field="transform_param.mean_value")
    if len(tp.mean_value) not in (0, 1, channels):
        raise ParamError(
            f"{len(tp.mean_value)} mean_value entries for {channels} channels; give 1 or {channels}",
            field="transform_param.mean_value",
        )
    if tp.crop_size:
        if tp.crop_size > height or tp.crop_size > width:
            raise ShapeError(f"crop_size {tp.crop_size} is larger than the {height}x{width} records")
        return channels, tp.crop_size, tp.crop_size
    return channels, height, width


def _batch_and_label(s: LayerSpec, batch: int, record: Shape) -> list[Shape]:
    if batch <= 0:
        raise ParamError("batch_size must be set to a positive number", field="batch_size")
    tops: list[Shape] = [(batch, *record)]
    if s.num_tops == 2:
        tops.append((batch,))
    return tops


class _SourceLayer(LayerDef):
    """A data layer whose tops (the data and usually the labels) are fed from its source."""

    category = "data"
    bottoms = NONE
    tops = Arity(1, 2)
    feeds = True


@register
class Input(LayerDef):
    """Blobs fed by the caller, with fixed shapes: none given (then the caller decides), one for all
    tops, or one per top.

    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
    """

    type = "Input"
    param_field = "input_param"
    category = "data"
    bottoms = NONE
    tops = Arity(1, None)
    feeds = True
    examples = ()

    def check(self, s: LayerSpec) -> None:
        n = len(s.p.shape)
        require(
            n in (1, s.num_tops),
            f"{n} shapes for {s.num_tops} tops; give one shape for all tops or one per top",
            "shape",
        )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        shapes = [shape_of(bs, "shape") for bs in s.p.shape]
        return shapes * s.num_tops if len(shapes) == 1 else shapes


@register
class DummyData(LayerDef):
    """Tops filled by fillers at every forward pass (constant 0 when no filler is given).

    layer { name: "data" type: "DummyData" top: "data" top: "label"
            dummy_data_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } shape { dim: 64 }
                               data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" } } }
    """

    type = "DummyData"
    onnx_ops = frozenset({"Constant"})
    param_field = "dummy_data_param"
    category = "data"
    bottoms = NONE
    tops = Arity(1, None)
    examples = (
        Example("dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'constant' value: 1.5 } }", ()),
        Example(
            "dummy_data_param { num: 2 channels: 1 height: 3 width: 2 num: 2 channels: 1 height: 1 width: 1 }",
            (),
            tops=2,
        ),
    )

    def check(self, s: LayerSpec) -> None:
        p, n = s.p, s.num_tops
        legacy = max(len(p.num), len(p.channels), len(p.height), len(p.width))
        require(not (p.shape and legacy), "give shape or num/channels/height/width, not both", "shape")
        if legacy:
            require(
                len(p.num) == len(p.channels) == len(p.height) == len(p.width),
                "num, channels, height and width need the same number of entries",
                "num",
            )
        shapes = len(p.shape) or legacy
        require(shapes in (1, n), f"{shapes} shapes for {n} tops; give one for all tops or one per top", "shape")
        require(
            len(p.data_filler) in (0, 1, n),
            f"{len(p.data_filler)} data_filler for {n} tops; give none, one, or one per top",
            "data_filler",
        )

    def _shapes(self, s: LayerSpec) -> list[Shape]:
        p = s.p
        if p.shape:
            shapes = [shape_of(bs, "shape") for bs in p.shape]
        else:
            shapes = [(a, b, c, d) for a, b, c, d in zip(p.num, p.channels, p.height, p.width, strict=True)]
        return shapes * s.num_tops if len(shapes) == 1 else shapes

    def fillers(self, s: LayerSpec) -> list[pb.FillerParameter]:
        fl = list(s.p.data_filler) or [pb.FillerParameter(type="constant", value=0)]
        return fl * s.num_tops if len(fl) == 1 else fl

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        shapes = self._shapes(s)
        for shape, f in zip(shapes, self.fillers(s), strict=True):
            try:
                check_filler(f, shape)
            except ParamError as e:
                e.field = f"data_filler.{e.field}"
                raise
        return shapes

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        from netspec.fillers import fill

        plan = list(zip(tops, self.fillers(s), strict=True))

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            return [fill(f, shape) for shape, f in plan]

        return forward


@register
class Data(_SourceLayer):
    """Records from a Caffe LMDB or LevelDB (serialized Datum messages), with transform_param preprocessing.

    layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
            transform_param { scale: 0.00390625 }
            data_param { source: "mnist_train_lmdb" batch_size: 64 backend: LMDB } }
    """

    type = "Data"
    param_field = "data_param"
    reads_records = True
    label_top = True
    channel_order = "BGR"

    def records(self, s: LayerSpec) -> Records:
        from netspec.data.records import DatumRecords

        return DatumRecords(s)

    def shuffles(self, s: LayerSpec) -> bool:
        return False  # Caffe reads a Data layer's database in order

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        p = s.p
        path = probe.resolve(p.source, s.base_dir, "data_param.source", probe.database_kind(p))
        first = probe.lmdb_first_record(path) if p.backend == p.LMDB else probe.leveldb_first_record(path)
        datum = pb.Datum()
        try:
            datum.ParseFromString(first)
        except Exception as e:
            raise DataError(f"the first record of '{path}' is not a Caffe Datum: {e}") from None
        c, h, w = datum.channels, datum.height, datum.width
        if datum.encoded:  # force_color and force_gray apply to encoded records only, as in Caffe
            from PIL import Image

            tp = s.lp.transform_param
            with Image.open(io.BytesIO(datum.data)) as im:
                w, h = im.size
                c = probe.decoded_channels(im.mode, p.force_encoded_color or tp.force_color, tp.force_gray)
        return _batch_and_label(s, p.batch_size, transformed(s, c, h, w))


@register
class ImageData(_SourceLayer):
    """Images listed in a text file of "path label" lines, resized (new_height/new_width) and transformed.

    layer { name: "data" type: "ImageData" top: "data" top: "label"
            image_data_param { source: "train.txt" root_folder: "images/" batch_size: 32
                               new_height: 64 new_width: 64 } }
    """

    type = "ImageData"
    param_field = "image_data_param"
    reads_records = True
    label_top = True
    channel_order = "BGR"

    def records(self, s: LayerSpec) -> Records:
        from netspec.data.records import ImageListRecords

        return ImageListRecords(s)

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        p = s.p
        require((p.new_height == 0) == (p.new_width == 0), "new_height and new_width go together", "new_height")
        channels = 3 if p.is_color else 1
        if p.new_height:
            h, w = p.new_height, p.new_width
        else:
            listing = probe.resolve(p.source, s.base_dir, "image_data_param.source")
            first = probe.read_list(listing, "image list")[0]
            name = first.rsplit(None, 1)[0] if len(first.split()) > 1 else first
            h, w = probe.image_size(probe.resolve(p.root_folder + name, s.base_dir, "image"))
        return _batch_and_label(s, p.batch_size, transformed(s, channels, h, w))


@register
class HDF5Data(LayerDef):
    """Arrays from HDF5 files listed in a text file; each top reads the dataset of the same name.

    layer { name: "data" type: "HDF5Data" top: "data" top: "label"
            hdf5_data_param { source: "train_h5.txt" batch_size: 10 } }
    """

    type = "HDF5Data"
    param_field = "hdf5_data_param"
    category = "data"
    bottoms = NONE
    tops = Arity(1, None)
    feeds = True
    reads_records = True

    def records(self, s: LayerSpec) -> dict[str, np.ndarray]:
        from netspec.data.records import hdf5_arrays

        return hdf5_arrays(s)

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        p = s.p
        require(p.batch_size > 0, "batch_size must be set to a positive number", "batch_size")
        listing = probe.resolve(p.source, s.base_dir, "hdf5_data_param.source")
        first = probe.resolve(probe.read_list(listing, "HDF5 file list")[0], str(listing.parent), "HDF5 file")
        shapes = probe.hdf5_shapes(first)
        tops = []
        for top in s.lp.top:
            if top not in shapes:
                raise DataError(
                    f"HDF5 file '{first}' has no dataset '{top}' (it has: {', '.join(sorted(shapes)) or 'none'})",
                    field="top",
                )
            tops.append((p.batch_size, *shapes[top][1:]))
        return tops


@register
class WindowData(_SourceLayer):
    """Caffe's R-CNN window sampler, for checking and compiling nets that use it: its tops are
    (batch, C, crop_size, crop_size) with C read from the window file, and a label per window. netspec
    does not sample windows itself; feed them from outside.

    layer { name: "data" type: "WindowData" top: "data" top: "label" transform_param { crop_size: 227 }
            window_data_param { source: "window_file.txt" batch_size: 128 } }
    """

    type = "WindowData"
    param_field = "window_data_param"
    channel_order = "BGR"

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        crop = s.lp.transform_param.crop_size
        require(
            crop > 0,
            "WindowData warps windows to transform_param.crop_size, which must be set",
            "transform_param.crop_size",
        )
        listing = probe.resolve(s.p.source, s.base_dir, "window_data_param.source")
        lines = probe.read_list_raw(listing, "window file")
        try:  # "# image_index", image path, channels, height, width, ...
            channels = int(lines[2])
        except (IndexError, ValueError):
            raise DataError(
                f"'{listing}' is not a Caffe window file (line 3 should give the first image's channels)",
                field="source",
            ) from None
        return _batch_and_label(s, s.p.batch_size, transformed(s, channels, crop, crop))


@register
class MemoryData(_SourceLayer):
    """Batches handed over from Python (Caffe's set_input_arrays); a fed layer of fixed shape.

    layer { name: "data" type: "MemoryData" top: "data" top: "label"
            memory_data_param { batch_size: 10 channels: 1 height: 28 width: 28 } }
    """

    type = "MemoryData"
    param_field = "memory_data_param"
    label_top = True

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        p = s.p
        for f in ("channels", "height", "width"):
            require(getattr(p, f) > 0, f"{f} must be set to a positive number", f)
        return _batch_and_label(s, p.batch_size, transformed(s, p.channels, p.height, p.width))


@register
class HDF5Output(LayerDef):
    """Appends its two bottoms to the datasets "data" and "label" of an HDF5 file at every forward pass.
    file_name is a relative path inside the run's output folder (`--out` of train and test); an absolute
    path or one through '..' is refused, so a spec cannot write elsewhere (see netspec.files).

    layer { name: "out" type: "HDF5Output" bottom: "ip2" bottom: "label"
            hdf5_output_param { file_name: "predictions.h5" } }
    """

    type = "HDF5Output"
    train_only = True
    param_field = "hdf5_output_param"
    category = "data"
    bottoms = Arity(2, 2)
    tops = NONE

    def check(self, s: LayerSpec) -> None:
        require(bool(s.p.file_name), "file_name must be set", "file_name")
        problem = confinement_problem(s.p.file_name)
        if problem:
            raise ParamError(
                f"file_name '{s.p.file_name}' {problem}; HDF5Output writes only inside the run's output folder",
                field="file_name",
                hint="give a relative name, and the folder with --out (netspec train/test)",
            )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        for i, b in enumerate(bottoms):
            at_least_axes(b, 1, "(N, ...): rows are appended along axis 0", f"bottom {i}")
        if bottoms[0][:1] != bottoms[1][:1]:
            raise ShapeError(f"data {fmt(bottoms[0])} and label {fmt(bottoms[1])} need the same first axis")
        return []

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        file_name = s.p.file_name

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            if not torch.compiler.is_compiling():
                _append_hdf5(file_name, {"data": xs[0], "label": xs[1]})
            return []

        return forward


def _append_hdf5(file_name: str, arrays: dict[str, torch.Tensor]) -> None:
    try:
        import h5py
    except ImportError:
        raise DataError("HDF5Output needs h5py: pip install h5py") from None
    path = output_path(file_name, "HDF5Output file")
    values = {name: tensor.detach().cpu().numpy() for name, tensor in arrays.items()}
    try:
        f = h5py.File(path, "a")
    except OSError as e:
        raise DataError(
            f"cannot append to HDF5Output file '{path}': {_first_line(e)}",
            hint="it exists and is not an HDF5 file; remove it or choose another file_name",
        ) from None
    with f:
        for name, value in values.items():
            ds = f.get(name)
            if ds is not None and not (
                isinstance(ds, h5py.Dataset) and ds.maxshape[:1] == (None,) and ds.shape[1:] == value.shape[1:]
            ):
                shape = tuple(ds.shape) if isinstance(ds, h5py.Dataset) else "a group"
                raise DataError(
                    f"HDF5Output file '{path}' already holds '{name}' as {shape}, which "
                    f"batches of shape {fmt(value.shape)} cannot be appended to",
                    hint="remove the file or choose another file_name",
                )
        for name, value in values.items():
            if name not in f:
                f.create_dataset(name, data=value, maxshape=(None, *value.shape[1:]), chunks=True)
            else:
                ds = f[name]
                ds.resize(ds.shape[0] + value.shape[0], axis=0)
                ds[-value.shape[0] :] = value


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


@register
class Dataset(_SourceLayer):
    """A data set held in memory and split into a training and a test part (the part follows the phase):
    scikit-learn's bundled sets (digits, iris, wine, breast_cancer, diabetes), generated ones (xor,
    spirals, blobs), .npz/.npy/.csv files and folders of class folders of images. Tops: the data, and
    optionally the labels. A netspec addition.

    layer { name: "digits" type: "Dataset" top: "data" top: "label"
            dataset_param { source: "digits" batch_size: 64 record_shape { dim: 1 dim: 8 dim: 8 } } }
    """

    type = "Dataset"
    param_field = "dataset_param"
    origin = "netspec"
    reads_records = True

    def records(self, s: LayerSpec) -> dict[str, np.ndarray]:
        from netspec.data.datasets import load_arrays

        data, labels = load_arrays(s.p, s.base_dir, s.phase, s.stored)
        arrays = {s.lp.top[0]: data}
        if len(s.lp.top) > 1 and labels is not None:
            arrays[s.lp.top[1]] = labels
        return arrays

    def statistics(self, s: LayerSpec) -> Statistics | None:
        if not s.p.standardize:
            return None
        if s.stored is not None:
            return s.stored
        from netspec.data.datasets import standardization

        mean, std = standardization(s.p, s.base_dir)
        return tuple(float(v) for v in mean.ravel()), tuple(float(v) for v in std.ravel())

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        from netspec.data.datasets import describe

        p = s.p
        require(p.batch_size > 0, "batch_size must be positive", "batch_size")
        require(p.noise >= 0, f"noise (a standard deviation) must not be negative, got {p.noise:g}", "noise")
        info = describe(p, s.base_dir)
        record = info.record
        if p.HasField("record_shape"):
            given = shape_of(p.record_shape, "record_shape")
            if count(given) != count(record):
                raise ShapeError(
                    f"record_shape {fmt(given)} does not hold the {count(record)} values of a record {fmt(record)}",
                    field="record_shape",
                )
            record = given
        if len(record) == 3:
            if p.new_height or p.new_width:
                record = (record[0], p.new_height or record[1], p.new_width or record[2])
            record = transformed(s, *record)
        elif p.new_height or p.new_width:
            raise ShapeError(
                f"new_height/new_width resize image records (C, H, W), but records are {fmt(record)}",
                field="new_height",
                hint="give record_shape, e.g. 1 8 8 for the digits",
            )
        tops = [(p.batch_size, *record)]
        if s.num_tops == 2:
            if info.label is None:
                raise DataError(
                    f"'{p.source}' has no labels for the second top",
                    field="label_key",
                    hint="give label_key (the array holding the labels)",
                )
            tops.append((p.batch_size, *info.label))
        return tops
