"""`netspec serve`: an ONNX model, or the models of a repository folder (repository.Repository), behind the
Open Inference Protocol (KServe V2) over HTTP.

Endpoints: GET /v2/health/live, /v2/health/ready, /v2 (server metadata), /v2/models/{name}[/versions/{v}]
(model metadata; without a version, the latest READY one), .../ready, POST .../infer, POST
/v2/repository/index (Triton's list of model versions and their states), and GET /metrics (Prometheus
text). Tensors travel as JSON (`data`, flat or nested, row-major) or with Triton's binary tensor extension
(a JSON header of `Inference-Header-Content-Length` bytes, then raw little-endian tensors;
`binary_data_output` or an output's `binary_data` asks for binary outputs).

HTTP/1.1 is parsed by httptools (llhttp, Node.js's parser: framing, chunked bodies, pipelining, Connection
tokens, Content-Length and Transfer-Encoding conflicts); this module adds size and time limits and
Expect: 100-continue, and writes the answers itself. h11 was measured too: its pure-Python parsing cost
about ten times as much per request. With --workers N, a supervisor process (Supervisor) runs N worker
processes, each with its own onnxruntime sessions and its own SO_REUSEPORT socket on the port. In a worker,
each connection has a thread that reads a request, runs it and writes the answer with blocking calls:
onnxruntime and socket I/O release the GIL, so connections run in parallel, and for small models this
costs far less per request than an event loop handing work to a thread pool (measured in
tools/bench/serve.py). At most --instances runs go at once, whatever the model; requests that wait for
one are merged into batches per model version (runtime.Batcher), and leave the queue with a 503 after
--queue-timeout-ms. Every bad request gets a 4xx JSON error that says what was wrong, and the server
keeps serving; slow or idle clients make room for new ones at the connection limit. SIGTERM (or Ctrl-C)
stops accepting connections, lets the requests in flight finish, and exits. With --grpc-port, each worker
also answers the protocol over gRPC (grpc_service), through the same batchers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast
from urllib.parse import unquote

import httptools
import numpy as np
import orjson
from prometheus_client.multiprocess import mark_process_dead

from netspec import __version__
from netspec.deploy.metrics import CONTENT_TYPE, SHARED, Metrics
from netspec.deploy.repository import (
    Batching,
    ModelNotFound,
    ModelUnavailable,
    Repository,
    ServedModel,
    log_unavailable,
)
from netspec.deploy.runtime import NUMPY_OF, Execution, QueueFull, QueueTimeout, Tensor
from netspec.errors import DataError, NetspecError


def _loads(data: bytes) -> Any:
    """A request's JSON, or a 400 saying why not. orjson, not the json module: it parses a LeNet input (784
    numbers) twelve times as fast, which halves the server's CPU time per JSON request (about 900 to 450 us,
    binary requests unchanged at 400), and it refuses what JSON does not have (NaN, Infinity, lone
    surrogates)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if str(e).startswith(("depth limit exceeded", "recursion limit exceeded")):
            raise RequestError(400, "the request's JSON is nested too deeply") from None
        raise RequestError(400, "the request body is not valid JSON") from None


def _dumps(obj: Any) -> bytes:
    """Compact JSON. Never given a NaN or an infinity (orjson would write null): answers holding one are
    refused before they are written (see Server._response)."""
    return orjson.dumps(obj)


