"""`netspec serve --grpc-port`: the Open Inference Protocol's GRPCInferenceService through a stock
tritonclient.grpc client and through a raw channel. Answers equal onnxruntime's exactly, in raw and typed
contents; every malformed message gets a gRPC status code naming what was wrong and the server keeps
serving; gRPC requests are batched with the rest, and batched answers equal unbatched ones.

Tests that need tritonclient say so in their names: tools/check_protobuf_range.py leaves them out at the
lowest protobuf netspec supports, which is older than the one tritonclient's own generated code needs."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import netspec
from netspec._proto import grpc_predict_v2_pb2 as pb
from netspec.deploy.grpc_service import CONTENTS
from tests.test_serve import GatedRuntime, _images, _metric, _wait_for, in_process
from tests.test_serve_repository import FACTORS, _write_model

Code = grpc.StatusCode


class GrpcServed:
    """A `netspec serve --grpc-port 0` process: its HTTP and gRPC ports, and a raw channel to the latter."""

    def __init__(self, model: Path, *args: str) -> None:
        """Serves `model` (a file or a repository folder); what it logs before it listens is in `log`."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netspec.cli", "serve", str(model), "--port", "0", "--grpc-port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.log: list[str] = []
        pattern = r"on http://127\.0\.0\.1:(\d+) and gRPC 127\.0\.0\.1:(\d+) "
        while not (found := re.search(pattern, line := self.proc.stderr.readline())):
            assert line, self.log
            self.log.append(line)
        self.port, self.grpc_port = int(found.group(1)), int(found.group(2))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")

    def call(self, method: str, request: Message | bytes, answer: type[Message] = pb.ModelInferResponse) -> Any:
        """The answer to one RPC of the service; `request` may be any bytes."""
        rpc = self.channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=answer.FromString,
        )
        return rpc(request, timeout=30)

    def stop(self) -> tuple[int, str]:
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def server(digits_onnx: Path) -> Iterator[GrpcServed]:
    """Two workers, so that both serve gRPC on the one port."""
    served = GrpcServed(digits_onnx, "--max-body-mb", "1", "--workers", "2")
    yield served
    code, err = served.stop()
    assert code == 0 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def reference(digits_onnx: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])


def _raw_request(x: np.ndarray, **fields: Any) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="digits",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="data", datatype="FP32", shape=x.shape)],
        raw_input_contents=[x.astype("<f4").tobytes()],
        **fields,
    )


def _typed_request(x: np.ndarray) -> pb.ModelInferRequest:
    value = pb.ModelInferRequest.InferInputTensor(name="data", datatype="FP32", shape=x.shape)
    value.contents.fp32_contents.extend(x.ravel().tolist())
    return pb.ModelInferRequest(model_name="digits", inputs=[value])


# ---- through tritonclient.grpc ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tritonclient(server: GrpcServed) -> Iterator[Any]:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


def test_tritonclient_health_and_metadata(tritonclient: Any) -> None:
    assert tritonclient.is_server_live() and tritonclient.is_server_ready()
    assert tritonclient.is_model_ready("digits") and tritonclient.is_model_ready("digits", "1")
    meta = tritonclient.get_server_metadata(as_json=True)
    assert meta == {"name": "netspec", "version": netspec.__version__}
    assert tritonclient.get_model_metadata("digits", as_json=True) == {
        "name": "digits",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "data", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}],
        "outputs": [{"name": "prob", "datatype": "FP32", "shape": ["-1", "10"]}],
    }


def test_tritonclient_inference_equals_onnxruntime_exactly(tritonclient: Any, reference: ort.InferenceSession) -> None:
    import tritonclient.grpc as triton

    for rows in (1, 5):
        x = _images(rows, seed=rows)
        value = triton.InferInput("data", list(x.shape), "FP32")
        value.set_data_from_numpy(x)
        result = tritonclient.infer("digits", [value], outputs=[triton.InferRequestedOutput("prob")], request_id="r7")
        response = result.get_response()
        assert (response.model_name, response.model_version, response.id) == ("digits", "1", "r7")
        assert len(response.raw_output_contents) == 1  # raw inputs: raw outputs
        np.testing.assert_array_equal(result.as_numpy("prob"), reference.run(None, {"data": x})[0])


