"""`netspec serve`: an ONNX model behind the Open Inference Protocol (KServe V2) over HTTP.

Endpoints: GET /v2/health/live, /v2/health/ready, /v2 (server metadata), /v2/models/{name}[/versions/{v}]
(model metadata), .../ready, POST .../infer, and GET /metrics (Prometheus text). Tensors travel as JSON
(`data`, flat or nested, row-major) or with Triton's binary tensor extension (a JSON header of
`Inference-Header-Content-Length` bytes, then raw little-endian tensors; `binary_data_output` or an
output's `binary_data` asks for binary outputs).

One onnxruntime session serves every request. Each connection has a thread that reads a request, runs
it and writes the answer with blocking calls: onnxruntime and socket I/O release the GIL, so connections
run in parallel, and for small models this costs far less per request than an event loop handing work
to a thread pool (measured in tools/bench/serve.py). At most --workers inferences run at once. Every bad
request gets a 4xx JSON error that says what was wrong, and the server keeps serving. SIGTERM (or
Ctrl-C) stops accepting connections, lets the requests in flight finish, and exits.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netspec import __version__
from netspec.deploy.runtime import NUMPY_OF, Runtime, Tensor
from netspec.errors import NetspecError


def _loads(data: bytes) -> Any:
    return json.loads(data)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


HEADER_LIMIT = 64 * 1024
IDLE_SECONDS = 60  # a keep-alive connection with no request for this long is closed
MAX_CONNECTIONS = 1000
REFUSERS = 64  # connections over the limit answered at once; beyond, they are closed unanswered
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           411: "Length Required", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}


class RequestError(Exception):
    """A request the server refuses: an HTTP status and what was wrong."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


