"""`netspec serve` through real HTTP clients: a stock tritonclient.http client, and raw requests over a
socket. Bad requests of every kind get a 4xx JSON error naming what was wrong, and the server keeps
serving; SIGTERM lets a request in flight finish."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import netspec
from tests.conftest import DIGIT_LABELS

LABELS = DIGIT_LABELS


class Served:
    """A `netspec serve` process on a free port."""

    def __init__(self, model: Path, *args: str, preexec_fn: Callable[[], None] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netspec.cli", "serve", str(model), "--port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        assert self.proc.stderr is not None
        self.log: list[str] = []  # what it said before it listened (a repository's skipped models)
        while not (found := re.search(r"on http://127\.0\.0\.1:(\d+) ", line := self.proc.stderr.readline())):
            assert line, self.log
            self.log.append(line)
        self.port = int(found.group(1))

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, doc: object = None) -> tuple[int, dict]:
        status, _, body = self.request(method, path, None if doc is None else json.dumps(doc).encode())
        return status, json.loads(body)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def model(digits_onnx: Path) -> Path:
    return digits_onnx


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[Served]:
    served = Served(model, "--max-body-mb", "1", "--workers", "1")
    yield served
    code, err = served.stop()
    assert code == 0 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def reference(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, (n, 1, 8, 8)).astype(np.float32)


def _binary_header(x: np.ndarray, request: dict[str, object]) -> bytes:
    """The JSON part of a Triton binary-tensor request carrying `x` as the input 'data' (its bytes follow)."""
    data = {"name": "data", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
    return json.dumps({"inputs": [data], **request}).encode()


def _metric(text: str | bytes, name: str, **labels: str) -> float:
    """One sample of a /metrics page, read with prometheus-client's parser (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = text.decode() if isinstance(text, bytes) else text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def _infer_doc(x: np.ndarray, **extra: object) -> dict:
    return {
        "inputs": [{"name": "data", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        **extra,
    }


# ---- the protocol ----------------------------------------------------------------------------------------


def test_health_and_server_metadata(server: Served) -> None:
    assert server.json("GET", "/v2/health/live") == (200, {"live": True})
    assert server.json("GET", "/v2/health/ready") == (200, {"ready": True})
    assert server.json("GET", "/v2") == (
        200,
        {"name": "netspec", "version": netspec.__version__, "extensions": ["binary_tensor_data"]},
    )


def test_model_metadata(server: Served) -> None:
    meta = {
        "name": "digits",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "data", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "prob", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert server.json("GET", "/v2/models/digits") == (200, meta)
    assert server.json("GET", "/v2/models/digits/versions/1") == (200, meta)
    assert server.json("GET", "/v2/models/digits/ready") == (200, {"name": "digits", "ready": True})


def test_json_inference_equals_onnxruntime(server: Served, reference: ort.InferenceSession) -> None:
    x = _images(3)
    status, doc = server.json("POST", "/v2/models/digits/infer", _infer_doc(x, id="req-7"))
    assert status == 200
    assert doc["model_name"] == "digits" and doc["model_version"] == "1" and doc["id"] == "req-7"
    [out] = doc["outputs"]
    assert out["name"] == "prob" and out["datatype"] == "FP32" and out["shape"] == [3, 10]
    want = reference.run(["prob"], {"data": x})[0]
    np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(3, 10), want, rtol=1e-6, atol=1e-7)


def test_nested_data_is_accepted(server: Served, reference: ort.InferenceSession) -> None:
    x = _images(2, seed=1)
    doc = {"inputs": [{"name": "data", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": x.tolist()}]}
    status, answer = server.json("POST", "/v2/models/digits/infer", doc)
    assert status == 200
    np.testing.assert_allclose(answer["outputs"][0]["data"], reference.run(None, {"data": x})[0].ravel(), rtol=1e-6)


def test_binary_tensors_both_ways(server: Served, reference: ort.InferenceSession) -> None:
    x = _images(4, seed=2)
    header = _binary_header(x, {"outputs": [{"name": "prob", "parameters": {"binary_data": True}}]})
    status, headers, body = server.request(
        "POST",
        "/v2/models/digits/infer",
        header + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200
    n = int(headers["inference-header-content-length"])
    doc = json.loads(body[:n])
    assert doc["outputs"] == [
        {"name": "prob", "datatype": "FP32", "shape": [4, 10], "parameters": {"binary_data_size": 160}}
    ]
    got = np.frombuffer(body[n:], dtype="<f4").reshape(4, 10)
    np.testing.assert_allclose(got, reference.run(None, {"data": x})[0], rtol=1e-6)


def test_tritonclient(server: Served, reference: ort.InferenceSession) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        assert meta["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        x = _images(5, seed=3)
        want = reference.run(None, {"data": x})[0]
        for binary in (True, False):
            value = triton.InferInput("data", list(x.shape), "FP32")
            value.set_data_from_numpy(x, binary_data=binary)
            result = client.infer("digits", [value], outputs=[triton.InferRequestedOutput("prob", binary_data=binary)])
            np.testing.assert_allclose(result.as_numpy("prob"), want, rtol=1e-6)
        with pytest.raises(triton.InferenceServerException, match="unknown model 'nope'"):
            client.get_model_metadata("nope")
    finally:
        client.close()


def test_metrics_count_requests_errors_and_latency(server: Served) -> None:
    _, _, before = server.request("GET", "/metrics")
    for _ in range(3):
        server.json("POST", "/v2/models/digits/infer", _infer_doc(_images(1)))
    server.request("POST", "/v2/models/digits/infer", b"{")
    server.request("GET", "/v2/models/nope")
    status, headers, after = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"

    def change(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    digits = {"model": "digits", "version": "1"}
    assert change("netspec_requests_total", **digits, endpoint="infer", code="200") == 3
    assert change("netspec_requests_total", **digits, endpoint="error", code="400") == 1
    assert change("netspec_requests_total", model="", version="", endpoint="error", code="404") == 1  # no model
    assert change("netspec_request_errors_total", **digits) == 1
    assert change("netspec_request_errors_total", model="", version="") == 1
    for name in (
        "netspec_inference_count_total",
        "netspec_execution_count_total",
        "netspec_queue_seconds_count",
        "netspec_compute_seconds_count",
        "netspec_batch_size_count",
    ):
        assert change(name, **digits) == 3, name  # one client: nothing to batch
    assert change("netspec_batch_size_bucket", **digits, le="1.0") == 3
    assert change("netspec_batch_size_sum", **digits) == 3
    assert "# TYPE netspec_compute_seconds histogram" in after.decode()


def test_label_values_are_escaped_in_the_scrape() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    name = 'say "hi"\\now\n'  # a quote, a backslash and a newline
    runtime = GatedRuntime()
    runtime.gate.set()
    with in_process(runtime, name) as (_, port):
        head, _, body = _raw(port, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    families = list(text_string_to_metric_families(body.decode()))
    assert {s.labels.get("model") for f in families for s in f.samples} == {None, name}  # None: the gauge


def test_a_model_name_is_percent_decoded_from_the_path() -> None:
    """Clients quote a name's spaces and slashes in URLs (tritonclient does); each path segment is decoded
    after the split, so an encoded slash stays inside the name."""
    runtime = GatedRuntime()
    runtime.gate.set()
    name = "le net/v1"
    with in_process(runtime, name) as (_, port):
        head, _, body = _raw(port, b"GET /v2/models/le%20net%2Fv1 HTTP/1.1\r\nHost: a\r\n\r\n").partition(b"\r\n\r\n")
        missing = _raw(port, b"GET /v2/models/le%20net/v1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert json.loads(body)["name"] == name
    assert missing.startswith(b"HTTP/1.1 404 "), missing


def test_label_values_survive_the_workers_shared_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Multiprocess mode keeps label values in its files' keys and reads them back for every scrape."""
    from prometheus_client import values
    from prometheus_client.parser import text_string_to_metric_families

    from netspec.deploy.metrics import Metrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())  # what a worker's import chooses
    name = 'say "hi"\\now\n'
    metrics = Metrics()
    metrics.model(name, "1")
    metrics.request(name, "1", "infer", 200)
    text = metrics.text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{kind}_{os.getpid()}.db" for kind in ("counter", "gauge_livesum", "histogram")
    ]
    families = list(text_string_to_metric_families(text.decode()))
    assert {s.labels.get("model") for f in families for s in f.samples} == {None, name}
    assert _metric(text, "netspec_requests_total", model=name, version="1", endpoint="infer", code="200") == 1


def test_a_metrics_folder_that_is_not_one_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from netspec.deploy.metrics import Metrics
    from netspec.errors import DataError

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "none"))
    with pytest.raises(DataError) as caught:
        Metrics()
    assert caught.value.msg == f"PROMETHEUS_MULTIPROC_DIR names '{tmp_path / 'none'}', which is not a folder"


# ---- bad requests ----------------------------------------------------------------------------------------

GOOD = {"name": "data", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
BAD_REQUESTS = [
    ("GET", "/v2/models/nope", None, {}, 404, "unknown model 'nope'; this server serves 'digits'"),
    ("GET", "/v2/models/digits/versions/2", None, {}, 404, "unknown version '2' of model 'digits'; it has version 1"),
    (
        "GET",
        "/v3/health",
        None,
        {},
        404,
        "no endpoint '/v3/health'; this server speaks the Open Inference Protocol under /v2",
    ),
    ("GET", "/v2/models/digits/infer", None, {}, 405, "/v2/models/digits/infer takes POST, not GET"),
    ("POST", "/v2/health/live", b"", {}, 405, "/v2/health/live takes GET, not POST"),
    ("POST", "/v2/models/digits/infer", b"{not json", {}, 400, "the request body is not valid JSON"),
    ("POST", "/v2/models/digits/infer", b"[1, 2]", {}, 400, "the request must be a JSON object with an 'inputs' list"),
    ("POST", "/v2/models/digits/infer", {"inputs": []}, {}, 400, "the request needs a non-empty 'inputs' list"),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "name": "image"}]},
        {},
        400,
        "unknown input 'image'; the model takes: data",
    ),
    ("POST", "/v2/models/digits/infer", {"inputs": [GOOD, GOOD]}, {}, 400, "input 'data' is given twice"),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "shape": [1, 8, 8]}]},
        {},
        400,
        "input 'data' has shape [1, 8, 8]; the model takes [-1, 1, 8, 8] (-1: any size)",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "shape": [1, 1, 8, -8]}]},
        {},
        400,
        "input 'data' needs 'shape', a list of non-negative integers",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "datatype": "INT64"}]},
        {},
        400,
        "input 'data' has datatype INT64; the model takes FP32",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "data": [0.0] * 65}]},
        {},
        400,
        "input 'data' of shape [1, 1, 8, 8] needs 64 values; 'data' holds 65",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "data": ["a"] * 64}]},
        {},
        400,
        "input 'data': 'data' must hold FP32 numbers in nested or flat lists of one shape",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "data": None}]},
        {},
        400,
        "input 'data' needs 'data' (a list) or binary data",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [GOOD], "outputs": [{"name": "loss"}]},
        {},
        400,
        "unknown output 'loss'; the model has: prob",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "data": None, "parameters": {"binary_data_size": 256}}]},
        {},
        400,
        "input 'data' claims 256 bytes of binary data, but only 0 remain",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "data": None, "parameters": {"binary_data_size": 8}}]},
        {},
        400,
        "input 'data' of shape [1, 1, 8, 8] and FP32 needs 256 bytes; binary_data_size says 8",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        b"{}",
        {"Inference-Header-Content-Length": "99"},
        400,
        "Inference-Header-Content-Length 99 is beyond the 2-byte body",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        b"[" * 10_000 + b"]" * 10_000,
        {},
        400,
        "the request's JSON is nested too deeply",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        json.dumps({"inputs": [{**GOOD, "data": [float("nan")] * 64}]}).encode(),
        {},
        400,
        "the request body is not valid JSON",
    ),
    ("POST", "/v2/models/digits/infer", {"inputs": [GOOD], "id": 7}, {}, 400, "the request's 'id' must be a string"),
    (
        "POST",
        "/v2/models/digits/infer",
        b"x" * (2**20 + 1),
        {},
        413,
        "the request body has 1048577 bytes; this server takes at most 1048576 (--max-body-mb)",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"), BAD_REQUESTS, ids=[m for *_, m in BAD_REQUESTS]
)
def test_bad_request_gets_its_reason(
    server: Served, method: str, path: str, body: object, headers: dict, status: int, message: str
) -> None:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    got, reply_headers, reply = server.request(method, path, data, headers)
    assert (got, json.loads(reply)) == (status, {"error": message})
    assert reply_headers["content-type"] == "application/json"


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"hello\r\n\r\n", 400, "malformed HTTP request: Invalid method encountered"),
        (b"GET /v2 SPDY/3\r\nHost: a\r\n\r\n", 400, "malformed HTTP request: Expected HTTP/, RTSP/ or ICE/"),
        (b"GET /v2 HTTP/1.1\r\n\r\n", 400, "the request has no Host header"),
        (
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nContent-Length: ten\r\n\r\n",
            400,
            "malformed HTTP request: Invalid character in Content-Length",
        ),
        (
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            400,
            "malformed HTTP request: Duplicate Content-Length",
        ),
        (
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            400,
            "malformed HTTP request: Duplicate Content-Length",
        ),
        (
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 3\r\n\r\n{}",
            400,
            "malformed HTTP request: Invalid character in Content-Length",
        ),
        (
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
            "malformed HTTP request: Request has invalid `Transfer-Encoding`",
        ),
        (
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
            b"0\r\n\r\nGET /v2 HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "malformed HTTP request: Content-Length can't be present with Transfer-Encoding",
        ),
        (b"GET /v2 HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n", 400, "malformed HTTP request: Invalid header token"),
        (
            b"GET /v2 HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"a" * 70000 + b"\r\n\r\n",
            431,
            "the request's headers are larger than 64 KiB",
        ),
        (
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n"
            + b"x" * 0x100001
            + b"\r\n0\r\n\r\n",
            413,
            "the request body has more than 1048576 bytes; this server takes at most that (--max-body-mb)",
        ),
    ],
)
def test_malformed_http_gets_its_reason(server: Served, data: bytes, status: int, message: str) -> None:
    reply = _raw(server.port, data)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert json.loads(body) == {"error": message}