def test_tritonclient_gets_the_servers_errors(tritonclient: Any) -> None:
    import tritonclient.grpc as triton

    x = _images(1).astype(np.float64)
    value = triton.InferInput("data", list(x.shape), "FP64")
    value.set_data_from_numpy(x)
    with pytest.raises(triton.InferenceServerException) as refused:
        tritonclient.infer("digits", [value])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert refused.value.message() == "input 'data' has datatype FP64; the model takes FP32"
    with pytest.raises(triton.InferenceServerException, match="unknown model 'nope'; this server serves 'digits'"):
        tritonclient.get_model_metadata("nope")


def test_tritonclient_and_netspec_messages_load_in_one_process() -> None:
    """Both define inference.ModelInferRequest; netspec's live in a descriptor pool of their own."""
    import tritonclient.grpc.service_pb2 as theirs

    request = _raw_request(_images(2), id="x")
    assert theirs.ModelInferRequest.FromString(request.SerializeToString()).id == "x"
    assert pb.ModelInferRequest.DESCRIPTOR.file.pool is not theirs.ModelInferRequest.DESCRIPTOR.file.pool


# ---- through a raw channel ---------------------------------------------------------------------------------


def test_typed_contents_both_ways(server: GrpcServed, reference: ort.InferenceSession) -> None:
    x = _images(3, seed=4)
    answer = server.call("ModelInfer", _typed_request(x))
    [out] = answer.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("prob", "FP32", [3, 10])
    assert not answer.raw_output_contents  # typed inputs: typed outputs
    got = np.array(out.contents.fp32_contents, dtype=np.float32).reshape(3, 10)
    np.testing.assert_array_equal(got, reference.run(None, {"data": x})[0])


def test_health_over_a_raw_channel(server: GrpcServed) -> None:
    assert server.call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live
    assert server.call("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse).ready
    ready = server.call("ModelReady", pb.ModelReadyRequest(name="digits"), pb.ModelReadyResponse)
    assert ready.ready


def _input(**fields: Any) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(
        **{"name": "data", "datatype": "FP32", "shape": [1, 1, 8, 8], **fields}
    )


ONE = _images(1).astype("<f4").tobytes()
BAD_REQUESTS = [
    (
        pb.ModelInferRequest(model_name="nope", inputs=[_input()], raw_input_contents=[ONE]),
        Code.NOT_FOUND,
        "unknown model 'nope'; this server serves 'digits'",
    ),
    (
        pb.ModelInferRequest(model_name="digits", model_version="2", inputs=[_input()], raw_input_contents=[ONE]),
        Code.NOT_FOUND,
        "unknown version '2' of model 'digits'; it has version 1",
    ),
    (pb.ModelInferRequest(model_name="digits"), Code.INVALID_ARGUMENT, "the request has no inputs"),
    (
        pb.ModelInferRequest(model_name="digits", inputs=[_input(datatype="INT8")], raw_input_contents=[ONE]),
        Code.INVALID_ARGUMENT,
        "input 'data' has datatype INT8; the model takes FP32",
    ),
    (
        pb.ModelInferRequest(model_name="digits", inputs=[_input(name="z")], raw_input_contents=[ONE]),
        Code.INVALID_ARGUMENT,
        "unknown input 'z'; the model takes: data",
    ),
    (
        pb.ModelInferRequest(model_name="digits", inputs=[_input(), _input()], raw_input_contents=[ONE, ONE]),
        Code.INVALID_ARGUMENT,
        "input 'data' is given twice",
    ),
    (
        pb.ModelInferRequest(model_name="digits", inputs=[_input(shape=[2, 1, 8, 8])], raw_input_contents=[ONE]),
        Code.INVALID_ARGUMENT,
        "input 'data' of shape [2, 1, 8, 8] and FP32 needs 512 bytes; its raw_input_contents has 256",
    ),
    (
        pb.ModelInferRequest(model_name="digits", inputs=[_input(shape=[1, 64])], raw_input_contents=[ONE]),
        Code.INVALID_ARGUMENT,
        "input 'data' has shape [1, 64]; the model takes [-1, 1, 8, 8] (-1: any size)",
    ),
    (
        pb.ModelInferRequest(model_name="digits", inputs=[_input(shape=[-1, 1, 8, 8])], raw_input_contents=[ONE]),
        Code.INVALID_ARGUMENT,
        "input 'data' has shape [-1, 1, 8, 8]; the model takes [-1, 1, 8, 8] (-1: any size)",
    ),
    (
        pb.ModelInferRequest(model_name="digits", inputs=[_input()], raw_input_contents=[ONE, ONE]),
        Code.INVALID_ARGUMENT,
        "the request has 1 inputs and 2 raw_input_contents; give every input's values there, in the order of "
        "the inputs, or none",
    ),
    (
        pb.ModelInferRequest(
            model_name="digits",
            inputs=[_input(contents=pb.InferTensorContents(fp32_contents=[1.0]))],
            raw_input_contents=[ONE],
        ),
        Code.INVALID_ARGUMENT,
        "input 'data' has both contents and raw_input_contents; give one",
    ),
    (
        pb.ModelInferRequest(
            model_name="digits", inputs=[_input(contents=pb.InferTensorContents(fp32_contents=[1, 2]))]
        ),
        Code.INVALID_ARGUMENT,
        "input 'data' of shape [1, 1, 8, 8] needs 64 values in contents.fp32_contents; it holds 2",
    ),
    (
        pb.ModelInferRequest(
            model_name="digits", inputs=[_input(contents=pb.InferTensorContents(int_contents=[1] * 64))]
        ),
        Code.INVALID_ARGUMENT,
        "input 'data' of shape [1, 1, 8, 8] needs 64 values in contents.fp32_contents; it holds 0 (values are in "
        "int_contents, not fp32_contents)",
    ),
    (
        pb.ModelInferRequest(
            model_name="digits",
            inputs=[_input()],
            raw_input_contents=[ONE],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
        ),
        Code.INVALID_ARGUMENT,
        "unknown output 'logits'; the model has: prob",
    ),
]


@pytest.mark.parametrize(("request_", "code", "message"), BAD_REQUESTS)
def test_a_bad_request_gets_its_code_and_reason(
    server: GrpcServed, request_: pb.ModelInferRequest, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        server.call("ModelInfer", request_)
    assert (refused.value.code(), refused.value.details()) == (code, message)  # type: ignore[attr-defined]


def test_metadata_of_an_unknown_model_is_not_found(server: GrpcServed) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        server.call("ModelMetadata", pb.ModelMetadataRequest(name="nope"), pb.ModelMetadataResponse)
    assert refused.value.code() == Code.NOT_FOUND  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "ServerLive"])
