"""`netspec serve DIR`: a model repository in Triton's layout, through a real server (two worker processes)
and tritonclient.http: every model and version is served, the latest READY version by default, the index
lists each version's state, and a model that cannot be loaded is skipped with its reason. Then the parts
under it: how a folder is read, the session slots the models share, and the queue timeout."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from netspec.deploy.repository import Batching, ModelNotFound, ModelUnavailable, Repository
from netspec.deploy.runtime import Batcher, QueueTimeout, Runtime, Slots
from netspec.errors import NetspecError
from tests.test_serve import GatedRuntime, Served, _doc, _reply, _send_all, _wait_for, in_process

# name -> version -> the factor its model multiplies by (each version answers differently)
FACTORS = {"double": {"1": 2.0, "2": 20.0}, "triple": {"2": 3.0, "10": 30.0}, "half": {"1": 0.5, "3": 5.0}}


def _write_model(path: Path, factor: float) -> None:
    """y = x * factor, for x of shape [-1, 2]: a model onnxruntime loads in a millisecond."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [factor])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three models of two versions each (versions 2 and 10: numbers, not strings, order them), a plain
    NAME.onnx, and a version whose model.onnx is not ONNX."""
    root = tmp_path_factory.mktemp("repository")
    for name, versions in FACTORS.items():
        for version, factor in versions.items():
            _write_model(root / name / version / "model.onnx", factor)
    (root / "half" / "notes").mkdir()  # not a number: not a version
    (root / "half" / "config.pbtxt").write_text("")  # Triton's configuration: not read
    _write_model(root / "plain.onnx", 7.0)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    (root / "README.md").write_text("not a model")
    return root


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[Served]:
    """The repository behind two worker processes."""
    served = Served(folder, "--workers", "2")
    yield served
    code, err = served.stop()
    assert code == 0 and "Traceback" not in err, err


def _infer(served: Served, path: str, rows: int = 1) -> tuple[int, dict]:
    x = np.arange(2 * rows, dtype=np.float32).reshape(rows, 2)
    doc = {"inputs": [{"name": "x", "shape": [rows, 2], "datatype": "FP32", "data": x.ravel().tolist()}]}
    return served.json("POST", path, doc)


def test_the_index_lists_every_version_with_its_state(server: Served, folder: Path) -> None:
    served = server
    status, index = served.json("POST", "/v2/repository/index")
    assert status == 200
    broken = index.pop(0)
    assert broken["name"] == "broken" and broken["version"] == "1" and broken["state"] == "UNAVAILABLE"
    assert broken["reason"].startswith(f"onnxruntime cannot load '{folder / 'broken' / '1' / 'model.onnx'}': ")
    assert index == [
        {"name": "double", "version": "1", "state": "READY", "reason": ""},
        {"name": "double", "version": "2", "state": "READY", "reason": ""},
        {"name": "half", "version": "1", "state": "READY", "reason": ""},
        {"name": "half", "version": "3", "state": "READY", "reason": ""},
        {"name": "plain", "version": "1", "state": "READY", "reason": ""},
        {"name": "triple", "version": "2", "state": "READY", "reason": ""},
        {"name": "triple", "version": "10", "state": "READY", "reason": ""},
    ]
    assert served.json("POST", "/v2/repository/index", {"ready": True}) == (200, index)
    # the skipped model is logged once (by one worker of the two), before the server listens
    assert served.log == [f"netspec serve: model 'broken' version 1 is not served: {broken['reason']}\n"]


def test_each_version_answers_and_the_latest_is_the_default(server: Served) -> None:
    served = server
    for name, versions in FACTORS.items():
        for version, factor in versions.items():
            status, doc = _infer(served, f"/v2/models/{name}/versions/{version}/infer", rows=2)
            assert status == 200 and (doc["model_name"], doc["model_version"]) == (name, version)
            assert doc["outputs"][0]["data"] == [v * factor for v in range(4)]
            assert served.json("GET", f"/v2/models/{name}/versions/{version}/ready") == (
                200,
                {"name": name, "ready": True},
            )
        latest = max(versions, key=int)
        status, doc = _infer(served, f"/v2/models/{name}/infer")
        assert (status, doc["model_version"], doc["outputs"][0]["data"]) == (
            200,
            latest,
            [0.0, versions[latest]],
        )
    status, doc = _infer(served, "/v2/models/plain/infer")
    assert (status, doc["model_version"], doc["outputs"][0]["data"]) == (200, "1", [0.0, 7.0])


def test_metadata_of_a_model_lists_its_versions(server: Served) -> None:
    served = server
    tensors = {
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }
    assert served.json("GET", "/v2/models/triple") == (200, {"name": "triple", "versions": ["2", "10"], **tensors})
    assert served.json("GET", "/v2/models/triple/versions/2") == (
        200,
        {"name": "triple", "versions": ["2"], **tensors},
    )


def test_unknown_and_unavailable_models_are_told_apart(server: Served) -> None:
    served = server
    known = "'broken', 'double', 'half', 'plain', 'triple'"
    assert _infer(served, "/v2/models/nope/infer") == (
        404,
        {"error": f"unknown model 'nope'; this server serves {known}"},
    )
    assert _infer(served, "/v2/models/triple/versions/3/infer") == (
        404,
        {"error": "unknown version '3' of model 'triple'; it has versions 2, 10"},
    )
    status, doc = _infer(served, "/v2/models/broken/infer")
    assert status == 503 and doc["error"].startswith("model 'broken' has no version ready: onnxruntime cannot load")
    status, doc = _infer(served, "/v2/models/broken/versions/1/infer")
    assert status == 503 and doc["error"].startswith("model 'broken' version 1 is unavailable: onnxruntime cannot")
    assert served.json("GET", "/v2/models/broken/ready") == (503, {"name": "broken", "ready": False})
    assert served.json("GET", "/v2/repository/index") == (
        405,
        {"error": "/v2/repository/index takes POST, not GET"},
    )
    assert served.json("POST", "/v2/repository/index", {"ready": "yes"}) == (
        400,
        {"error": 'the repository index takes an optional {"ready": true|false}'},
    )


def test_tritonclient_against_a_repository_model(server: Served) -> None:
    import tritonclient.http as triton

    served = server
    client = triton.InferenceServerClient(f"127.0.0.1:{served.port}")
    try:
        assert client.is_model_ready("half", "1") and client.is_model_ready("half")
        assert not client.is_model_ready("broken")
        assert [(m["name"], m["version"]) for m in client.get_model_repository_index()][:3] == [
            ("broken", "1"),
            ("double", "1"),
            ("double", "2"),
        ]
        assert client.get_model_metadata("half")["versions"] == ["1", "3"]
        x = np.array([[1.0, -2.0], [3.0, 4.0]], dtype=np.float32)
        for version, binary in (("1", True), ("3", False), ("", True)):
            given = triton.InferInput("x", list(x.shape), "FP32")
            given.set_data_from_numpy(x, binary_data=binary)
            result = client.infer("half", [given], model_version=version)
            factor = FACTORS["half"][version or "3"]
            np.testing.assert_array_equal(result.as_numpy("y"), x * np.float32(factor))
            assert result.get_response()["model_version"] == (version or "3")
    finally:
        client.close()


def test_curl_with_a_large_json_body(server: Served, tmp_path: Path) -> None:
    x = (np.arange(300_000, dtype=np.float32) % 7).reshape(-1, 2)  # over 1 MiB of JSON: curl sends Expect
    doc = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    (tmp_path / "body").write_text(json.dumps(doc))
    assert (tmp_path / "body").stat().st_size > 2**20
    url = f"http://127.0.0.1:{server.port}/v2/models/triple/versions/10/infer"
    run = subprocess.run(
        ["curl", "-sS", "-v", "--data-binary", f"@{tmp_path / 'body'}", "-H", "Content-Type: application/json", url],
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 0 and b"< HTTP/1.1 100 Continue" in run.stderr, run.stderr
    answer = json.loads(run.stdout)
    assert (answer["model_version"], answer["outputs"][0]["shape"]) == ("10", [150_000, 2])
    np.testing.assert_array_equal(np.array(answer["outputs"][0]["data"], dtype=np.float32), x.ravel() * 30)


# ---- reading a folder ------------------------------------------------------------------------------------


def test_what_a_folder_holds_and_what_is_skipped(tmp_path: Path) -> None:
    _write_model(tmp_path / "a" / "1" / "model.onnx", 1.0)
    _write_model(tmp_path / "a.onnx", 1.0)  # the folder a/ is served, not this
    (tmp_path / "empty").mkdir()
    (tmp_path / "nofile" / "4").mkdir(parents=True)
    (tmp_path / ".hidden" / "1").mkdir(parents=True)
    models = Repository.load(str(tmp_path), threads=1)
    assert models.index() == [
        {"name": "a", "version": "", "state": "UNAVAILABLE", "reason": "a.onnx is not served: the folder a/ is"},
        {"name": "a", "version": "1", "state": "READY", "reason": ""},
        {
            "name": "empty",
            "version": "",
            "state": "UNAVAILABLE",
            "reason": "empty/ has no version folder (empty/1/model.onnx)",
        },
        {"name": "nofile", "version": "4", "state": "UNAVAILABLE", "reason": "nofile/4/ has no model.onnx"},
    ]
    assert models.get("a").version == models.get("a", "1").version == models.get("a", "01").version == "1"
    with pytest.raises(ModelUnavailable, match=r"^model 'nofile' has no version ready: nofile/4/ has no model\.onnx$"):
        models.get("nofile")
    with pytest.raises(ModelNotFound, match=r"^unknown version '2' of model 'a'; it has version 1$"):
        models.get("a", "2")


def test_a_folder_that_cannot_be_served_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(NetspecError) as caught:
        Repository.load(str(tmp_path))
    assert (
        caught.value.msg
        == f"no model in '{tmp_path}' can be served; model 'x': x/ has no version folder (x/1/model.onnx)"
    )
    with pytest.raises(NetspecError) as caught:
        Repository.load(str(tmp_path), name="m")
    assert caught.value.msg == (
        f"--name names a single model; '{tmp_path}' is a model repository, whose folder and file names are the "
        "models' names"
    )


# ---- the batchers of many models ---------------------------------------------------------------------------


def test_models_share_the_session_slots(tmp_path: Path) -> None:
    """With one slot for two models, a request to the second waits while the first runs: the models of a
    worker never compute more runs at once than --instances."""
    slots = Slots(1)
    first, second = GatedRuntime(), GatedRuntime()
    second.gate.set()
    a, b = Batcher(first, slots), Batcher(second, slots)  # type: ignore[arg-type]
    answers: list[list[np.ndarray]] = []
    running = threading.Thread(target=lambda: answers.append(a.run({"x": np.ones((1, 2), np.float32)}, ["y"])))
    running.start()
    _wait_for(lambda: slots.free == 0)
    waiting = threading.Thread(target=lambda: answers.append(b.run({"x": np.ones((2, 2), np.float32)}, ["y"])))
    waiting.start()
    _wait_for(lambda: len(b.queue) == 1)
    assert second.runs == []  # its session is free, but the worker's only slot is not
    first.gate.set()
    running.join(30)
    waiting.join(30)
    assert (first.runs, second.runs, slots.free) == ([1], [2], 1)
    assert sorted(len(out[0]) for out in answers) == [1, 2]


# ---- the queue timeout -------------------------------------------------------------------------------------


def test_a_request_queued_too_long_gets_503() -> None:
    runtime = GatedRuntime()
    with in_process(runtime, instances=1, queue_timeout=0.2) as (server, port):
        blocker = _doc("x", np.ones((1, 2)))
        server.port = port  # type: ignore[attr-defined]
        replies: list[tuple[int, dict]] = []
        # the gate stays closed until the queued request has its answer: it cannot have run
        sender = threading.Thread(target=lambda: replies.extend(_send_all(port, [_doc("x", np.ones((1, 2)))])))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(blocker)
            _wait_for(lambda: server.metrics.value("netspec_requests_in_flight") == 1)  # type: ignore[attr-defined]
            sender.start()
            sender.join(30)
            [(status, doc)] = replies
            assert status == 503
            assert re.fullmatch(
                r"the request waited \d+ ms in the queue, longer than 200 ms \(--queue-timeout-ms\); retry later",
                doc["error"],
            ), doc
            waited = int(doc["error"].split()[3])
            assert 200 <= waited < 30_000
            runtime.gate.set()
            assert _reply(s)[0] == 200
    assert runtime.runs == [1]  # the blocker only


def test_the_queue_deadline_counts_from_each_requests_own_arrival() -> None:
    """Two requests queue behind a busy slot, the second 1 s after the first; when the first times out (at
    1.5 s) the second is still waiting, and runs once the slot is free."""
    runtime = GatedRuntime()
    batcher = Batcher(runtime, 1, queue_timeout=1.5)  # type: ignore[arg-type]
    outcomes: dict[str, object] = {}

    def send(key: str, x: np.ndarray) -> None:
        try:
            outcomes[key] = batcher.run({"x": x}, ["y"])[0].tolist()
        except QueueTimeout as e:
            outcomes[key] = e

    threads = [threading.Thread(target=send, args=("blocker", np.ones((1, 2), np.float32)))]
    threads[0].start()
    _wait_for(lambda: batcher.slots.free == 0)
    threads.append(threading.Thread(target=send, args=("first", np.full((1, 2), 2, np.float32))))
    threads[-1].start()
    _wait_for(lambda: len(batcher.queue) == 1)
    threading.Event().wait(1.0)
    threads.append(threading.Thread(target=send, args=("second", np.full((1, 2), 3, np.float32))))
    threads[-1].start()
    _wait_for(lambda: "first" in outcomes)
    assert isinstance(outcomes["first"], QueueTimeout)
    assert len(batcher.queue) == 1 and "second" not in outcomes
    runtime.gate.set()
    for t in threads:
        t.join(30)
    assert outcomes["blocker"] == [[2.0, 2.0]] and outcomes["second"] == [[6.0, 6.0]]


def test_a_repository_of_one_file_is_the_model_as_before(tmp_path: Path) -> None:
    _write_model(tmp_path / "scale.onnx", 4.0)
    models = Repository.load(str(tmp_path / "scale.onnx"), name="s", batching=Batching(instances=1))
    assert [(m.name, m.version) for m in models.models()] == [("s", "1")]
    assert models.metadata("s")["versions"] == ["1"]
    assert isinstance(models.get("s").runtime, Runtime)