def _malformed(rng: random.Random) -> bytes:
    """A request the server must refuse: a broken line, header or body of one of many kinds."""
    kind = rng.randrange(6)
    if kind == 0:
        return (
            bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 200))).replace(b"\r\n\r\n", b"") + b"\r\n\r\n"
        )
    if kind == 1:
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    elif kind == 2:
        doc = {**GOOD, "shape": [rng.randrange(0, 4) for _ in range(rng.randrange(0, 6))]}
        body = json.dumps({"inputs": [doc]}).encode()
    elif kind == 3:
        doc = {**GOOD, rng.choice(["name", "datatype", "data", "shape"]): rng.choice([None, 3, "x", [], {}, [[1], 2]])}
        body = json.dumps({"inputs": [doc]}).encode()
    elif kind == 4:
        text = json.dumps({"inputs": [GOOD]})
        cut = rng.randrange(1, len(text) - 1)
        body = text[:cut].encode()
    else:
        method = rng.choice(["GET", "PUT", "DELETE", "PATCH"])
        return f"{method} /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".encode()
    return f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_a_thousand_malformed_requests_all_get_4xx_and_the_server_stays_up(server: Served) -> None:
    rng = random.Random(1234)
    statuses = []
    for _ in range(1000):
        reply = _raw(server.port, _malformed(rng))
        found = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
        assert found, reply[:200]
        statuses.append(int(found.group(1)))
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]
    assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert server.json("GET", "/v2/health/ready") == (200, {"ready": True})
    assert server.json("POST", "/v2/models/digits/infer", _infer_doc(_images(1)))[0] == 200