def test_bytes_that_are_no_message_are_an_invalid_argument(server: GrpcServed, method: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        server.call(method, b"\xff\xff\xff\xff garbage")
    assert (refused.value.code(), refused.value.details()) == (  # type: ignore[attr-defined]
        Code.INVALID_ARGUMENT,
        f"the request is not an inference.{method}Request message",
    )


def test_an_unknown_method_and_an_oversized_message(server: GrpcServed) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        server.call("ModelStreamInfer", b"")
    assert refused.value.code() == Code.UNIMPLEMENTED  # type: ignore[attr-defined]
    big = _images(4500)  # 1.15 MB, over --max-body-mb 1
    with pytest.raises(grpc.RpcError) as refused:
        server.call("ModelInfer", _raw_request(big))
    assert refused.value.code() == Code.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_hundreds_of_malformed_messages_get_codes_and_the_server_stays_up(server: GrpcServed) -> None:
    """Random bytes and valid requests with bytes flipped, cut or appended: each gets an answer or a code
    that blames the request (never INTERNAL or UNKNOWN), and the server's log has no traceback (checked when
    the module's server stops)."""
    rng = random.Random(12)
    good = _raw_request(_images(2), id="fuzz").SerializeToString()
    codes: dict[Any, int] = {}
    for i in range(300):
        data = bytearray(good)
        if i % 3 == 0:
            data = bytearray(rng.randbytes(rng.randrange(1, 200)))
        elif i % 3 == 1:
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data = data[: rng.randrange(len(data))] + rng.randbytes(rng.randrange(0, 8))
        try:
            server.call("ModelInfer", bytes(data))
            code = Code.OK
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
        codes[code] = codes.get(code, 0) + 1
    assert set(codes) <= {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND}, codes
    assert codes.get(Code.INVALID_ARGUMENT, 0) > 200, codes
    assert server.call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live


def _listening(server: GrpcServed) -> dict[str, bool]:
    """The server's worker processes, and whether each has a listening socket of its own on the gRPC port."""
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    inodes = set()
    table = Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]
    for line in table:  # grpcio listens on 127.0.0.1 through an IPv6 socket (::ffff:127.0.0.1)
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == server.grpc_port:  # 0A: LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    out = {}
    for pid in children:
        fds: list[Path] = []
        with contextlib.suppress(OSError):  # a process that has ended
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        sockets = set()
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile
                sockets.add(fd.readlink().name)
        out[pid] = bool(inodes & sockets)
    return out