HEADER_LIMIT = 64 * 1024
IDLE_SECONDS = 60  # a keep-alive connection with no request for this long is closed
READ_SECONDS = 30  # a request (headers and body) must arrive within this long of its first byte
MAX_CONNECTIONS = 1000
CLOSING = 512  # sockets being closed gracefully at once (an error sent, the client's rest read and dropped)
LINGER_SECONDS = 1.0  # how long a closing socket's unread input is drained before it is closed anyway
DRAIN_SECONDS = 30  # how long requests in flight may take to finish after SIGTERM
SHED_AT_ONCE = 256  # connections told to retry per accept() that failed for want of file descriptors
ACCEPT_POLL = 0.2  # seconds between checks for a stop while no connection arrives
FD_RESERVE = 64  # open files kept free of connections: the model, logs, sockets being closed
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class RequestError(Exception):
    """A request the server refuses: an HTTP status and what was wrong."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close
        self.model: tuple[str, str] | None = None  # the model (name, version) it was for, once known


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool  # HTTP/1.1 without a `close` token in Connection


class Answer(NamedTuple):
    """A routed request's answer, and what the metrics count it under: the endpoint and, once the request
    reached one, the model name and version that answered."""

    endpoint: str
    status: int
    body: bytes
    headers: dict[str, str] | None = None
    model: tuple[str, str] | None = None


class Server:
    """The HTTP front of the models of a repository (one file or a folder of them)."""

    def __init__(
        self,
        models: Repository,
        max_body: int,
        max_connections: int | None = None,
        read_timeout: float = READ_SECONDS,
        grpc_port: int | None = None,
    ) -> None:
        self.models = models
        self.grpc_port = grpc_port  # None: no gRPC; once serving, the port its gRPC server took
        self.grpc: Any = None  # the grpc.Server while serving
        self.read_timeout = read_timeout
        self.max_connections = max_connections or default_max_connections()
        self.closer = Closer()
        self.max_body = max_body
        self.metrics = Metrics()
        for row in models.index(ready_only=True):
            self.metrics.model(row["name"], row["version"])
        models.observe(self._executed)
        self.ready = True
        self.lock = threading.Lock()
        # open connection -> None while it is answering a request, else when it began waiting for one (or
        # for the rest of one): the connections a newcomer may displace when all slots are taken
        self.connections: dict[socket.socket, float | None] = {}
        self.threads: set[threading.Thread] = set()
        self.stopping = threading.Event()

    # ---- HTTP ----------------------------------------------------------------------------------------

    def handle(self, conn: socket.socket) -> None:
        """Answers the requests of one connection until it closes, idles too long, or the server stops."""
        handed_over = False  # to the closer, which closes it
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        http = _Parser(self, conn)
        try:
            while not self.stopping.is_set():
                try:
                    request = self._read(conn, http)
                except RequestError as e:
                    if self._displaced(conn):
                        return
                    self.metrics.request("", "", "invalid", e.status)
                    self.closer.close(conn, _response(e.status, _error(e.message), keep_alive=False))
                    handed_over = True
                    return
                if request is None:
                    return
                self._busy(conn, True)
                try:
                    with self.metrics.in_flight.track_inprogress():
                        answer = self._route(request)
                    self.metrics.request(*(answer.model or ("", "")), answer.endpoint, answer.status)
                    keep_alive = request.keep_alive and not self.stopping.is_set()
                    body = answer.body
                    conn.sendall(
                        _response(
                            answer.status,
                            body if request.method != "HEAD" else b"",
                            keep_alive,
                            answer.headers,
                            len(body),
                        )
                    )
                finally:
                    self._busy(conn, False)
                if not keep_alive:
                    return
        except OSError:  # the client went away or idled past the timeout
            pass
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())
                self.connections.pop(conn, None)
            if not handed_over:
                conn.close()

    def _executed(self, model: ServedModel, run: Execution) -> None:
        """A batcher's report of one session run of `model`."""
        self.metrics.execution(model.name, model.version, run)

    def _busy(self, conn: socket.socket, busy: bool) -> None:
        with self.lock:
            if conn in self.connections:
                self.connections[conn] = None if busy else time.monotonic()

    def _displaced(self, conn: socket.socket) -> bool:
        with self.lock:
            return conn not in self.connections

    def _read(self, conn: socket.socket, http: _Parser) -> Request | None:
        """The next request on the connection (None when the client closes or idles out). A request must
        arrive whole within the read timeout of its first byte, however slowly its bytes trickle in."""
        while not http.requests:
            deadline = http.began + self.read_timeout if http.partial else None
            conn.settimeout(IDLE_SECONDS if deadline is None else max(0.001, deadline - time.monotonic()))
            try:
                data = conn.recv(1 << 16)
            except TimeoutError:
                if deadline is None:
                    return None  # an idle keep-alive connection
                raise RequestError(408, f"the request did not arrive within {self.read_timeout:g} s") from None
            if not data:
                if http.partial:
                    raise RequestError(400, "the request ended early")
                return None  # the client closed between requests
            http.feed(data)
        return http.requests.popleft()

    # ---- routes -----------------------------------------------------------------------------------------

    def _route(self, request: Request) -> Answer:
        path = request.path.rstrip("/") or "/"
        parts = [unquote(part) for part in path.strip("/").split("/")]  # a model name may hold any character
        try:
            if path == "/metrics":
                self._method(request, "GET")
                return Answer("metrics", 200, self.metrics.text(), {"Content-Type": CONTENT_TYPE})
            if parts[:1] != ["v2"]:
                raise RequestError(
                    404, f"no endpoint '{path[:80]}'; this server speaks the Open Inference Protocol under /v2"
                )
            if parts == ["v2"]:
                self._method(request, "GET")
                return Answer(
                    "server_metadata",
                    200,
                    _dumps({"name": "netspec", "version": __version__, "extensions": ["binary_tensor_data"]}),
                )
            if parts[1:2] == ["health"] and len(parts) == 3 and parts[2] in ("live", "ready"):
                self._method(request, "GET")
                key = parts[2]
                ok = True if key == "live" else self.ready
                return Answer(f"health_{key}", 200 if ok else 503, _dumps({key: ok}))
            if parts[1:] == ["repository", "index"]:
                return self._index(request)
            if parts[1:2] == ["models"] and len(parts) >= 3:
                return self._model_route(request, parts[2:])
            raise RequestError(404, f"no endpoint '{path[:80]}'")
        except RequestError as e:
            return Answer("error", e.status, _error(e.message), None, e.model)
        except Exception:  # a bug in netspec: the client is told, the server keeps serving and logs it
            traceback.print_exc(file=sys.stderr)
            return Answer("error", 500, _error("internal server error (the server's log has the details)"))

    def _method(self, request: Request, allowed: str) -> None:
        if request.method != allowed:
            raise RequestError(405, f"{request.path[:80]} takes {allowed}, not {request.method[:10]}")

    def _index(self, request: Request) -> Answer:
        """Triton's repository index: every model version with its state; {"ready": true} asks for the READY
        ones only."""
        self._method(request, "POST")
        ready = False
        if request.body.strip():
            doc = _loads(request.body)
            if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
                raise RequestError(400, 'the repository index takes an optional {"ready": true|false}')
            ready = doc.get("ready", False)
        return Answer("repository_index", 200, _dumps(self.models.index(ready)))

    def _model_route(self, request: Request, rest: list[str]) -> Answer:
        """/v2/models/NAME[/versions/V][/ready|/infer]: the version named, else the latest READY one."""
        name, rest = rest[0], rest[1:]
        version = None
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                raise RequestError(404, f"no endpoint '{request.path[:80]}'")
            version, rest = rest[1], rest[2:]
        if rest not in ([], ["ready"], ["infer"]):
            raise RequestError(404, f"no endpoint '{request.path[:80]}'")
        endpoint = {(): "model_metadata", ("ready",): "model_ready", ("infer",): "infer"}[tuple(rest)]
        self._method(request, "POST" if endpoint == "infer" else "GET")
        try:
            model = self.models.get(name, version)
        except ModelNotFound as e:
            raise RequestError(404, str(e)) from None
        except ModelUnavailable as e:
            if endpoint == "model_ready":
                return Answer(endpoint, 503, _dumps({"name": name, "ready": False}))
            raise RequestError(503, str(e)) from None
        labels = (model.name, model.version)
        try:
            if endpoint == "model_metadata":
                return Answer(endpoint, 200, _dumps(self.models.metadata(name, version)), None, labels)
            if endpoint == "model_ready":
                body = _dumps({"name": name, "ready": self.ready})
                return Answer(endpoint, 200 if self.ready else 503, body, None, labels)
            status, body, headers = self._infer(request, model)
            return Answer(endpoint, status, body, headers, labels)
        except RequestError as e:
            e.model = labels
            raise

    # ---- inference ------------------------------------------------------------------------------------

    def _infer(self, request: Request, model: ServedModel) -> tuple[int, bytes, dict[str, str] | None]:
        header_length = request.headers.get("inference-header-content-length")
        body, binary = request.body, b""
        if header_length is not None:
            try:
                n = int(header_length)
            except ValueError:
                raise RequestError(400, "Inference-Header-Content-Length is not a number") from None
            if not 0 <= n <= len(body):
                raise RequestError(400, f"Inference-Header-Content-Length {n} is beyond the {len(body)}-byte body")
            body, binary = body[:n], body[n:]
        doc = _loads(body)
        if not isinstance(doc, dict):
            raise RequestError(400, "the request must be a JSON object with an 'inputs' list")
        if not isinstance(doc.get("id", ""), str):
            raise RequestError(400, "the request's 'id' must be a string")
        feeds = self._feeds(doc, binary, model)
        wanted, binary_out = self._wanted(doc, model)
        try:
            results = model.batcher.run(feeds, wanted)
        except (QueueFull, QueueTimeout) as e:
            raise RequestError(503, str(e)) from None
        except Exception as e:  # onnxruntime's errors for inputs it refuses
            raise RequestError(400, f"inference failed: {str(e).splitlines()[0][:300]}") from None
        return self._response(doc, wanted, results, binary_out, model)

    def _feeds(self, doc: dict[str, Any], binary: bytes, model: ServedModel) -> dict[str, np.ndarray]:
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise RequestError(400, "the request needs a non-empty 'inputs' list")
        spec = {t.name: t for t in model.inputs}
        feeds: dict[str, np.ndarray] = {}
        offset = 0
        for item in inputs:
            if not isinstance(item, dict):
                raise RequestError(400, "every entry of 'inputs' must be an object")
            name = item.get("name")
            if not isinstance(name, str) or name not in spec:
                known = ", ".join(spec)
                raise RequestError(400, f"unknown input '{str(name)[:80]}'; the model takes: {known}")
            if name in feeds:
                raise RequestError(400, f"input '{name}' is given twice")
            tensor = spec[name]
            shape = _shape(item.get("shape"), name)
            if len(shape) != len(tensor.shape) or any(
                m != -1 and m != s for m, s in zip(tensor.shape, shape, strict=True)
            ):
                raise RequestError(
                    400, f"input '{name}' has shape {shape}; the model takes {list(tensor.shape)} (-1: any size)"
                )
            datatype = item.get("datatype")
            if datatype != tensor.datatype:
                raise RequestError(
                    400, f"input '{name}' has datatype {str(datatype)[:20]}; the model takes {tensor.datatype}"
                )
            count = math.prod(shape)
            size = (
                (item.get("parameters") or {}).get("binary_data_size")
                if isinstance(item.get("parameters"), dict)
                else None
            )
            if size is not None:
                feeds[name], offset = self._binary(name, tensor, shape, count, size, binary, offset)
            else:
                feeds[name] = self._json_data(name, tensor, shape, count, item.get("data"))
        missing = [n for n in spec if n not in feeds]
        if missing:
            raise RequestError(400, f"missing input(s): {', '.join(missing)}")
        if offset != len(binary):
            raise RequestError(400, f"{len(binary) - offset} bytes of binary data are not claimed by any input")
        return feeds

    @staticmethod
    def _binary(
        name: str, tensor: Tensor, shape: list[int], count: int, size: Any, binary: bytes, offset: int
    ) -> tuple[np.ndarray, int]:
        if not isinstance(size, int) or size < 0:
            raise RequestError(400, f"input '{name}': binary_data_size must be a non-negative integer")
        dtype = np.dtype(tensor.dtype).newbyteorder("<")
        if size != count * dtype.itemsize:
            raise RequestError(
                400,
                f"input '{name}' of shape {shape} and {tensor.datatype} needs "
                f"{count * dtype.itemsize} bytes; binary_data_size says {size}",
            )
        if offset + size > len(binary):
            raise RequestError(
                400, f"input '{name}' claims {size} bytes of binary data, but only {len(binary) - offset} remain"
            )
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return array.astype(tensor.dtype, copy=False), offset + size

    @staticmethod
    def _json_data(name: str, tensor: Tensor, shape: list[int], count: int, data: Any) -> np.ndarray:
        if not isinstance(data, list):
            raise RequestError(400, f"input '{name}' needs 'data' (a list) or binary data")
        try:
            array = np.asarray(data, dtype=tensor.dtype)
        except (TypeError, ValueError, OverflowError):
            raise RequestError(
                400, f"input '{name}': 'data' must hold {tensor.datatype} numbers in nested or flat lists of one shape"
            ) from None
        if array.size != count:
            raise RequestError(400, f"input '{name}' of shape {shape} needs {count} values; 'data' holds {array.size}")
        return array.reshape(shape)

    def _wanted(self, doc: dict[str, Any], model: ServedModel) -> tuple[list[str], set[str]]:
        names = [t.name for t in model.outputs]
        params = given if isinstance(given := doc.get("parameters"), dict) else {}
        all_binary = bool(params.get("binary_data_output"))
        requested = doc.get("outputs")
        if requested is None:
            return names, set(names) if all_binary else set()
        if not isinstance(requested, list):
            raise RequestError(400, "'outputs' must be a list of {\"name\": ...} objects")
        wanted, binary = [], set()
        for item in requested:
            if not isinstance(item, dict) or item.get("name") not in names:
                label = str(item.get("name") if isinstance(item, dict) else item)[:80]
                raise RequestError(400, f"unknown output '{label}'; the model has: {', '.join(names)}")
            wanted.append(item["name"])
            p = given if isinstance(given := item.get("parameters"), dict) else {}
            if p.get("binary_data", all_binary):
                binary.add(item["name"])
        return wanted, binary

    def _response(
        self, doc: dict[str, Any], wanted: list[str], results: list[np.ndarray], binary: set[str], model: ServedModel
    ) -> tuple[int, bytes, dict[str, str] | None]:
        types = {t.name: t.datatype for t in model.outputs}
        outputs, chunks = [], []
        for name, value in zip(wanted, results, strict=True):
            value = np.asarray(value)
            entry: dict[str, Any] = {"name": name, "datatype": types[name], "shape": list(value.shape)}
            if name in binary:
                raw = np.ascontiguousarray(value, dtype=np.dtype(NUMPY_OF[types[name]]).newbyteorder("<")).tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                if value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise RequestError(
                        500,
                        f"output '{name}' holds NaN or infinite values, which JSON cannot "
                        "carry; ask for it as binary data (binary_data_output)",
                    )
                entry["data"] = value.reshape(-1).tolist()
            outputs.append(entry)
        response: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
        if "id" in doc:
            response["id"] = doc["id"]
        header = _dumps(response)
        if not chunks:
            return 200, header, None
        return (
            200,
            header + b"".join(chunks),
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        )

    # ---- running ----------------------------------------------------------------------------------------

    def serve(self, host: str, port: int, started: Any = None, reuse_port: bool = False) -> None:
        """Accepts connections until SIGTERM or SIGINT (or until `stopping` is set), then drains."""
        try:
            listener = socket.create_server((host, port), backlog=256, reuse_port=reuse_port)
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise NetspecError(
                f"cannot listen on {host}:{port}: {reason}", hint="pick another --port (0 takes a free one)"
            ) from None
        listener.settimeout(ACCEPT_POLL)  # to notice a stop between connections
        if self.grpc_port is not None:
            from netspec.deploy.grpc_service import start

            try:
                self.grpc, self.grpc_port = start(self, host, self.grpc_port, reuse_port)
            except NetspecError:
                listener.close()
                raise
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self.stopping.set())
        try:
            bound = listener.getsockname()
            if started is not None:
                started(bound[0], bound[1])
            with listener, self.closer:
                while not self.stopping.is_set():
                    try:
                        conn, _ = listener.accept()
                    except (TimeoutError, InterruptedError):
                        continue
                    except OSError as e:  # out of file descriptors or memory: shed load, keep serving
                        if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            raise
                        self._shed(listener)
                        continue
                    self._start(conn)
                self.drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, conn: socket.socket) -> None:
        """Gives a new connection a thread. When all --max-connections slots are taken, the connection that
        has waited longest for (the rest of) a request makes room: slow or idle clients cannot lock others
        out. Only when every connection is being answered is the newcomer told to retry (503)."""
        displaced = None
        with self.lock:
            if len(self.connections) >= self.max_connections:
                waiting = [(since, c) for c, since in self.connections.items() if since is not None]
                if waiting:
                    displaced = min(waiting, key=lambda pair: pair[0])[1]
                    del self.connections[displaced]
            if len(self.connections) < self.max_connections:
                self.connections[conn] = time.monotonic()
                new = threading.Thread(target=self.handle, args=(conn,), daemon=True)
                self.threads.add(new)
                thread: threading.Thread | None = new
            else:
                thread = None
        if displaced is not None:  # wakes its thread, which finds itself displaced and ends
            with contextlib.suppress(OSError):
                displaced.shutdown(socket.SHUT_RDWR)
        if thread is None:
            self._refuse(conn, f"the server has {self.max_connections} open connections; retry later")
            return
        try:
            thread.start()
        except RuntimeError:  # no thread to be had
            with self.lock:
                self.threads.discard(thread)
                self.connections.pop(conn, None)
            self._refuse(conn, "the server cannot take more connections now; retry later")

    def _refuse(self, conn: socket.socket, message: str) -> None:
        self.metrics.request("", "", "invalid", 503)
        self.closer.close(conn, _response(503, _error(message), keep_alive=False))

    def _shed(self, listener: socket.socket) -> None:
        """accept() failed for want of file descriptors: frees the one held in reserve to take the waiting
        connections one by one and tell each to retry, then backs off briefly so that connections being
        closed free theirs."""
        self.closer.release_spare()
        listener.settimeout(0)
        try:
            for _ in range(SHED_AT_ONCE):
                conn, _ = listener.accept()
                self.metrics.request("", "", "invalid", 503)
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(_response(503, _error("the server is out of file descriptors; retry later"), False))
                conn.close()
        except OSError:  # none waiting (BlockingIOError), or still none to be had
            pass
        finally:
            listener.settimeout(ACCEPT_POLL)
            self.closer.take_spare()
        self.stopping.wait(0.01)

    def drain(self) -> None:
        """Lets requests in flight finish (up to DRAIN_SECONDS) and closes idle connections."""
        self.ready = False
        self.stopping.set()
        grpc_stopped = self.grpc.stop(DRAIN_SECONDS) if self.grpc is not None else None
        with self.lock:
            idle = [conn for conn, since in self.connections.items() if since is not None]
        for conn in idle:  # wakes their threads, blocked reading the next request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + DRAIN_SECONDS
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if grpc_stopped is not None:
            grpc_stopped.wait(max(0.0, deadline - time.monotonic()))


