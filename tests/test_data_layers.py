"""Data layers learn their shapes from their sources as Caffe does; the Dataset layer splits reproducibly."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec._proto import netspec_pb2 as pb
from netspec.data.datasets import load_arrays
from netspec.errors import DataError, ParamError
from netspec.files import output_folder


def data_net(write_spec: Callable[..., str], layer: str, tops: str = 'top: "data" top: "label"') -> netspec.Net:
    return netspec.load(write_spec(f'layer {{ name: "d" {tops} {layer} }}'))


def test_bundled_and_generated_sets(write_spec: Callable[..., str]) -> None:
    net = data_net(write_spec, 'type: "Dataset" dataset_param { source: "digits" batch_size: 8 }')
    assert net.shapes == {"data": (8, 64), "label": (8,)}
    net = data_net(
        write_spec,
        'type: "Dataset" dataset_param { source: "digits" batch_size: 8 '
        "record_shape { dim: 1 dim: 8 dim: 8 } new_height: 28 new_width: 28 } "
        "transform_param { crop_size: 24 }",
    )
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
    net = data_net(
        write_spec, f'type: "Dataset" dataset_param {{ source: "{tmp_path / "x.npy"}" batch_size: 4 }}', 'top: "data"'
    )
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
    net = data_net(
        write_spec,
        f'type: "Data" transform_param {{ crop_size: 28 mean_value: 1 mean_value: 2 '
        f'mean_value: 3 }} data_param {{ source: "{tmp_path / "db"}" batch_size: 5 backend: LMDB }}',
    )
    assert net.shapes == {"data": (5, 3, 28, 28), "label": (5,)}

    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.zeros((7, 4, 2), np.float32)
        f["label"] = np.zeros((7,), np.float32)
    (tmp_path / "list.txt").write_text("a.h5\n")
    net = data_net(
        write_spec, f'type: "HDF5Data" hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 3 }}'
    )
    assert net.shapes == {"data": (3, 4, 2), "label": (3,)}

    Image.new("L", (9, 7)).save(tmp_path / "img.png")
    (tmp_path / "images.txt").write_text("img.png 3\n")
    net = data_net(
        write_spec,
        f'type: "ImageData" image_data_param {{ source: "{tmp_path / "images.txt"}" '
        f'root_folder: "{tmp_path}/" batch_size: 2 is_color: false }}',
    )
    assert net.shapes == {"data": (2, 1, 7, 9), "label": (2,)}


@pytest.mark.parametrize(
    ("mode", "force", "channels"),
    [
        ("RGBA", "", 4),
        ("P", "", 3),
        ("LA", "", 4),
        ("L", "", 1),
        ("L", "force_color: true", 3),
        ("RGB", "force_gray: true", 1),
    ],
)
def test_encoded_records_decode_as_caffe_does_in_check_and_training(
    tmp_path: Path, write_spec: Callable[..., str], mode: str, force: str, channels: int
) -> None:
    # Caffe decodes with OpenCV's IMREAD_UNCHANGED: grey stays grey, palette is BGR, alpha is kept (BGRA), as
    # real Caffe's compute_image_mean makes four channels of RGBA and grey-with-alpha PNGs
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
    net = data_net(
        write_spec,
        f'type: "Data" transform_param {{ {force} }} data_param {{ source: "{tmp_path / "db"}" '
        "batch_size: 2 backend: LMDB }",
    )
    assert net.shapes["data"] == (2, channels, 4, 5)
    image, label = DatumRecords(net.layers[0].node.spec).read(0)
    assert image.shape == (channels, 4, 5) and label == 2


def test_force_gray_leaves_raw_records_alone_as_caffe_does(tmp_path: Path, write_spec: Callable[..., str]) -> None:
    import lmdb

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"0", pb.Datum(channels=3, height=2, width=2, data=bytes(12)).SerializeToString())
    env.close()
    net = data_net(
        write_spec,
        f'type: "Data" transform_param {{ force_gray: true }} data_param {{ source: '
        f'"{tmp_path / "db"}" batch_size: 2 backend: LMDB }}',
    )
    assert net.shapes["data"] == (2, 3, 2, 2)


def test_mean_values_must_match_channels(tmp_path: Path, write_spec: Callable[..., str]) -> None:
    with pytest.raises(netspec.NetspecError) as e:
        data_net(
            write_spec,
            'type: "MemoryData" transform_param { mean_value: 1 mean_value: 2 } '
            "memory_data_param { batch_size: 2 channels: 3 height: 4 width: 4 }",
        )
    assert e.value.msg == "2 mean_value entries for 3 channels; give 1 or 3"


def hdf5_output_net(write_spec: Callable[..., str], file_name: str) -> str:
    return write_spec(
        'layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n'
        f'layer {{ name: "save" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param {{ file_name: "{file_name}" }} }}'
    )


def test_hdf5_output_appends_every_batch_inside_the_output_folder(
    tmp_path: Path, write_spec: Callable[..., str]
) -> None:
    import h5py

    module = netspec.compile(netspec.load(hdf5_output_net(write_spec, "preds/out.h5")))
    with output_folder(tmp_path / "run"):
        for _ in range(2):
            module(x=torch.ones(2, 3), y=torch.zeros(2))
    with h5py.File(tmp_path / "run" / "preds" / "out.h5") as f:
        assert f["data"].shape == (4, 3) and f["label"].shape == (4,)


def test_encoded_records_of_16_bit_images_need_a_forced_decoding(
    tmp_path: Path, write_spec: Callable[..., str]
) -> None:
    # Caffe decodes them to 16 bits (IMREAD_UNCHANGED) and its transformer stops: "Image data type must be
    # unsigned byte"; force_gray or force_color decode to 8 bits
    import io

    import lmdb
    from PIL import Image

    from netspec.data.records import DatumRecords

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 5), 40000, np.uint16)).save(buf, "PNG")
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"0", pb.Datum(data=buf.getvalue(), encoded=True, label=2).SerializeToString())
    env.close()
    layer = f'type: "Data" data_param {{ source: "{tmp_path / "db"}" batch_size: 2 backend: LMDB }}'
    with pytest.raises(DataError) as e:
        data_net(write_spec, layer)
    assert e.value.msg == (
        "encoded records hold I;16 images (more than 8 bits a value), which Caffe's Data layer "
        "refuses unless they are decoded to 8 bits"
    )
    net = data_net(write_spec, layer + " transform_param { force_gray: true }")
    image, _ = DatumRecords(net.layers[0].node.spec).read(0)
    assert image.shape == (1, 4, 5) and image.max() == 40000 >> 8  # OpenCV keeps the high byte


@pytest.mark.parametrize(
    ("file_name", "problem"),
    [
        ("../out.h5", "goes up through '..'"),
        ("a/../../out.h5", "goes up through '..'"),
        ("/tmp/out.h5", "is an absolute path"),
        ("/dev/null", "is an absolute path"),
    ],
)
def test_hdf5_output_never_writes_outside_the_output_folder(
    write_spec: Callable[..., str], file_name: str, problem: str
) -> None:
    with pytest.raises(ParamError) as e:
        netspec.load(hdf5_output_net(write_spec, file_name))
    assert e.value.msg == f"file_name '{file_name}' {problem}; HDF5Output writes only inside the run's output folder"
    assert e.value.layer == "save" and e.value.loc is not None and e.value.loc.line == 2


def _h5_with_other_data(target: Path) -> None:
    import h5py

    with h5py.File(target, "w") as f:
        f["data"] = np.zeros((1, 5), np.float32)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (Path.mkdir, "HDF5Output file '{target}' is a folder, not a file"),
        (
            lambda t: t.symlink_to("/dev/null"),
            "HDF5Output file '{target}' is a character device; netspec opens only regular files",
        ),
        (
            lambda t: t.write_text("not HDF5"),
            "cannot append to HDF5Output file '{target}': Unable to synchronously open file (file signature not found)",
        ),
        (
            _h5_with_other_data,
            "HDF5Output file '{target}' already holds 'data' as (1, 5), which batches of shape (2, 3) cannot be appended to",
        ),
    ],
    ids=["folder", "device", "not-hdf5", "other-shape"],
)
def test_hdf5_output_to_a_file_it_cannot_append_to(
    tmp_path: Path, write_spec: Callable[..., str], make: Callable[[Path], object], expected: str
) -> None:
    module = netspec.compile(netspec.load(hdf5_output_net(write_spec, "out.h5")))
    target = tmp_path / "out.h5"
    make(target)
    with pytest.raises(DataError) as e, output_folder(tmp_path):
        module(x=torch.ones(2, 3), y=torch.zeros(2))
    assert e.value.msg == expected.format(target=target)


SPECIAL_SOURCES = [  # (layer, the path it names relative to tmp_path, what the path is, the expected message)
    (
        'type: "Dataset" dataset_param { source: "PATH/zero.npy" }',
        "zero.npy",
        "zero",
        "dataset_param.source 'PATH/zero.npy' is a character device; netspec opens only regular files",
    ),
    (
        'type: "Dataset" dataset_param { source: "PATH/pipe" }',
        "pipe",
        "fifo",
        "dataset_param.source 'PATH/pipe' is a FIFO (named pipe); netspec opens only regular files and folders",
    ),
    (
        'type: "HDF5Data" hdf5_data_param { source: "PATH/list.txt" batch_size: 2 }',
        "list.txt",
        "fifo",
        "hdf5_data_param.source 'PATH/list.txt' is a FIFO (named pipe); netspec opens only regular files",
    ),
    (
        'type: "HDF5Data" hdf5_data_param { source: "PATH/list.txt" batch_size: 2 }',
        "a.h5",
        "zero",
        "HDF5 file 'PATH/a.h5' is a character device; netspec opens only regular files",
    ),
    (
        'type: "ImageData" image_data_param { source: "PATH/list.txt" root_folder: "PATH/" batch_size: 2 }',
        "a.h5",
        "zero",
        "image 'PATH/a.h5' is a character device; netspec opens only regular files",
    ),
    (
        'type: "Data" data_param { source: "PATH/db" batch_size: 2 backend: LMDB }',
        "db",
        "zero",
        "data_param.source 'PATH/db' is a character device; netspec opens only regular files and folders",
    ),
    (
        'type: "Data" data_param { source: "PATH/db" batch_size: 2 backend: LEVELDB }',
        "db",
        "file",
        "data_param.source 'PATH/db' is a file, not a folder",
    ),
]


@pytest.mark.parametrize(
    ("layer", "name", "kind", "expected"),
    SPECIAL_SOURCES,
    ids=["npy-device", "folder-fifo", "list-fifo", "listed-device", "image-device", "lmdb-device", "leveldb-file"],
)
def test_data_sources_are_regular_files_or_folders(
    tmp_path: Path, write_spec: Callable[..., str], layer: str, name: str, kind: str, expected: str
) -> None:
    """A device never ends and a FIFO blocks: reading either would hang or fill the memory."""
    (tmp_path / "list.txt").write_text("a.h5\n")
    path = tmp_path / name
    path.unlink(missing_ok=True)
    {
        "zero": lambda: path.symlink_to("/dev/zero"),
        "fifo": lambda: os.mkfifo(path),
        "file": lambda: path.write_text(""),
    }[kind]()
    with pytest.raises(DataError) as e:
        data_net(write_spec, layer.replace("PATH", str(tmp_path)))
    assert e.value.msg == expected.replace("PATH", str(tmp_path))
    assert e.value.layer == "d" and e.value.loc is not None


def test_a_mean_file_must_be_a_regular_file(tmp_path: Path) -> None:
    from netspec.data.probe import resolve

    (tmp_path / "mean.binaryproto").symlink_to("/dev/zero")
    with pytest.raises(DataError) as e:
        resolve("mean.binaryproto", str(tmp_path), "transform_param.mean_file")
    assert e.value.msg == (
        f"transform_param.mean_file '{tmp_path / 'mean.binaryproto'}' is a character device; "
        "netspec opens only regular files"
    )


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_an_array_header_larger_than_its_file_is_refused_before_allocating(tmp_path: Path, suffix: str) -> None:
    import io
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 3), np.float32))
    header["shape"] = (2**40, 3)  # 12 TiB declared, 24 bytes held
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    array = buffer.getvalue() + bytes(24)
    path = tmp_path / f"huge{suffix}"
    if suffix == ".npy":
        path.write_bytes(array)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data.npy", array)
    with pytest.raises(DataError) as e:
        load_arrays(pb.DatasetParameter(source=str(path)), ".", pb.TRAIN)
    where = f"'{path}'" + (" (data.npy)" if suffix == ".npz" else "")
    assert (
        e.value.msg
        == f"{where} declares an array of shape (1099511627776, 3) (13194139533312 bytes) but holds 24 bytes"
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            "source: 'blobs' num_classes: 2147483648",
            "num_classes 2147483648 x 2 features makes 4,294,967,296 values; "
            "a generated set holds at most 134,217,728 (512 MiB)",
        ),
        (
            "source: 'blobs' num_features: 100000 num_samples: 10000",
            "num_samples 10000 x 100000 features makes 1,000,000,000 values; a generated set holds at most 134,217,728 "
            "(512 MiB)",
        ),
        (
            "source: 'spirals' num_samples: 4294967295",
            "num_samples 4294967295 x 2 features makes 8,589,934,590 values; "
            "a generated set holds at most 134,217,728 (512 MiB)",
        ),
    ],
)
def test_generated_sets_are_bounded(write_spec: Callable[..., str], params: str, expected: str) -> None:
    with pytest.raises(ParamError) as e:
        data_net(write_spec, f'type: "Dataset" dataset_param {{ {params} }}')
    assert e.value.msg == expected


def test_sources_loaded_whole_must_fit_the_memory_limit(
    tmp_path: Path, write_spec: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressed file of a few kB can hold gigabytes of zeros: the size is checked before reading."""
    import h5py

    from netspec.data.feeder import Feeder

    monkeypatch.setenv("NETSPEC_MAX_MEMORY_MB", "1")
    np.savez_compressed(tmp_path / "zeros.npz", data=np.zeros((512, 1024), np.float32), label=np.zeros(512))
    with pytest.raises(DataError) as e:
        load_arrays(pb.DatasetParameter(source=str(tmp_path / "zeros.npz")), ".", pb.TRAIN)
    assert e.value.msg == (
        f"'{tmp_path / 'zeros.npz'}' holds 524,800 values (2 MiB as float32), more than the 1 MiB "
        "netspec loads into memory"
    )
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((512, 1024), np.float32), compression="gzip")
    (tmp_path / "list.txt").write_text("a.h5\n")
    net = data_net(
        write_spec,
        f'type: "HDF5Data" hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 2 }}',
        'top: "data"',
    )
    with pytest.raises(DataError) as e:
        Feeder(net, torch.device("cpu"), seed=0)
    assert e.value.msg == (
        f"hdf5_data_param.source '{tmp_path / 'list.txt'}' (up to '{tmp_path / 'a.h5'}') holds 524,288 "
        "values (2 MiB as float32), more than the 1 MiB netspec loads into memory"
    )
    monkeypatch.setenv("NETSPEC_MAX_MEMORY_MB", "lots")
    with pytest.raises(DataError) as e:
        Feeder(net, torch.device("cpu"), seed=0)
    assert e.value.msg == "NETSPEC_MAX_MEMORY_MB must be a whole number of MiB, got 'lots'"
