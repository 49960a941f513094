"""Caffe's weight files: `.caffemodel` (a binary NetParameter whose layers carry their blobs), its HDF5 form
`.caffemodel.h5`, and `.binaryproto` (one BlobProto, e.g. a mean image).

Reading accepts what Caffe ever wrote: current `layer` and V1 `layers` entries, blob shapes in `shape` or
in the legacy num/channels/height/width, float or double data. Writing produces what current Caffe
writes (`layer` entries with `shape` and float data), which every Caffe since 2015 reads. Only protobuf
and numpy are needed: no torch, no Caffe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from netspec._proto import netspec_pb2 as pb
from netspec.errors import DataError, WeightsError
from netspec.files import checked

SUFFIXES = (".caffemodel", ".caffemodel.h5")


def is_caffe_weights(path: str | Path) -> bool:
    return str(path).endswith(SUFFIXES)


@dataclass(frozen=True)
class CaffeWeights:
    """Each layer's blobs in file order. `legacy` holds (layer, index) of blobs whose shape was written as
    num/channels/height/width, which Caffe matches against a blob of fewer axes padded with leading ones."""

    name: str
    blobs: dict[str, list[np.ndarray]]
    legacy: frozenset[tuple[str, int]]
    v1: bool


def read_caffemodel(path: str | Path) -> CaffeWeights:
    """The blobs of a .caffemodel or .caffemodel.h5 file; WeightsError if it is missing or unreadable."""
    path = checked(path, "weights file", error=WeightsError)
    if str(path).endswith(".h5"):
        return _read_h5(path)
    net = pb.NetParameter()
    try:
        net.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as e:
        raise WeightsError(
            f"'{path}' is not a readable .caffemodel ({str(e)[:120] or 'corrupt data'})",
            hint="the file is damaged or is not a Caffe binary NetParameter",
        ) from None
    blobs: dict[str, list[np.ndarray]] = {}
    legacy = set()
    for layer in [*net.layer, *net.layers]:
        if not layer.blobs:
            continue
        if not layer.name:
            raise WeightsError(f"'{path}' has a layer with blobs but no name")
        arrays = []
        for i, blob in enumerate(layer.blobs):
            array, old = _blob_array(blob, f"'{path}': layer '{layer.name}' blob {i}")
            arrays.append(array)
            if old:
                legacy.add((layer.name, i))
        blobs[layer.name] = arrays
    if not blobs and not (net.layer or net.layers):
        raise WeightsError(f"'{path}' holds no layers", hint="is it a .caffemodel written by Caffe's solver?")
    return CaffeWeights(net.name, blobs, frozenset(legacy), bool(net.layers))


def _blob_array(blob: pb.BlobProto, what: str) -> tuple[np.ndarray, bool]:
    """A BlobProto's values in its shape, and whether that shape is the legacy 4-D one.

    Caffe's own rule (Blob::FromProto): the legacy num/channels/height/width when any of them is set,
    else `shape`; a 0-axis blob (a shared PReLU slope, Scale with num_axes 0) has neither."""
    if any(blob.HasField(f) for f in _LEGACY_DIMS):
        shape: tuple[int, ...] = (blob.num, blob.channels, blob.height, blob.width)
        legacy = True
    else:
        shape, legacy = tuple(int(d) for d in blob.shape.dim), False
    data = np.array(blob.double_data, dtype=np.float64) if blob.double_data else np.array(blob.data, dtype=np.float32)
    count = int(np.prod(shape)) if shape else 1
    if data.size != count:
        raise WeightsError(f"{what} has shape {shape} but {data.size} values")
    return data.reshape(shape), legacy


_LEGACY_DIMS = ("num", "channels", "height", "width")


def _read_h5(path: Path) -> CaffeWeights:
    """Caffe's HDF5 snapshots: a group `data` with a group per layer and a dataset per blob ('0', '1', ...)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            data = f["data"]
            blobs = {
                name: [np.asarray(group[str(i)]) for i in range(len(group))]
                for name, group in data.items()
                if len(group)
            }
    except (OSError, KeyError) as e:
        raise WeightsError(f"'{path}' is not a readable Caffe HDF5 weights file ({str(e)[:120]})") from None
    return CaffeWeights(path.name, blobs, frozenset(), False)


def legacy_fits(target: tuple[int, ...], legacy: tuple[int, ...]) -> bool:
    """Caffe's rule for a num/channels/height/width blob: it fits a blob of up to four axes whose shape,
    padded on the left with ones, is the same."""
    return len(legacy) == 4 and len(target) <= 4 and (1,) * (4 - len(target)) + tuple(target) == tuple(legacy)


def write_caffemodel(path: str | Path, name: str, layers: Iterable[tuple[pb.LayerParameter, list[np.ndarray]]]) -> int:
    """Writes a .caffemodel: each layer's parameters as given (so Caffe can match them by name) with its
    blobs as float32 in `shape` form (a 0-axis blob with no shape at all, as Caffe's Blob::ToProto writes
    it). Returns the number of bytes written.

    The blobs' values are encoded here as packed floats straight from numpy: going through protobuf's
    repeated-field API takes seconds per large layer."""
    parts = [pb.NetParameter(name=name).SerializeToString()]
    for lp, arrays in layers:
        layer = pb.LayerParameter()
        layer.CopyFrom(lp)
        del layer.blobs[:]
        body = [layer.SerializeToString()]
        for array in arrays:
            shape = pb.BlobProto()
            if array.ndim:
                shape.shape.dim.extend(int(d) for d in array.shape)
            values = np.ascontiguousarray(array, dtype="<f4").tobytes()
            blob = shape.SerializeToString() + _field(_BLOB_DATA, values)
            body.append(_field(_LAYER_BLOBS, blob))
        parts.append(_field(_NET_LAYER, b"".join(body)))
    data = b"".join(parts)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as e:
        raise WeightsError(f"cannot write '{path}': {e.strerror}") from None
    return len(data)


_NET_LAYER = pb.NetParameter.DESCRIPTOR.fields_by_name["layer"].number
_LAYER_BLOBS = pb.LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number
_BLOB_DATA = pb.BlobProto.DESCRIPTOR.fields_by_name["data"].number


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: a message, or a packed repeated float."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_binaryproto(path: Path, what: str = "a Caffe .binaryproto blob") -> np.ndarray:
    """A .binaryproto blob (a mean image, an infogain matrix) in its own shape; DataError if unreadable."""
    blob = pb.BlobProto()
    try:
        blob.ParseFromString(path.read_bytes())
        return _blob_array(blob, f"'{path}'")[0]
    except OSError as e:
        raise DataError(f"cannot read '{path}': {e.strerror}") from None
    except (DecodeError, RuntimeError, ValueError, WeightsError):
        raise DataError(f"'{path}' is not {what}") from None


def read_mean_file(path: Path) -> np.ndarray:
    """A Caffe .binaryproto mean image as one float32 (C, H, W) array."""
    mean = read_binaryproto(path, "a Caffe .binaryproto mean file").astype(np.float32)
    if mean.ndim < 3 or math.prod(mean.shape[:-3]) != 1:
        raise DataError(f"mean file '{path}' holds a blob of shape {mean.shape}, not one C x H x W image")
    return mean.reshape(mean.shape[-3:])
