"""Data layers learn their shapes from their sources as Caffe does; the Dataset layer splits reproducibly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec._proto import netspec_pb2 as pb
from netspec.data.datasets import load_arrays
from netspec.errors import DataError


def data_net(write_spec: Callable[..., str], layer: str, tops: str = 'top: "data" top: "label"') -> netspec.Net:
    return netspec.load(write_spec(f'layer {{ name: "d" {tops} {layer} }}'))


def test_bundled_and_generated_sets(write_spec: Callable[..., str]) -> None:
    net = data_net(write_spec, 'type: "Dataset" dataset_param { source: "digits" batch_size: 8 }')
    assert net.shapes == {"data": (8, 64), "label": (8,)}
    net = data_net(write_spec, 'type: "Dataset" dataset_param { source: "digits" batch_size: 8 '
                               'record_shape { dim: 1 dim: 8 dim: 8 } new_height: 28 new_width: 28 } '
                               'transform_param { crop_size: 24 }')
    assert net.shapes["data"] == (8, 1, 24, 24)
    net = data_net(write_spec, 'type: "Dataset" dataset_param { source: "blobs" num_features: 7 }')
    assert net.shapes["data"] == (32, 7)


def test_split_is_reproducible_disjoint_and_complete() -> None:
    p = pb.DatasetParameter(source="blobs", seed=3, num_samples=150, num_classes=3)
    train, train_y = load_arrays(p, ".", pb.TRAIN)
    test, _test_y = load_arrays(p, ".", pb.TEST)
    assert len(train) + len(test) == 150 and len(test) == 30
    assert not {tuple(r) for r in train} & {tuple(r) for r in test}
    again, _ = load_arrays(p, ".", pb.TEST)
    assert np.array_equal(test, again)
    assert train_y is not None and set(np.unique(train_y)) <= {0.0, 1.0, 2.0}
    iris, _ = load_arrays(pb.DatasetParameter(source="iris"), ".", pb.TEST)
    assert iris.shape == (30, 4)


def test_npz_npy_and_csv_files(tmp_path: Path, write_spec: Callable[..., str]) -> None:
    np.savez(tmp_path / "set.npz", data=np.zeros((10, 3, 5, 5), np.float32), label=np.arange(10))
    net = data_net(write_spec, f'type: "Dataset" dataset_param {{ source: "{tmp_path / "set.npz"}" batch_size: 4 }}')
    assert net.shapes == {"data": (4, 3, 5, 5), "label": (4,)}
    np.save(tmp_path / "x.npy", np.zeros((10, 6), np.float32))
    net = data_net(write_spec, f'type: "Dataset" dataset_param {{ source: "{tmp_path / "x.npy"}" batch_size: 4 }}',
                   'top: "data"')
    assert net.shapes == {"data": (4, 6)}
    (tmp_path / "t.csv").write_text("a,b,c,label\n1,2,3,0\n4,5,6,1\n")
    p = pb.DatasetParameter(source=str(tmp_path / "t.csv"), split=pb.DatasetParameter.ALL)
    data, labels = load_arrays(p, ".", pb.TRAIN)
    assert data.tolist() == [[1, 2, 3], [4, 5, 6]] and labels is not None and labels.tolist() == [0, 1]


def test_bad_csv_and_missing_arrays(tmp_path: Path, write_spec: Callable[..., str]) -> None:
    (tmp_path / "bad.csv").write_text("1,2,0\n3,x,1\n")
    with pytest.raises(DataError) as e:
        load_arrays(pb.DatasetParameter(source=str(tmp_path / "bad.csv")), ".", pb.TRAIN)
    assert e.value.msg == f"{tmp_path / 'bad.csv'}:2: 'x' is not a number"
    np.savez(tmp_path / "nolabel.npz", data=np.zeros((4, 2)))
    with pytest.raises(DataError) as e2:
        data_net(write_spec, f'type: "Dataset" dataset_param {{ source: "{tmp_path / "nolabel.npz"}" }}')
    assert e2.value.msg == f"'{tmp_path / 'nolabel.npz'}' has no labels for the second top"


def test_image_folder(tmp_path: Path, write_spec: Callable[..., str]) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (6, 4), (i * 50, 0, 0)).save(tmp_path / cls / f"{i}.png")
    net = data_net(write_spec, f'type: "Dataset" dataset_param {{ source: "{tmp_path}" batch_size: 2 }}')
    assert net.shapes == {"data": (2, 3, 4, 6), "label": (2,)}
    data, labels = load_arrays(pb.DatasetParameter(source=str(tmp_path), split=pb.DatasetParameter.ALL), ".", 0)
    assert data.shape == (4, 3, 4, 6) and labels is not None and labels.tolist() == [0, 0, 1, 1]


def test_caffe_data_layers_read_their_first_record(tmp_path: Path, write_spec: Callable[..., str]) -> None:
    import h5py
    import lmdb
    from PIL import Image

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"0", pb.Datum(channels=3, height=32, width=30, data=bytes(3 * 32 * 30), label=1).SerializeToString())
    env.close()
    net = data_net(write_spec, f'type: "Data" transform_param {{ crop_size: 28 mean_value: 1 mean_value: 2 '
                               f'mean_value: 3 }} data_param {{ source: "{tmp_path / "db"}" batch_size: 5 backend: LMDB }}')
    assert net.shapes == {"data": (5, 3, 28, 28), "label": (5,)}

    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.zeros((7, 4, 2), np.float32)
        f["label"] = np.zeros((7,), np.float32)
    (tmp_path / "list.txt").write_text("a.h5\n")
    net = data_net(write_spec, f'type: "HDF5Data" hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 3 }}')
    assert net.shapes == {"data": (3, 4, 2), "label": (3,)}

    Image.new("L", (9, 7)).save(tmp_path / "img.png")
    (tmp_path / "images.txt").write_text("img.png 3\n")
    net = data_net(write_spec, f'type: "ImageData" image_data_param {{ source: "{tmp_path / "images.txt"}" '
                               f'root_folder: "{tmp_path}/" batch_size: 2 is_color: false }}')
    assert net.shapes == {"data": (2, 1, 7, 9), "label": (2,)}


@pytest.mark.parametrize(("mode", "force", "channels"), [
    ("RGBA", "", 3), ("P", "", 3), ("LA", "", 1), ("L", "", 1), ("L", "force_color: true", 3),
    ("RGB", "force_gray: true", 1)])
def test_encoded_records_decode_as_caffe_does_in_check_and_training(tmp_path: Path, write_spec: Callable[..., str],
                                                                    mode: str, force: str, channels: int) -> None:
    # OpenCV's IMREAD_ANYCOLOR: grey stays grey, anything else (alpha, palette) is three channels
    import io

    import lmdb
    from PIL import Image

    from netspec.data.records import DatumRecords

    buf = io.BytesIO()
    Image.new(mode, (5, 4), 7 if mode in ("L", "P") else (7,) * len(mode)).save(buf, "PNG")
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"0", pb.Datum(data=buf.getvalue(), encoded=True, label=2).SerializeToString())
    env.close()
    net = data_net(write_spec, f'type: "Data" transform_param {{ {force} }} data_param {{ source: "{tmp_path / "db"}" '
                               'batch_size: 2 backend: LMDB }')
    assert net.shapes["data"] == (2, channels, 4, 5)
    image, label = DatumRecords(net.layers[0].node.spec).read(0)
    assert image.shape == (channels, 4, 5) and label == 2


def test_force_gray_leaves_raw_records_alone_as_caffe_does(tmp_path: Path, write_spec: Callable[..., str]) -> None:
    import lmdb

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"0", pb.Datum(channels=3, height=2, width=2, data=bytes(12)).SerializeToString())
    env.close()
    net = data_net(write_spec, f'type: "Data" transform_param {{ force_gray: true }} data_param {{ source: '
                               f'"{tmp_path / "db"}" batch_size: 2 backend: LMDB }}')
    assert net.shapes["data"] == (2, 3, 2, 2)


def test_mean_values_must_match_channels(tmp_path: Path, write_spec: Callable[..., str]) -> None:
    with pytest.raises(netspec.NetspecError) as e:
        data_net(write_spec, 'type: "MemoryData" transform_param { mean_value: 1 mean_value: 2 } '
                             'memory_data_param { batch_size: 2 channels: 3 height: 4 width: 4 }')
    assert e.value.msg == "2 mean_value entries for 3 channels; give 1 or 3"


def test_hdf5_output_appends_every_batch(tmp_path: Path, write_spec: Callable[..., str]) -> None:
    import h5py

    out = tmp_path / "out.h5"
    net = netspec.load(write_spec(
        'layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n'
        f'layer {{ name: "save" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param {{ file_name: "{out}" }} }}'))
    module = netspec.compile(net)
    for _ in range(2):
        module(x=torch.ones(2, 3), y=torch.zeros(2))
    with h5py.File(out) as f:
        assert f["data"].shape == (4, 3) and f["label"].shape == (4,)