def _dead(pid: str) -> bool:
    """Whether a process has ended (a zombie not yet reaped, or gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_every_worker_serves_grpc_on_the_port(server: GrpcServed) -> None:
    listening = _listening(server)
    assert list(listening.values()) == [True, True], listening


def test_a_killed_worker_is_replaced_and_grpc_keeps_answering(server: GrpcServed) -> None:
    victim, survivor = _listening(server)
    os.kill(int(victim), signal.SIGKILL)
    _wait_for(lambda: _dead(victim))  # connections queued on its socket die with it
    # a connection of its own: grpcio shares connections among a process's channels, and one made earlier to
    # the killed worker fails its next call (UNAVAILABLE, which clients retry)
    own = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=own) as channel:
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        assert live(pb.ServerLiveRequest(), timeout=30, wait_for_ready=True).live  # the survivor answers
    _wait_for(lambda: len(after := _listening(server)) == 2 and all(after.values()) and victim not in after)
    assert survivor in _listening(server)
    with _channel(server.grpc_port, own) as infer:
        request = _raw_request(_images(2))
        assert [list(infer(request, timeout=30).outputs[0].shape) for _ in range(8)] == [[2, 10]] * 8


def test_a_taken_grpc_port_is_a_clear_error(server: GrpcServed, digits_onnx: Path) -> None:
    args = ["serve", str(digits_onnx), "--port", "0", "--grpc-port", str(server.grpc_port), "--workers", "1"]
    done = subprocess.run([sys.executable, "-m", "netspec.cli", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.grpc_port}: Address already in use" in done.stderr
    assert "pick another --grpc-port" in done.stderr and "Traceback" not in done.stderr


# ---- batching ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _channel(port: int, options: list[tuple[str, Any]] | None = None) -> Iterator[Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
    try:
        yield channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
    finally:
        channel.close()


def test_grpc_and_http_requests_are_batched_and_answers_equal_unbatched_ones(digits_onnx: Path) -> None:
    from netspec.deploy.runtime import Runtime

    real = Runtime(str(digits_onnx))
    runtime = GatedRuntime(real)
    inputs = [_images(n, seed=30 + i) for i, n in enumerate([1, 3, 1, 2, 5])]
    with in_process(runtime, instances=1, grpc_port=0) as (server, port), _channel(server.grpc_port) as infer:  # type: ignore[attr-defined]
        answers: dict[int, Any] = {}

        def grpc_call(i: int) -> None:
            request = _raw_request(inputs[i])
            request.model_name = "m"
            answers[i] = infer(request, timeout=60)

        def http_call(i: int) -> None:
            x = inputs[i]
            doc = {"inputs": [{"name": "data", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v2/models/m/infer", json.dumps(doc))
            answers[i] = json.loads(conn.getresponse().read())
            conn.close()

        blocker = threading.Thread(target=grpc_call, args=(0,))
        blocker.start()
        _wait_for(lambda: server.metrics.value("netspec_requests_in_flight") == 1)  # type: ignore[attr-defined]
        rest = [threading.Thread(target=grpc_call if i != 2 else http_call, args=(i,)) for i in range(1, 5)]
        for t in rest:
            t.start()
        _wait_for(lambda: len(server.models.get("m").batcher.queue) == 4)  # type: ignore[attr-defined]
        runtime.gate.set()
        for t in [blocker, *rest]:
            t.join(60)
        metrics = server.metrics.text()  # type: ignore[attr-defined]
    assert runtime.runs == [1, 11]  # the blocker alone, then three gRPC requests and an HTTP one in one run
    for i, x in enumerate(inputs):
        want = real.run({"data": x})[0]
        if i == 2:
            got = np.array(answers[i]["outputs"][0]["data"], dtype=np.float32).reshape(want.shape)
        else:
            got = np.frombuffer(answers[i].raw_output_contents[0], dtype="<f4").reshape(
                list(answers[i].outputs[0].shape)
            )
        np.testing.assert_array_equal(got, want)
    m = {"model": "m", "version": "1"}
    assert _metric(metrics, "netspec_requests_total", **m, endpoint="grpc_model_infer", code="200") == 4
    assert _metric(metrics, "netspec_execution_count_total", **m) == 2


# ---- a model repository ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServed]:
    """Three models of two versions each (y = x * factor, a factor per version) and one that is not ONNX."""
    root = tmp_path_factory.mktemp("grpc_repository")
    for name, versions in FACTORS.items():
        for version, factor in versions.items():
            _write_model(root / name / version / "model.onnx", factor)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    served = GrpcServed(root, "--workers", "1")
    yield served
    code, err = served.stop()
    assert code == 0 and "Traceback" not in err, err


def test_tritonclient_reaches_every_model_and_version_of_a_repository(repository: GrpcServed) -> None:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{repository.grpc_port}")
    try:
        x = np.arange(6, dtype=np.float32).reshape(3, 2)
        value = triton.InferInput("x", [3, 2], "FP32")
        value.set_data_from_numpy(x)
        for name, versions in FACTORS.items():
            for version, factor in versions.items():
                assert client.is_model_ready(name, version)
                result = client.infer(name, [value], model_version=version)
                response = result.get_response()
                assert (response.model_name, response.model_version) == (name, version)
                np.testing.assert_array_equal(result.as_numpy("y"), x * np.float32(factor))
            latest = max(versions, key=int)
            assert client.infer(name, [value]).get_response().model_version == latest  # no version: the latest
            meta = client.get_model_metadata(name, as_json=True)
            assert meta["versions"] == sorted(versions, key=int)
        index = client.get_model_repository_index(as_json=True)["models"]
        assert index[0]["name"] == "broken" and index[0]["state"] == "UNAVAILABLE"
        assert index[0]["reason"].startswith("onnxruntime cannot load ")
        ready = [{"name": n, "version": v, "state": "READY"} for n in sorted(FACTORS) for v in FACTORS[n]]
        assert index[1:] == ready  # protobuf's JSON leaves out empty fields: no reason
        only_ready = repository.call(
            "RepositoryIndex", pb.RepositoryIndexRequest(ready=True), pb.RepositoryIndexResponse
        )
        assert [(m.name, m.version, m.state) for m in only_ready.models] == [tuple(r.values()) for r in ready]
        assert not client.is_model_ready("broken")
        with pytest.raises(triton.InferenceServerException) as refused:
            client.infer("broken", [value])
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert refused.value.message().startswith("model 'broken' has no version ready: onnxruntime cannot load")
        with pytest.raises(triton.InferenceServerException) as refused:
            client.infer("double", [value], model_version="7")
        assert (refused.value.status(), refused.value.message()) == (
            "StatusCode.NOT_FOUND",
            "unknown version '7' of model 'double'; it has versions 1, 2",
        )
        with pytest.raises(triton.InferenceServerException) as refused:
            client.is_model_ready("nope")
        assert (
            refused.value.message() == "unknown model 'nope'; this server serves 'broken', 'double', 'half', 'triple'"
        )
    finally:
        client.close()


def _small(rows: int) -> pb.ModelInferRequest:
    x = np.ones((rows, 2), dtype=np.float32)
    value = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
    return pb.ModelInferRequest(model_name="m", inputs=[value], raw_input_contents=[x.tobytes()])


def test_a_full_queue_is_unavailable_and_a_stop_lets_the_call_in_flight_finish() -> None:
    runtime = GatedRuntime()
    with (
        in_process(runtime, instances=1, max_queue_size=1, grpc_port=0) as (server, _),
        _channel(server.grpc_port) as infer,
    ):  # type: ignore[attr-defined]
        answers: list[Any] = []
        calls = [threading.Thread(target=lambda: answers.append(infer(_small(1), timeout=60))) for _ in range(2)]
        calls[0].start()
        _wait_for(lambda: server.metrics.value("netspec_requests_in_flight") == 1)  # type: ignore[attr-defined]
        calls[1].start()
        _wait_for(lambda: len(server.models.get("m").batcher.queue) == 1)  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as refused:
            infer(_small(1), timeout=60)
        assert (refused.value.code(), refused.value.details()) == (  # type: ignore[attr-defined]
            Code.UNAVAILABLE,
            "the server's queue holds 1 requests (--max-queue-size); retry later",
        )
        server.stopping.set()  # type: ignore[attr-defined]
        _wait_for(lambda: not server.ready)  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as refused:  # a stopping server takes no new call
            infer(_small(1), timeout=60)
        # grpcio cancels a call that arrives while its server stops, and refuses one that arrives after
        assert refused.value.code() in (Code.UNAVAILABLE, Code.CANCELLED)  # type: ignore[attr-defined]
        runtime.gate.set()
        for call in calls:
            call.join(60)
    assert [list(a.outputs[0].shape) for a in answers] == [[1, 2], [1, 2]]
    assert [np.frombuffer(a.raw_output_contents[0], "<f4").tolist() for a in answers] == [[2.0, 2.0]] * 2


# ---- every datatype ----------------------------------------------------------------------------------------

ONNX_TYPES = {
    "BOOL": "BOOL",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "FP16": "FLOAT16",
    "FP32": "FLOAT",
    "FP64": "DOUBLE",
}


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server of one model per datatype, named after it: y = x, of shape [-1, 3]."""
    from onnx import TensorProto, helper

    from netspec.deploy.repository import Batching, Repository
    from netspec.deploy.runtime import Runtime
    from netspec.deploy.serve import Server

    models = Repository(Batching(instances=2))
    for datatype, onnx_type in ONNX_TYPES.items():
        kind = getattr(TensorProto, onnx_type)
        x, y = (helper.make_tensor_value_info(n, kind, ["n", 3]) for n in "xy")
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        path = tmp_path_factory.mktemp("identity") / f"{datatype}.onnx"
        path.write_bytes(model.SerializeToString())
        models.add(datatype, "1", Runtime(str(path)))
    server = Server(models, 1 << 20, grpc_port=0)
    thread = threading.Thread(target=server.serve, args=("127.0.0.1", 0))
    thread.start()
    _wait_for(lambda: server.grpc is not None)
    with _channel(server.grpc_port) as infer:  # type: ignore[arg-type]
        yield infer
    server.stopping.set()
    thread.join(30)