def _response(
    status: int, body: bytes, keep_alive: bool, headers: dict[str, str] | None = None, length: int | None = None
) -> bytes:
    """An answer with a Content-Length body (the answers are few and fixed)."""
    fields = {"Content-Type": "application/json", **(headers or {})}
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        *(f"{k}: {v}" for k, v in fields.items()),
        f"Content-Length: {len(body) if length is None else length}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        "",
        "",
    ]
    return "\r\n".join(head).encode("latin-1") + body


class _Parser:
    """One connection's requests, from httptools' callbacks: complete requests queue up (a client may send
    several before reading an answer), and the parser's errors become 4xx answers."""

    def __init__(self, server: Server, conn: socket.socket) -> None:
        self.server, self.conn = server, conn
        self.parser = httptools.HttpRequestParser(self)
        self.requests: deque[Request] = deque()
        self.partial = False  # inside a request
        self.began = 0.0

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the request is whole; it is answered over HTTP/1.1 and the connection closed
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, RequestError):
                raise e.__context__ from None
            raise RequestError(400, f"malformed HTTP request: {e}") from None

    def on_message_begin(self) -> None:
        self.partial, self.began = True, time.monotonic()
        self.headers: list[tuple[str, str]] = []
        self.url, self.body, self.size = b"", bytearray(), 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))
        self._grow(len(name) + len(value) + 4)

    def _grow(self, n: int) -> None:
        self.size += n
        if self.size > HEADER_LIMIT:
            raise RequestError(431, "the request's headers are larger than 64 KiB")

    def on_headers_complete(self) -> None:
        """Checks what can be checked before the body: Host, the body's size; then says 100 Continue to a
        client that waits for it."""
        self.method = self.parser.get_method().decode("latin-1")
        version = self.parser.get_http_version()
        self.keep_alive = self.parser.should_keep_alive() and not self.parser.should_upgrade()
        fields = dict(self.headers)
        if version == "1.1" and "host" not in fields:
            raise RequestError(400, "the request has no Host header")
        length = int(fields.get("content-length", 0))  # digits: llhttp refuses anything else
        if length > self.server.max_body:
            raise RequestError(
                413,
                f"the request body has {length} bytes; this server takes at most "
                f"{self.server.max_body} (--max-body-mb)",
            )
        if fields.get("expect", "").lower() == "100-continue" and version == "1.1":
            self.conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > self.server.max_body:
            raise RequestError(
                413,
                f"the request body has more than {self.server.max_body} bytes; this server "
                "takes at most that (--max-body-mb)",
            )

    def on_message_complete(self) -> None:
        self.partial = False
        target = self.url.decode("latin-1").split("?", 1)[0]
        self.requests.append(Request(self.method, target, dict(self.headers), bytes(self.body), self.keep_alive))