@dataclass
class Metrics:
    """Counters and a latency histogram in Prometheus's text format."""

    requests: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1

    def inference(self, seconds: float) -> None:
        with self.lock:
            i = next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
            self.buckets[i] += 1
            self.latency_sum += seconds
            self.latency_count += 1

    def text(self, model: str) -> str:
        with self.lock:
            lines = ["# HELP netspec_requests_total HTTP requests by endpoint and status.",
                     "# TYPE netspec_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'netspec_requests_total{{endpoint="{endpoint}",code="{status}"}} {n}')
            errors = sum(n for (_, status), n in self.requests.items() if status >= 400)
            lines += ["# HELP netspec_request_errors_total Requests answered with an error status.",
                      "# TYPE netspec_request_errors_total counter", f"netspec_request_errors_total {errors}",
                      "# HELP netspec_inference_seconds Time in onnxruntime per inference request.",
                      "# TYPE netspec_inference_seconds histogram"]
            cumulative = 0
            for bound, n in zip([*BUCKETS, math.inf], self.buckets, strict=True):
                cumulative += n
                le = "+Inf" if math.isinf(bound) else f"{bound:g}"
                lines.append(f'netspec_inference_seconds_bucket{{model="{model}",le="{le}"}} {cumulative}')
            lines += [f'netspec_inference_seconds_sum{{model="{model}"}} {self.latency_sum:.6f}',
                      f'netspec_inference_seconds_count{{model="{model}"}} {self.latency_count}',
                      "# HELP netspec_requests_in_flight Requests being answered now.",
                      "# TYPE netspec_requests_in_flight gauge", f"netspec_requests_in_flight {self.in_flight}"]
        return "\n".join(lines) + "\n"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class Server:
    """The HTTP front of one model."""

    def __init__(self, runtime: Runtime, name: str, workers: int, max_body: int,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.runtime, self.name = runtime, name
        self.max_connections = max_connections
        self.refusing = 0  # threads answering connections over the limit
        self.slots = threading.BoundedSemaphore(workers)
        self.max_body = max_body
        self.metrics = Metrics()
        self.ready = True
        self.lock = threading.Lock()
        self.connections: dict[socket.socket, bool] = {}  # open connection -> answering a request now
        self.threads: set[threading.Thread] = set()
        self.stopping = threading.Event()

    # ---- HTTP ----------------------------------------------------------------------------------------

    def handle(self, conn: socket.socket) -> None:
        """Answers the requests of one connection until it closes, idles too long, or the server stops."""
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(IDLE_SECONDS)
        reader = conn.makefile("rb", buffering=1 << 16)
        try:
            while not self.stopping.is_set():
                try:
                    request = self._read(reader)
                except RequestError as e:
                    self._send(conn, e.status, _error(e.message), keep_alive=False)
                    self.metrics.request("invalid", e.status)
                    _linger(conn)
                    return
                if request is None:
                    return
                self._busy(conn, True)
                try:
                    endpoint, status, body, headers = self._route(request)
                    self.metrics.request(endpoint, status)
                    keep_alive = request.keep_alive and not self.stopping.is_set()
                    self._send(conn, status, body, keep_alive, headers)
                finally:
                    self._busy(conn, False)
                if not keep_alive:
                    return
        except OSError:  # the client went away or idled past the timeout
            pass
        finally:
            with self.lock:
                self.connections.pop(conn, None)
                self.threads.discard(threading.current_thread())
            reader.close()
            conn.close()

    def _busy(self, conn: socket.socket, busy: bool) -> None:
        with self.lock:
            self.connections[conn] = busy
            self.metrics.in_flight += 1 if busy else -1

    def _read(self, reader: Any) -> Request | None:
        lines: list[bytes] = []
        size = 0
        while True:
            line = reader.readline(HEADER_LIMIT + 1)
            if not line:
                if lines:
                    raise RequestError(400, "the request ended inside its headers")
                return None  # the client closed an idle connection
            size += len(line)
            if size > HEADER_LIMIT:
                raise RequestError(431, "the request's headers are larger than 64 KiB")
            if line in (b"\r\n", b"\n"):
                if lines:
                    break
                continue  # blank lines before a request line are allowed
            lines.append(line)
        try:
            method, path, version = lines[0].decode("latin-1").strip().split(" ")
        except ValueError:
            raise RequestError(400, "malformed request line") from None
        if not version.startswith("HTTP/1."):
            raise RequestError(400, f"unsupported protocol '{version[:20]}'")
        headers = {}
        for raw in lines[1:]:
            line = raw.decode("latin-1").rstrip("\r\n")
            key, sep, value = line.partition(":")
            if not sep:
                raise RequestError(400, f"malformed header line '{line[:60]}'")
            headers[key.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise RequestError(411, "chunked request bodies are not supported; send Content-Length")
        length_text = headers.get("content-length", "0")
        try:
            length = int(length_text)
        except ValueError:
            raise RequestError(400, f"Content-Length '{length_text[:20]}' is not a number") from None
        if length < 0:
            raise RequestError(400, "Content-Length is negative")
        if length > self.max_body:
            raise RequestError(413, f"the request body has {length} bytes; this server takes at most "
                               f"{self.max_body} (--max-body-mb)")
        body = reader.read(length) if length else b""
        if len(body) < length:
            raise OSError("the client closed the connection inside a request body")
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        return Request(method, path.split("?", 1)[0], headers, body, keep_alive)

    @staticmethod
    def _send(conn: socket.socket, status: int, body: bytes, keep_alive: bool,
              headers: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", **(headers or {})}
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"Content-Length: {len(body)}",
                f"Connection: {'keep-alive' if keep_alive else 'close'}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    # ---- routes -----------------------------------------------------------------------------------------

    def _route(self, request: Request) -> tuple[str, int, bytes, dict[str, str] | None]:
        path = request.path.rstrip("/") or "/"
        parts = path.strip("/").split("/")
        try:
            if path == "/metrics":
                self._method(request, "GET")
                return "metrics", 200, self.metrics.text(self.name).encode(), {
                    "Content-Type": "text/plain; version=0.0.4"}
            if parts[:1] != ["v2"]:
                raise RequestError(404, f"no endpoint '{path[:80]}'; this server speaks the Open Inference "
                                   "Protocol under /v2")
            if parts == ["v2"]:
                self._method(request, "GET")
                return "server_metadata", 200, _dumps({"name": "netspec", "version": __version__,
                                                       "extensions": ["binary_tensor_data"]}), None
            if parts[1:2] == ["health"] and len(parts) == 3 and parts[2] in ("live", "ready"):
                self._method(request, "GET")
                key = parts[2]
                ok = True if key == "live" else self.ready
                return f"health_{key}", 200 if ok else 503, _dumps({key: ok}), None
            if parts[1:2] == ["models"] and len(parts) >= 3:
                return self._model_route(request, parts[2:])
            raise RequestError(404, f"no endpoint '{path[:80]}'")
        except RequestError as e:
            return "error", e.status, _error(e.message), None
        except Exception:  # a bug in netspec: the client is told, the server keeps serving and logs it
            traceback.print_exc(file=sys.stderr)
            return "error", 500, _error("internal server error (the server's log has the details)"), None

    def _method(self, request: Request, allowed: str) -> None:
        if request.method != allowed:
            raise RequestError(405, f"{request.path[:80]} takes {allowed}, not {request.method[:10]}")

    def _model_route(self, request: Request, rest: list[str]) -> tuple[str, int, bytes, dict[str, str] | None]:
        name, rest = rest[0], rest[1:]
        if name != self.name:
            raise RequestError(404, f"unknown model '{name[:80]}'; this server serves '{self.name}'")
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or rest[1] != "1":
                raise RequestError(404, f"unknown version of model '{name}'; it has version 1")
            rest = rest[2:]
        if not rest:
            self._method(request, "GET")
            return "model_metadata", 200, _dumps({
                "name": self.name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [t.metadata() for t in self.runtime.inputs],
                "outputs": [t.metadata() for t in self.runtime.outputs]}), None
        if rest == ["ready"]:
            self._method(request, "GET")
            return "model_ready", 200, _dumps({"name": self.name, "ready": self.ready}), None
        if rest == ["infer"]:
            self._method(request, "POST")
            status, body, headers = self._infer(request)
            return "infer", status, body, headers
        raise RequestError(404, f"no endpoint '{request.path[:80]}'")

    # ---- inference ------------------------------------------------------------------------------------

    def _infer(self, request: Request) -> tuple[int, bytes, dict[str, str] | None]:
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
        try:
            doc = _loads(body)
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "the request body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise RequestError(400, "the request must be a JSON object with an 'inputs' list")
        feeds = self._feeds(doc, binary)
        wanted, binary_out = self._wanted(doc)
        with self.slots:
            start = time.perf_counter()
            try:
                results = self.runtime.run(feeds, wanted)
            except Exception as e:  # onnxruntime's errors for inputs it refuses
                raise RequestError(400, f"inference failed: {str(e).splitlines()[0][:300]}") from None
            self.metrics.inference(time.perf_counter() - start)
        return self._response(doc, wanted, results, binary_out)

    def _feeds(self, doc: dict[str, Any], binary: bytes) -> dict[str, np.ndarray]:
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise RequestError(400, "the request needs a non-empty 'inputs' list")
        spec = {t.name: t for t in self.runtime.inputs}
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
            if len(shape) != len(tensor.shape) or any(m != -1 and m != s for m, s in zip(tensor.shape, shape,
                                                                                       strict=True)):
                raise RequestError(400, f"input '{name}' has shape {shape}; the model takes {list(tensor.shape)} "
                                   "(-1: any size)")
            datatype = item.get("datatype")
            if datatype != tensor.datatype:
                raise RequestError(400, f"input '{name}' has datatype {str(datatype)[:20]}; the model takes "
                                   f"{tensor.datatype}")
            count = math.prod(shape)
            size = (item.get("parameters") or {}).get("binary_data_size") if isinstance(item.get("parameters"),
                                                                                      dict) else None
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
    def _binary(name: str, tensor: Tensor, shape: list[int], count: int, size: Any, binary: bytes,
                offset: int) -> tuple[np.ndarray, int]:
        if not isinstance(size, int) or size < 0:
            raise RequestError(400, f"input '{name}': binary_data_size must be a non-negative integer")
        dtype = np.dtype(tensor.dtype).newbyteorder("<")
        if size != count * dtype.itemsize:
            raise RequestError(400, f"input '{name}' of shape {shape} and {tensor.datatype} needs "
                               f"{count * dtype.itemsize} bytes; binary_data_size says {size}")
        if offset + size > len(binary):
            raise RequestError(400, f"input '{name}' claims {size} bytes of binary data, but only "
                               f"{len(binary) - offset} remain")
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return array.astype(tensor.dtype, copy=False), offset + size

    @staticmethod
    def _json_data(name: str, tensor: Tensor, shape: list[int], count: int, data: Any) -> np.ndarray:
        if not isinstance(data, list):
            raise RequestError(400, f"input '{name}' needs 'data' (a list) or binary data")
        try:
            array = np.asarray(data, dtype=tensor.dtype)
        except (TypeError, ValueError, OverflowError):
            raise RequestError(400, f"input '{name}': 'data' must hold {tensor.datatype} numbers in nested or "
                               "flat lists of one shape") from None
        if array.size != count:
            raise RequestError(400, f"input '{name}' of shape {shape} needs {count} values; 'data' holds "
                               f"{array.size}")
        return array.reshape(shape)

    def _wanted(self, doc: dict[str, Any]) -> tuple[list[str], set[str]]:
        names = [t.name for t in self.runtime.outputs]
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

    def _response(self, doc: dict[str, Any], wanted: list[str], results: list[np.ndarray],
                  binary: set[str]) -> tuple[int, bytes, dict[str, str] | None]:
        types = {t.name: t.datatype for t in self.runtime.outputs}
        outputs, chunks = [], []
        for name, value in zip(wanted, results, strict=True):
            value = np.asarray(value)
            entry: dict[str, Any] = {"name": name, "datatype": types[name], "shape": list(value.shape)}
            if name in binary:
                raw = np.ascontiguousarray(value, dtype=np.dtype(NUMPY_OF[types[name]]).newbyteorder("<")).tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                entry["data"] = value.reshape(-1).tolist()
            outputs.append(entry)
        response: dict[str, Any] = {"model_name": self.name, "model_version": "1", "outputs": outputs}
        if "id" in doc:
            response["id"] = doc["id"]
        header = _dumps(response)
        if not chunks:
            return 200, header, None
        return 200, header + b"".join(chunks), {"Content-Type": "application/octet-stream",
                                                "Inference-Header-Content-Length": str(len(header))}

    # ---- running ----------------------------------------------------------------------------------------

    def serve(self, host: str, port: int, started: Any = None) -> None:
        """Accepts connections until SIGTERM or SIGINT (or until `stopping` is set), then drains."""
        try:
            listener = socket.create_server((host, port), backlog=256)
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise NetspecError(f"cannot listen on {host}:{port}: {reason}",
                               hint="pick another --port (0 takes a free one)") from None
        listener.settimeout(0.2)  # to notice a stop between connections
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self.stopping.set())
        try:
            bound = listener.getsockname()
            if started is not None:
                started(bound[0], bound[1])
            with listener:
                while not self.stopping.is_set():
                    try:
                        conn, _ = listener.accept()
                    except (TimeoutError, InterruptedError):
                        continue
                    self._start(conn)
            self.drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, conn: socket.socket) -> None:
        with self.lock:
            if len(self.connections) < self.max_connections:
                self.connections[conn] = False
                thread = threading.Thread(target=self.handle, args=(conn,), daemon=True)
                self.threads.add(thread)
            elif self.refusing < REFUSERS:
                self.refusing += 1
                thread = threading.Thread(target=self._refuse, args=(conn,), daemon=True)
            else:  # a flood: not even a thread to say so
                conn.close()
                self.metrics.request("invalid", 503)
                return
        thread.start()

    def _refuse(self, conn: socket.socket) -> None:
        """Tells a client over the connection limit to retry, reading what it sends meanwhile so that it
        gets the answer rather than a reset connection."""
        try:
            with contextlib.suppress(OSError):
                self._send(conn, 503, _error(f"the server has {self.max_connections} open connections; retry later"),
                           keep_alive=False)
                _linger(conn, 1.0)
            conn.close()
            self.metrics.request("invalid", 503)
        finally:
            with self.lock:
                self.refusing -= 1

    def drain(self) -> None:
        """Lets requests in flight finish (up to 30 s) and closes idle connections."""
        self.ready = False
        self.stopping.set()
        with self.lock:
            idle = [conn for conn, busy in self.connections.items() if not busy]
        for conn in idle:  # wakes their threads, blocked reading the next request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 30
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _linger(conn: socket.socket, seconds: float = 2.0) -> None:
    """Reads and discards what the client still sends (the body of a request refused before it was read),
    for a while, so that the client gets to read the error instead of a reset connection."""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            if not conn.recv(1 << 16):
                return


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise RequestError(400, f"input '{name}' needs 'shape', a list of non-negative integers")
    return value


def _error(message: str) -> bytes:
    return _dumps({"error": message})


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, threads: int | None = None,
          name: str | None = None, workers: int | None = None, max_body_mb: int = 64, started: Any = None) -> None:
    """Serves an ONNX model until SIGTERM or Ctrl-C."""
    from pathlib import Path

    from netspec.deploy.runtime import physical_cores

    cores = physical_cores()
    workers = workers or max(2, cores)
    runtime = Runtime(model, threads or max(1, cores // workers))
    Server(runtime, name or Path(model).stem, workers, max_body_mb * 2**20).serve(host, port, started)