def test_keep_alive_connection_serves_many_requests(server: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for i in range(20):
            conn.request("POST", "/v2/models/digits/infer", body=json.dumps(_infer_doc(_images(1, i), id=str(i))))
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["id"] == str(i)
            assert response.getheader("Connection") == "keep-alive"
    finally:
        conn.close()


def _reply(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response read off a raw socket (with Content-Length framing)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)) and (chunk := s.recv(65536)):
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _json_body(x: np.ndarray) -> bytes:
    return json.dumps(_infer_doc(x)).encode()


def test_chunked_request_body(server: Served, reference: ort.InferenceSession) -> None:
    x = _images(2, seed=5)
    body = _json_body(x)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 700]), body[i : i + 700]) for i in range(0, len(body), 700))
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks
            + b"0\r\n\r\n"
        )
        status, _, reply = _reply(s)
    assert status == 200
    np.testing.assert_array_equal(json.loads(reply)["outputs"][0]["data"], reference.run(None, {"data": x})[0].ravel())


def test_expect_100_continue(server: Served, reference: ort.InferenceSession) -> None:
    x = _images(1, seed=6)
    body = _json_body(x)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        status, headers, reply = _reply(s)
        assert status == 200 and headers["connection"] == "keep-alive"
        np.testing.assert_array_equal(
            json.loads(reply)["outputs"][0]["data"], reference.run(None, {"data": x})[0].ravel()
        )
        # too large: refused at once, without 100 Continue, and the body is never awaited
        s.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 2000000\r\n\r\n"
        )
        status, headers, reply = _reply(s)
    assert (status, headers["connection"]) == (413, "close")
    assert json.loads(reply) == {
        "error": "the request body has 2000000 bytes; this server takes at most 1048576 (--max-body-mb)"
    }


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_a_large_body(server: Served, reference: ort.InferenceSession, tmp_path: Path) -> None:
    x = _images(4000, seed=8)  # curl asks before sending a body this large (1 MB), as it does over 1 MiB
    header = _binary_header(x, {"parameters": {"binary_data_output": True}})
    (tmp_path / "body").write_bytes(header + x.tobytes())
    run = subprocess.run(
        [
            "curl",
            "-sS",
            "-v",
            "--data-binary",
            f"@{tmp_path / 'body'}",
            "-H",
            "Expect: 100-continue",
            "-H",
            f"Inference-Header-Content-Length: {len(header)}",
            "-D",
            str(tmp_path / "headers"),
            "-o",
            str(tmp_path / "out"),
            f"http://127.0.0.1:{server.port}/v2/models/digits/infer",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and "< HTTP/1.1 100 Continue" in run.stderr, run.stderr
    headers = (tmp_path / "headers").read_text().lower()
    n = int(re.search(r"inference-header-content-length: (\d+)", headers).group(1))  # type: ignore[union-attr]
    got = np.frombuffer((tmp_path / "out").read_bytes()[n:], dtype="<f4").reshape(4000, 10)
    np.testing.assert_array_equal(got, reference.run(None, {"data": x})[0])


@pytest.mark.parametrize("connection", ["keep-alive, close", "Close", "upgrade , CLOSE"])
def test_connection_token_lists(server: Served, connection: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(f"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nConnection: {connection}\r\n\r\n".encode())
        status, headers, body = _reply(s)
        assert (status, headers["connection"], body) == (200, "close", b'{"live":true}')
        assert s.recv(10) == b""  # the server closed the connection


def test_pipelined_requests_are_answered_in_order(server: Served) -> None:
    reply = _raw(
        server.port,
        b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\nGET /v2/models/digits/ready HTTP/1.1\r\n"
        b"Host: a\r\n\r\nHEAD /v2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    answers = []
    for head_only in (False, False, True):
        head, _, reply = reply.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        body, reply = (b"", reply) if head_only else (reply[:length], reply[length:])
        answers.append((head.split(b" ")[1], body, head.endswith(b"Connection: close")))
    assert answers == [
        (b"200", b'{"live":true}', False),
        (b"200", b'{"name":"digits","ready":true}', False),
        (b"405", b"", True),
    ]  # HEAD: the headers of the GET's 405, no body
    assert reply == b""


def test_an_upgrade_is_answered_over_http_1_1(server: Served) -> None:
    reply = _raw(
        server.port,
        b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 ") and b"Connection: close\r\n" in reply and reply.endswith(b'{"live":true}')


def test_http_1_0_is_answered_and_closed(server: Served) -> None:
    reply = _raw(server.port, b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b'{"live":true}')


def test_nan_outputs_are_refused_as_json_and_sent_as_binary(server: Served) -> None:
    x = np.full((1, 1, 8, 8), np.inf, dtype=np.float32)
    for binary in (False, True):
        header = _binary_header(x, {"parameters": {"binary_data_output": binary}})
        status, headers, body = server.request(
            "POST",
            "/v2/models/digits/infer",
            header + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(header))},
        )
        if not binary:
            assert (status, json.loads(body)) == (
                500,
                {
                    "error": "output 'prob' holds NaN or infinite values, which "
                    "JSON cannot carry; ask for it as binary data "
                    "(binary_data_output)"
                },
            )
        else:
            n = int(headers["inference-header-content-length"])
            assert status == 200 and np.isnan(np.frombuffer(body[n:], dtype="<f4")).all()


def test_concurrent_clients_get_their_own_answers(server: Served, reference: ort.InferenceSession) -> None:
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def client(seed: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        end = time.monotonic() + 3
        i = 0
        while time.monotonic() < end:
            x = _images(1 + i % 3, seed * 1000 + i)
            conn.request("POST", "/v2/models/digits/infer", body=json.dumps(_infer_doc(x)))
            response = conn.getresponse()
            doc = json.loads(response.read())
            got = np.array(doc["outputs"][0]["data"], dtype=np.float32).reshape(-1, 10)
            if response.status != 200 or not np.allclose(got, reference.run(None, {"data": x})[0], rtol=1e-5):
                with lock:
                    errors.append(f"client {seed} request {i}: {response.status}")
            i += 1
        conn.close()
        with lock:
            done[0] += i

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and done[0] > 8


# ---- lifecycle -------------------------------------------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish(model: Path) -> None:
    served = Served(model, "--instances", "1", "--workers", "1")
    x = _images(20000)  # a batch that takes onnxruntime a noticeable time
    header = _binary_header(x, {"parameters": {"binary_data_output": True}})
    result: dict[str, object] = {}

    def slow() -> None:
        result["reply"] = served.request(
            "POST",
            "/v2/models/digits/infer",
            header + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(header))},
        )

    thread = threading.Thread(target=slow)
    thread.start()
    deadline = time.monotonic() + 30
    answering = False
    while not answering and time.monotonic() < deadline:  # wait until the request is being answered
        _, _, metrics = served.request("GET", "/metrics")
        answering = _metric(metrics, "netspec_requests_in_flight") == 2  # it and this one
    assert answering
    code, err = served.stop()
    thread.join(30)
    status, headers, body = result["reply"]  # type: ignore[misc]
    assert status == 200 and headers["connection"] == "close"
    n = int(headers["inference-header-content-length"])
    assert len(body) - n == 20000 * 10 * 4
    assert code == 0 and "Traceback" not in err, err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", served.port), timeout=5)


def test_missing_model_and_busy_port_are_clear_errors(model: Path, server: Served, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "netspec.cli", "serve", str(tmp_path / "none.onnx")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stderr == f"error: model file '{tmp_path / 'none.onnx'}' does not exist\n"
    run = subprocess.run(
        [sys.executable, "-m", "netspec.cli", "serve", str(model), "--port", str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"error: cannot listen on 127.0.0.1:{server.port}: ")
    assert run.stderr.endswith("Address already in use\n  hint: pick another --port (0 takes a free one)\n")


def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    run = subprocess.run(
        [sys.executable, "-m", "netspec.cli", "serve", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"error: onnxruntime cannot load '{bad}': ")
    assert run.stderr.endswith("hint: export it with `netspec export SPEC --onnx FILE`\n")


# ---- hostile clients (in-process servers with small limits) ------------------------------------------------


class GatedRuntime:
    """A stand-in for onnxruntime (or a wrapper of a real one) whose runs wait for the test to open the gate,
    so requests stay in flight and queue up for as long as a test needs. It records the rows of each run,
    and fails a run holding a negative value (a request that passes the server's checks and fails in the
    session)."""

    def __init__(self, real: object = None) -> None:
        from netspec.deploy.runtime import Tensor

        self.real = real
        self.inputs = real.inputs if real else [Tensor("x", "FP32", (-1, -1))]  # type: ignore[attr-defined]
        self.outputs = real.outputs if real else [Tensor("y", "FP32", (-1, -1))]  # type: ignore[attr-defined]
        self.gate = threading.Event()
        self.runs: list[int] = []

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        assert self.gate.wait(30)
        [x] = feeds.values()
        self.runs.append(len(x))
        if (x < 0).any():
            raise ValueError("negative values")
        return self.real.run(feeds, outputs) if self.real else [x * 2]  # type: ignore[attr-defined]


@contextlib.contextmanager
def in_process(runtime: object, name: str = "m", **options: object) -> Iterator[tuple[object, int]]:
    """A server of `runtime` as model `name` version 1 on a free port; `options`: Batching's and Server's."""
    import dataclasses

    from netspec.deploy.repository import Batching, Repository
    from netspec.deploy.serve import Server

    fields = {f.name for f in dataclasses.fields(Batching)}
    models = Repository(Batching(**{"instances": 4, **{k: v for k, v in options.items() if k in fields}}))  # type: ignore[arg-type]
    models.add(name, "1", runtime)  # type: ignore[arg-type]
    server = Server(models, **{"max_body": 1 << 20, **{k: v for k, v in options.items() if k not in fields}})  # type: ignore[arg-type]
    bound: list[int] = []
    thread = threading.Thread(target=server.serve, args=("127.0.0.1", 0, lambda host, port: bound.append(port)))
    thread.start()
    try:
        for _ in range(3000):
            if bound:
                break
            time.sleep(0.01)
        yield server, bound[0]
    finally:
        server.stopping.set()
        if hasattr(runtime, "gate"):
            runtime.gate.set()
        thread.join(30)
    assert not thread.is_alive()


def _wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def _small_infer(rows: int, value: float = 1.0) -> bytes:
    body = json.dumps({"inputs": [{"name": "x", "shape": [rows, 2], "datatype": "FP32", "data": [value] * (2 * rows)}]})
    return (f"POST /v2/models/m/infer HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


def test_slow_clients_cannot_lock_others_out() -> None:
    with in_process(GatedRuntime(), max_connections=20) as (server, port):
        slow = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(20)]
        for s in slow:
            s.sendall(b"P")  # a request begun, never finished (slowloris)
        _wait_for(lambda: len(server.connections) == 20)
        for _ in range(5):
            reply = _raw(port, b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b'{"live":true}')
        closed = 0
        for s in slow:
            s.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                closed += s.recv(10) == b""
            s.close()
        assert 1 <= closed <= 5  # each newcomer displaced the slowest unless a finished one had left


def test_a_request_must_arrive_within_the_read_timeout() -> None:
    with (
        in_process(GatedRuntime(), read_timeout=0.3) as (_, port),
        socket.create_connection(("127.0.0.1", port), timeout=30) as s,
    ):
        s.sendall(b"GET /v2 HT")
        time.sleep(0.2)
        s.sendall(b"T")  # trickling bytes does not extend the deadline
        status, headers, body = _reply(s)
    assert (status, headers["connection"]) == (408, "close")
    assert json.loads(body) == {"error": "the request did not arrive within 0.3 s"}


def test_every_client_over_the_limit_gets_a_readable_503() -> None:
    runtime = GatedRuntime()
    with in_process(runtime, max_connections=4) as (server, port):
        busy = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
        for s in busy:
            s.sendall(_small_infer(1))
        _wait_for(lambda: server.metrics.value("netspec_requests_in_flight") == 4)
        replies: list[bytes] = [b""] * 40
        threads = [
            threading.Thread(target=lambda i: replies.__setitem__(i, _raw(port, _small_infer(3))), args=(i,))
            for i in range(40)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for reply in replies:
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), reply[:100]
            assert json.loads(body) == {"error": "the server has 4 open connections; retry later"}
        runtime.gate.set()
        for s in busy:
            status, _, body = _reply(s)
            assert (status, json.loads(body)["outputs"][0]["data"]) == (200, [2.0, 2.0])
            s.close()


# ---- dynamic batching ------------------------------------------------------------------------------------


def _send_all(port: int, requests: list[bytes]) -> list[tuple[int, dict]]:
    """Sends each request on its own connection (all at once) and returns the answers in order."""
    replies: list[tuple[int, dict]] = [(0, {})] * len(requests)

    def one(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(requests[i])
            status, _, body = _reply(s)
            replies[i] = (status, json.loads(body))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return replies


def _queued(server: object, runtime: GatedRuntime, first: bytes, rest: list[bytes]) -> list[tuple[int, dict]]:
    """Blocks the only session slot with `first`, queues `rest` behind it, then opens the gate."""
    port = server.port  # type: ignore[attr-defined]
    blocker = socket.create_connection(("127.0.0.1", port), timeout=30)
    blocker.sendall(first)
    _wait_for(lambda: server.metrics.value("netspec_requests_in_flight") == 1)  # type: ignore[attr-defined]
    replies: list[tuple[int, dict]] = []
    sender = threading.Thread(target=lambda: replies.extend(_send_all(port, rest)))
    sender.start()
    _wait_for(lambda: len(server.models.get("m").batcher.queue) == len(rest))  # type: ignore[attr-defined]
    runtime.gate.set()
    sender.join(60)
    assert _reply(blocker)[0] == 200
    blocker.close()
    return replies


def _doc(name: str, x: np.ndarray, model: str = "m") -> bytes:
    body = json.dumps(
        {
            "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "parameters": {"binary_data_output": False},
        }
    )
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


def test_batched_answers_equal_unbatched_ones_exactly(model: Path) -> None:
    from netspec.deploy.runtime import Runtime

    real = Runtime(str(model))
    runtime = GatedRuntime(real)
    inputs = [_images(n, seed=20 + i) for i, n in enumerate([1, 3, 1, 2, 5])]
    with in_process(runtime, instances=1) as (server, port):
        server.port = port  # type: ignore[attr-defined]
        replies = _queued(server, runtime, _doc("data", _images(1), "m"), [_doc("data", x) for x in inputs[1:]])
    assert runtime.runs == [1, 11]  # the blocker alone, then the four waiting requests in one run
    for x, (status, doc) in zip(inputs[1:], replies, strict=True):
        assert status == 200 and doc["outputs"][0]["shape"] == [len(x), 10]
        np.testing.assert_array_equal(
            np.array(doc["outputs"][0]["data"], dtype=np.float32).reshape(-1, 10), real.run({"data": x})[0]
        )


def test_a_failing_request_in_a_batch_fails_alone() -> None:
    runtime = GatedRuntime()
    xs = [np.full((1, 2), 1.0), np.full((2, 2), -1.0), np.full((3, 2), 3.0)]
    with in_process(runtime, instances=1) as (server, port):
        server.port = port  # type: ignore[attr-defined]
        replies = _queued(server, runtime, _doc("x", np.ones((1, 2))), [_doc("x", x) for x in xs])
        metrics = server.metrics.text()  # type: ignore[attr-defined]
    assert runtime.runs[:2] == [1, 6] and sorted(runtime.runs[2:]) == [1, 2, 3]  # the merged run failed; each
    # request was retried alone (the queue's order is the order the requests arrived in, which varies)
    assert replies[0] == (
        200,
        {
            "model_name": "m",
            "model_version": "1",
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [2.0, 2.0]}],
        },
    )
    assert replies[1] == (400, {"error": "inference failed: negative values"})
    assert replies[2][0] == 200 and replies[2][1]["outputs"][0]["data"] == [6.0] * 6
    m = {"model": "m", "version": "1"}
    assert _metric(metrics, "netspec_inference_count_total", **m) == 3  # successful runs only, as Triton counts
    assert _metric(metrics, "netspec_execution_count_total", **m) == 3


def test_only_requests_that_agree_are_merged() -> None:
    runtime = GatedRuntime()
    xs = [np.ones((2, 2)), np.ones((1, 3)), np.ones((1, 2)), np.ones((70, 2))]
    with in_process(runtime, instances=1) as (server, port):
        server.port = port  # type: ignore[attr-defined]
        replies = _queued(server, runtime, _doc("x", np.ones((1, 2))), [_doc("x", x) for x in xs])
    assert runtime.runs[0] == 1 and sorted(runtime.runs[1:]) == [1, 3, 70]  # [2,2]+[1,2]; [1,3] alone; 70 rows
    # are over --max-batch-size
    assert [status for status, _ in replies] == [200] * 4
    assert [doc["outputs"][0]["shape"] for _, doc in replies] == [[2, 2], [1, 3], [1, 2], [70, 2]]


def test_a_full_queue_answers_503_at_once() -> None:
    runtime = GatedRuntime()
    with in_process(runtime, instances=1, max_queue_size=2) as (server, port):
        server.port = port  # type: ignore[attr-defined]
        blocker = socket.create_connection(("127.0.0.1", port), timeout=30)
        blocker.sendall(_doc("x", np.ones((1, 2))))
        _wait_for(lambda: server.metrics.value("netspec_requests_in_flight") == 1)
        waiting = threading.Thread(target=_send_all, args=(port, [_doc("x", np.ones((1, 2)))] * 2))
        waiting.start()
        _wait_for(lambda: len(server.models.get("m").batcher.queue) == 2)
        assert _send_all(port, [_doc("x", np.ones((1, 2)))]) == [
            (503, {"error": "the server's queue holds 2 requests (--max-queue-size); retry later"})
        ]
        runtime.gate.set()
        waiting.join(60)
        assert _reply(blocker)[0] == 200
        blocker.close()


def test_queue_delay_waits_for_a_fuller_batch() -> None:
    runtime = GatedRuntime()
    runtime.gate.set()
    with in_process(runtime, instances=1, max_queue_delay=1.0, max_batch_size=3) as (_, port):
        replies = _send_all(port, [_doc("x", np.ones((1, 2)))] * 3)
    assert runtime.runs == [3]  # the first waited up to 1 s; the batch filled before that
    assert [status for status, _ in replies] == [200] * 3


def test_running_out_of_file_descriptors_sheds_load(model: Path) -> None:
    import resource

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    served = Served(model, "--max-connections", "500", "--workers", "1", preexec_fn=few_files)
    try:
        flood = []
        for _ in range(120):
            s = socket.create_connection(("127.0.0.1", served.port), timeout=30)
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n")
            flood.append(s)
        answers = []
        for s in reversed(flood):  # all stay open until the last is answered, so the server runs out of files
            with contextlib.suppress(OSError):
                answers.append(_reply(s)[0])
        for s in flood:
            s.close()
        assert 503 in answers and 200 in answers, answers
        assert served.proc.poll() is None
        assert served.json("GET", "/v2/health/ready") == (200, {"ready": True})
    finally:
        code, err = served.stop()
    assert code == 0 and "Traceback" not in err, err


# ---- worker processes ------------------------------------------------------------------------------------


def _workers(pid: int) -> set[int]:
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(c) for c in (task / "children").read_text().split()}
    return children


def _metrics_folder(worker: int) -> Path:
    """The folder where a server's workers keep their metrics (the supervisor's private one)."""
    environ = dict(
        item.split(b"=", 1) for item in Path(f"/proc/{worker}/environ").read_bytes().split(b"\0") if b"=" in item
    )
    return Path(environ[b"PROMETHEUS_MULTIPROC_DIR"].decode())


def _dead(pid: int) -> bool:
    """Exited, all its threads too (its sockets closed), whether or not reaped yet."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text() and os.listdir(f"/proc/{pid}/task") == [
            str(pid)
        ]
    except FileNotFoundError:
        return True


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(model: Path) -> None:
    served = Served(model, "--workers", "2")
    try:
        first = _workers(served.proc.pid)
        assert len(first) == 2
        victim = min(first)
        assert (_metrics_folder(victim) / f"gauge_livesum_{victim}.db").exists()  # its share of the in-flight gauge
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: _dead(victim))
        for _ in range(20):  # the dead worker's socket left the port's group with it
            assert served.json("GET", "/v2/health/ready") == (200, {"ready": True})
        _wait_for(lambda: len(_workers(served.proc.pid) - {victim}) == 2)
        folder = _metrics_folder(max(first))
        assert not (folder / f"gauge_livesum_{victim}.db").exists()  # dropped with its worker
        # a connection each: the kernel spreads them over the workers once the new one listens
        digits, workers, sent, shares = {"model": "digits", "version": "1"}, _workers(served.proc.pid), 0, [0.0]
        while min(shares) == 0 and sent < 1000:
            for _ in range(10):
                assert served.json("POST", "/v2/models/digits/infer", _infer_doc(_images(1)))[0] == 200
            sent += 10
            shares = _shares(folder, workers, "netspec_inference_count_total", digits)
        assert sum(shares) == sent and min(shares) > 0, shares
        for _ in range(4):  # and every worker's /metrics counts the requests of all
            metrics = served.request("GET", "/metrics")[2]
            assert _metric(metrics, "netspec_inference_count_total", **digits) == sent
    finally:
        code, err = served.stop()
    assert code == 0 and f"worker {victim} exited with status -9; starting another" in err, err
    assert "Traceback" not in err, err
    assert not folder.exists()  # the supervisor's private folder is gone with it


def _shares(folder: Path, workers: set[int], name: str, labels: dict[str, str]) -> list[float]:
    """Each worker's own value of a sample, read by prometheus-client from that worker's files alone."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    shares = []
    for pid in workers:
        own = folder.parent / f"{folder.name}-{pid}"
        own.mkdir()
        for path in folder.glob(f"*_{pid}.db"):
            shutil.copy(path, own)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(own))
        shares.append(registry.get_sample_value(name, labels) or 0.0)
        shutil.rmtree(own)
    return shares


def test_sigterm_drains_every_worker(model: Path) -> None:
    served = Served(model, "--workers", "2")
    workers = _workers(served.proc.pid)
    x = _images(20000)
    header = _binary_header(x, {"parameters": {"binary_data_output": True}})
    result: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: result.update(
            reply=served.request(
                "POST",
                "/v2/models/digits/infer",
                header + x.tobytes(),
                {"Inference-Header-Content-Length": str(len(header))},
            )
        )
    )
    thread.start()
    # it and the /metrics request, whichever workers answer them
    _wait_for(lambda: _metric(served.request("GET", "/metrics")[2], "netspec_requests_in_flight") == 2)
    code, err = served.stop()
    thread.join(30)
    status, headers, body = result["reply"]  # type: ignore[misc]
    assert status == 200 and len(body) - int(headers["inference-header-content-length"]) == 20000 * 10 * 4
    assert code == 0 and "Traceback" not in err, err
    for pid in workers:  # gone, and reaped by the supervisor
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize(
    ("affinity", "files", "cores"),
    [
        ({0, 1, 2, 3}, {}, 4),  # nothing known but the affinity
        ({0, 1, 2, 3}, {"/sys/devices/system/cpu/cpu0/topology/thread_siblings_list": "0-1"}, 2),  # SMT pairs
        (
            {0, 1, 2, 3, 4, 5, 6, 7},
            {
                "/sys/devices/system/cpu/cpu0/topology/thread_siblings_list": "0,4",
                "/sys/fs/cgroup/cpu.max": "250000 100000",
            },
            1,
        ),  # 2.5 CPUs of quota -> 3, / 2
        ({0, 1, 2, 3}, {"/sys/fs/cgroup/cpu.max": "max 100000"}, 4),  # cgroup v2 without a quota
        (
            {0, 1, 2, 3},
            {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "200000", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"},
            2,
        ),  # cgroup v1 quota
        ({0, 1}, {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1"}, 2),  # cgroup v1 without a quota
    ],
)
def test_workers_default_to_the_physical_cores_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch, affinity: set[int], files: dict[str, str], cores: int
) -> None:
    from netspec.deploy import runtime

    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: affinity)
    monkeypatch.setattr(runtime, "_read", files.get)
    assert runtime.physical_cores() == cores