class Closer:
    """Closes sockets gracefully on one thread: sends the last answer, then reads and drops what the client
    still sends for up to LINGER_SECONDS (closing a socket with unread input resets the connection, and the
    client would lose the answer). Also holds a spare file descriptor for shedding load when none is left."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.deadlines: dict[socket.socket, float] = {}
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = socket.socketpair()
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.done = threading.Event()
        self.spare: int | None = None
        self.take_spare()

    def __enter__(self) -> Closer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.wake_w.send(b"x")
        self.thread.join(LINGER_SECONDS + 1)
        for sock in list(self.deadlines):
            sock.close()
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()
        self.release_spare()

    def take_spare(self) -> None:
        with contextlib.suppress(OSError):
            self.spare = os.open(os.devnull, os.O_RDONLY)

    def release_spare(self) -> None:
        if self.spare is not None:
            os.close(self.spare)
            self.spare = None

    def close(self, sock: socket.socket, last: bytes) -> None:
        """Sends `last` (an error answer) and closes the socket once the client is done sending."""
        try:
            sock.setblocking(False)
            sock.send(last)  # a short answer on a socket with an empty send buffer goes out whole
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        with self.lock:
            if len(self.deadlines) >= CLOSING or self.done.is_set():
                sock.close()
                return
            self.deadlines[sock] = time.monotonic() + LINGER_SECONDS
            self.selector.register(sock, selectors.EVENT_READ)
        self.wake_w.send(b"x")

    def _run(self) -> None:
        while not self.done.is_set():
            ready = self.selector.select(timeout=0.2)
            with self.lock:
                now = time.monotonic()
                finished = [s for s, deadline in self.deadlines.items() if deadline <= now]
                for key, _ in ready:
                    sock = cast(socket.socket, key.fileobj)  # only sockets are registered
                    if sock is self.wake_r:
                        with contextlib.suppress(OSError):
                            self.wake_r.recv(4096)
                        continue
                    try:
                        while sock.recv(1 << 16):
                            pass
                        finished.append(sock)  # end of input: the client has closed its side
                    except BlockingIOError:
                        pass
                    except OSError:
                        finished.append(sock)
                for sock in set(finished):
                    self.selector.unregister(sock)
                    del self.deadlines[sock]
                    sock.close()


def default_max_connections() -> int:
    """MAX_CONNECTIONS, or fewer when the open-file limit would not allow that many."""
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, limit - FD_RESERVE))


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise RequestError(400, f"input '{name}' needs 'shape', a list of non-negative integers")
    return value


def _error(message: str) -> bytes:
    return _dumps({"error": message})


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
    name: str | None = None,
    instances: int | None = None,
    max_body_mb: int = 64,
    started: Any = None,
    max_connections: int | None = None,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 0,
    max_queue_size: int = 1024,
    workers: int | None = None,
    queue_timeout_ms: int | None = None,
    grpc_port: int | None = None,
) -> None:
    """Serves an ONNX model, or the models of a repository folder, until SIGTERM or Ctrl-C: in this process
    with one worker, else from `workers` processes on one port, watched by this one. With `grpc_port`, every
    worker also answers the protocol over gRPC on that port (`started` is then called with it as a third
    argument)."""
    from netspec.deploy.runtime import physical_cores

    workers = workers or physical_cores()
    if not Path(model).exists():  # before the port is taken: a worker would say the same, later
        raise DataError(f"model file '{model}' does not exist")
    if grpc_port is not None:  # both ports now: taken ones are clear errors, and two 0s are two free ports
        port, grpc_port = _reserve(host, [(port, "--port"), (grpc_port, "--grpc-port")])
        if started is not None:
            announce, bound_grpc = started, grpc_port

            def started(bound_host: str, bound_port: int) -> None:
                announce(bound_host, bound_port, bound_grpc)

    options: dict[str, Any] = {
        "model": model,
        "name": name,
        "threads": threads,
        "instances": instances,
        "max_body_mb": max_body_mb,
        "max_connections": max_connections,
        "max_batch_size": max_batch_size,
        "max_queue_delay_us": max_queue_delay_us,
        "max_queue_size": max_queue_size,
        "queue_timeout_ms": queue_timeout_ms,
        "workers": workers,
        "grpc_port": grpc_port,
    }
    if workers == 1:
        _serve_one(host, port, started, reuse_port=False, log=True, **options)
    else:
        Supervisor(host, port, options).run(started)


def _serve_one(
    host: str,
    port: int,
    started: Any,
    reuse_port: bool,
    log: bool,
    model: str,
    name: str | None,
    threads: int | None,
    instances: int | None,
    max_body_mb: int,
    max_connections: int | None,
    max_batch_size: int,
    max_queue_delay_us: int,
    max_queue_size: int,
    queue_timeout_ms: int | None,
    workers: int,
    grpc_port: int | None,
) -> None:
    """One worker: a session per model version and a server; `log`: say which models are skipped (one
    worker says it for all). The cores are shared among the workers, then among a worker's instances, which
    all its models share (runtime.Slots): at most `instances` runs of `threads` threads each at once,
    however many models it serves."""
    from netspec.deploy.runtime import physical_cores

    share = max(1, physical_cores() // workers)
    instances = instances or max(2, share)
    batching = Batching(
        instances,
        max_batch_size,
        max_queue_delay_us / 1e6,
        max_queue_size,
        None if queue_timeout_ms is None else queue_timeout_ms / 1000,
    )
    models = Repository.load(model, name, threads or max(1, share // instances), batching)
    if log:
        log_unavailable(models)
    Server(models, max_body_mb * 2**20, max_connections, grpc_port=grpc_port).serve(host, port, started, reuse_port)


def _reserve(host: str, ports: list[tuple[int, str]]) -> list[int]:
    """Checks the ports are free (a socket without SO_REUSEPORT cannot join another server's group) and
    picks one for each port 0, all distinct (their probes are open at once)."""
    with contextlib.ExitStack() as probes:
        bound = []
        for port, flag in ports:
            try:
                probe = probes.enter_context(socket.create_server((host, port)))
            except OSError as e:
                reason = os.strerror(e.errno) if e.errno else str(e)
                raise NetspecError(
                    f"cannot listen on {host}:{port}: {reason}", hint=f"pick another {flag} (0 takes a free one)"
                ) from None
            bound.append(int(probe.getsockname()[1]))
        return bound


class Supervisor:
    """Starts the worker processes, each with its own session and its own listening socket on the port
    (SO_REUSEPORT: the kernel spreads connections over them, and a dead worker's socket leaves the group
    at once), restarts a worker that dies, and on SIGTERM or SIGINT passes the signal on and waits for
    the workers to drain."""

    def __init__(self, host: str, port: int, options: dict[str, Any]) -> None:
        self.host, self.options = host, options
        [self.port] = _reserve(host, [(port, "--port")])
        self.procs: list[subprocess.Popen[str]] = []
        self.stopping = threading.Event()
        self.metrics = ""  # the workers' folder for their metrics (PROMETHEUS_MULTIPROC_DIR), while they run

    def _start(self, log: bool = False) -> subprocess.Popen[str]:
        """A worker, once it listens; its error (a model it cannot load) is raised here. `log`: it says
        which models of a repository it skips."""
        config = json.dumps({"host": self.host, "port": self.port, "log": log, "options": self.options})
        proc = subprocess.Popen(
            [sys.executable, "-m", "netspec.deploy.serve", config],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, SHARED: self.metrics},
        )
        line = proc.stdout.readline() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
        answer = json.loads(line) if line.startswith("{") else {"error": "a worker process failed to start"}
        if "error" in answer:
            proc.wait()
            raise NetspecError(answer["error"], hint=answer.get("hint"))
        return proc

    def run(self, started: Any) -> None:
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self.stopping.set())
        self.metrics = tempfile.mkdtemp(prefix="netspec-metrics-")
        try:
            for i in range(self.options["workers"]):
                self.procs.append(self._start(log=i == 0))
            if started is not None:
                started(self.host, self.port)
            while not self.stopping.wait(0.2):
                for i, proc in enumerate(self.procs):
                    if proc.poll() is not None and not self.stopping.is_set():
                        print(
                            f"worker {proc.pid} exited with status {proc.returncode}; starting another",
                            file=sys.stderr,
                            flush=True,
                        )
                        mark_process_dead(proc.pid, self.metrics)  # its share of the in-flight gauge
                        self.procs[i] = self._start()
        finally:
            self._stop()
            shutil.rmtree(self.metrics, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_SECONDS + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _worker(config: dict[str, Any]) -> int:
    """A worker process: serves on the shared port and tells the supervisor, on its first line of output,
    that it listens or why it cannot. It stops (draining) if the supervisor dies."""

    def started(host: str, port: int) -> None:
        print(json.dumps({"ready": port}), flush=True)

    def orphaned(parent: int = os.getppid()) -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, daemon=True).start()

    try:
        _serve_one(config["host"], config["port"], started, True, config["log"], **config["options"])
    except NetspecError as e:
        print(json.dumps({"error": e.msg, "hint": e.hint}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker(json.loads(sys.argv[1])))