def infer(channel: Any, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    return channel(request, timeout=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_datatype_travels_exactly_typed_and_raw(identities: Any, data: st.DataObject) -> None:
    from netspec.deploy.runtime import NUMPY_OF

    datatype = data.draw(st.sampled_from(sorted(ONNX_TYPES)), "datatype")
    dtype = np.dtype(NUMPY_OF[datatype])
    x = data.draw(hnp.arrays(dtype, st.tuples(st.integers(0, 4), st.just(3))), "x")
    raw = datatype == "FP16" or data.draw(st.booleans(), "raw")
    request = pb.ModelInferRequest(model_name=datatype)
    value = request.inputs.add(name="x", datatype=datatype, shape=x.shape)
    if raw:
        request.raw_input_contents.append(x.astype(dtype.newbyteorder("<")).tobytes())
    else:
        getattr(value.contents, CONTENTS[datatype]).extend(x.ravel().tolist())
    answer = infer(identities, request)
    [out] = answer.outputs
    assert (out.datatype, list(out.shape)) == (datatype, list(x.shape))
    if raw:
        got = np.frombuffer(answer.raw_output_contents[0], dtype=dtype.newbyteorder("<")).reshape(x.shape)
    else:
        assert not answer.raw_output_contents
        got = np.array(getattr(out.contents, CONTENTS[datatype]), dtype=dtype).reshape(x.shape)
    np.testing.assert_array_equal(got, x)  # NaNs in the same places
    if dtype.kind == "f":
        assert np.array_equal(np.signbit(got), np.signbit(x))  # -0.0 as -0.0


@pytest.mark.parametrize(
    ("datatype", "contents", "message"),
    [
        ("INT8", pb.InferTensorContents(int_contents=[1, 300, 3]), "out of INT8's range [-128, 127]"),
        ("UINT16", pb.InferTensorContents(uint_contents=[70000, 0, 0]), "out of UINT16's range [0, 65535]"),
        ("FP16", pb.InferTensorContents(fp32_contents=[1, 2, 3]), "FP16, which has no typed contents"),
    ],
)
def test_typed_values_a_datatype_cannot_hold_are_refused(
    identities: Any, datatype: str, contents: pb.InferTensorContents, message: str
) -> None:
    value = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=[1, 3], contents=contents)
    with pytest.raises(grpc.RpcError) as refused:
        infer(identities, pb.ModelInferRequest(model_name=datatype, inputs=[value]))
    assert refused.value.code() == Code.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert message in refused.value.details()  # type: ignore[attr-defined]
