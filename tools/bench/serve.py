"""Requests per second and latency of `netspec serve`, side by side with what the clients and the model allow.

The model is Caffe's MNIST LeNet exported by netspec; every request carries one image (batch 1, 1x28x28).
For each number of concurrent clients (--clients, default 1,4,16,64), the clients are separate processes,
each with one keep-alive connection, sending requests back to back for --duration seconds after a warm-up:

- a no-op HTTP server (the standard library's, answering a fixed body): the ceiling the clients and the
  machine allow, which every other column is divided by;
- `netspec serve` (each --serve-args, repeatable: one server configuration each) with the input as JSON,
  as Triton's binary tensors over HTTP, and over KServe V2 gRPC when the server has --grpc-port (the
  gRPC clients send one serialized ModelInferRequest with raw_input_contents through raw grpcio);
- onnxruntime called in this process from as many threads, on a session set up as a server worker's is.

Printed: a Markdown table, a row per number of clients, a column per server: requests/s, the share of the
no-op server's, latency p50/p99 (per request, as the client sees it) and errors if any; then the issue's
targets. A run takes about three minutes; --quick, with shorter cells, about two.

    python tools/bench/serve.py [--quick] [--clients 1,4,16,64] [--duration 5] [--model FILE.onnx]
        [--serve-args "--workers 1" --serve-args "--workers 2 --max-batch-size 1"]
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import multiprocessing as mp
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# the aims (issue 12): share of the no-op server at 16 clients, p99/p50 at 16, 1-client p50 in ms
TARGETS = {"binary": (0.7, 0.21), "JSON": (0.5, 0.36)}
NOT_AVAILABLE = "not available"
_FORK = mp.get_context("fork")  # clients start fast; none uses anything a fork would break


@dataclass
class Cell:
    """One measurement: requests/s and latencies (ms) over all clients, and failed requests."""

    rate: float
    p50: float
    p99: float
    errors: int

    @classmethod
    def of(cls, latencies: list[float], errors: int, duration: float) -> Cell:
        ms = np.array(latencies or [float("nan")]) * 1000
        return cls(len(latencies) / duration, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), errors)


# ---- clients ---------------------------------------------------------------------------------------------


def _http_client(port: int, path: str, body: bytes, headers: dict[str, str], start: Start, out: mp.Queue) -> None:
    latencies, errors = [], 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    measure, until = start.wait()
    while (sent := time.monotonic()) < until:
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            ok = False
        if sent >= measure:
            latencies.append(time.monotonic() - sent)
            errors += not ok
    conn.close()
    out.put((latencies, errors))


def _grpc_request(model: str, name: str, x: np.ndarray) -> bytes:
    """A serialized ModelInferRequest: the input as raw_input_contents, the output asked for as raw bytes."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype="FP32")
    tensor.shape.extend(x.shape)
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request.SerializeToString()


def _grpc_client(port: int, model: str, name: str, x: np.ndarray, start: Start, out: mp.Queue) -> None:
    import grpc  # here, not in the parent: grpcio's state must not cross a fork

    request = _grpc_request(model, name, x)
    latencies, errors = [], 0
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
        measure, until = start.wait()
        while (sent := time.monotonic()) < until:
            try:
                infer(request, timeout=60)
                ok = True
            except grpc.RpcError:
                ok = False
            if sent >= measure:
                latencies.append(time.monotonic() - sent)
                errors += not ok
    out.put((latencies, errors))


class Start:
    """Lets client processes start together once all of them are up (however long forking them took), warm
    up, then measure."""

    def __init__(self, clients: int, warmup: float, duration: float) -> None:
        self.barrier = _FORK.Barrier(clients)
        self.warmup, self.duration = warmup, duration

    def wait(self) -> tuple[float, float]:
        """When to begin measuring and when to stop (the clock is the machine's, the same in every process)."""
        self.barrier.wait()
        measure = time.monotonic() + self.warmup
        return measure, measure + self.duration


def drive(client: object, clients: int, warmup: float, duration: float, *args: object) -> Cell:
    """Client processes (no shared GIL) that start together, warm up, then measure."""
    out: mp.Queue = _FORK.Queue()
    start = Start(clients, warmup, duration)
    procs = [_FORK.Process(target=client, args=(*args, start, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return Cell.of([v for lat, _ in results for v in lat], sum(e for _, e in results), duration)


def in_process(model: str, clients: int, warmup: float, duration: float, x: np.ndarray) -> Cell:
    """session.run from `clients` threads of this process (onnxruntime releases the GIL)."""
    from netspec.deploy.runtime import Runtime

    runtime = Runtime(model, 1)  # one thread per run, as a server worker's instance runs it
    feeds = {runtime.inputs[0].name: x}
    latencies: list[list[float]] = [[] for _ in range(clients)]
    measure = time.monotonic() + warmup
    until = measure + duration

    def client(i: int) -> None:
        while (start := time.monotonic()) < until:
            runtime.run(feeds)
            if start >= measure:
                latencies[i].append(time.monotonic() - start)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Cell.of([v for per in latencies for v in per], 0, duration)


# ---- servers ---------------------------------------------------------------------------------------------


class _NoOp(http.server.BaseHTTPRequestHandler):
    """Reads the request and answers a fixed body."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    answer = b'{"model_name":"noop","outputs":[]}'

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: object) -> None:
        pass


def _noop_server(ports: mp.Queue) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoOp)
    server.daemon_threads = True
    ports.put(server.server_address[1])
    server.serve_forever()


def _has_grpc() -> str | None:
    """Why the gRPC column cannot be measured, or None."""
    usage = subprocess.run(
        [sys.executable, "-m", "netspec.cli", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    if "--grpc-port" not in usage:
        return "netspec serve has no --grpc-port"
    probe = "import grpc, tritonclient.grpc.service_pb2"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 0:
        return "grpcio or tritonclient[grpc] is not installed"
    return None


class Served:
    """A `netspec serve` process; its HTTP and gRPC ports read from its first line."""

    def __init__(self, model: str, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netspec.cli", "serve", model, "--port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        found = re.search(r"on http://[^ ]+:(\d+)(?: and gRPC [^ ]+:(\d+))? ", line)
        if not found:
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.port = int(found.group(1))
        self.grpc_port = int(found.group(2)) if found.group(2) else None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def _cell(cell: Cell | str, ceiling: float) -> str:
    if isinstance(cell, str):
        return cell
    errors = f", {cell.errors} errors" if cell.errors else ""
    return f"{cell.rate:.0f} ({cell.rate / ceiling:.2f}), {cell.p50:.2f} / {cell.p99:.1f}{errors}"


# ---- the run ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16,64", help="numbers of concurrent clients, comma-separated")
    parser.add_argument("--duration", type=float, help="seconds measured per cell (default 5; --quick 1.5)")
    parser.add_argument("--quick", action="store_true", help="shorter cells: the whole run in about two minutes")
    parser.add_argument("--model", help="an ONNX model with one FP32 input (default: LeNet exported by netspec)")
    parser.add_argument(
        "--serve-args", action="append", help="options for `netspec serve` (repeatable: one configuration each)"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    duration = args.duration or (1.5 if args.quick else 5.0)
    warmup = 0.5 if args.quick else 1.0

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            import netspec

            model = str(Path(tmp) / "lenet.onnx")
            netspec.export_onnx(netspec.compile(str(ROOT / "models" / "lenet.prototxt")), model, verify=False)
        from netspec.deploy.runtime import Runtime

        spec = Runtime(model).inputs[0]
        shape = [1 if d == -1 else d for d in spec.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        name = Path(model).stem
        path = f"/v2/models/{name}/infer"
        as_json = json.dumps(
            {"inputs": [{"name": spec.name, "shape": shape, "datatype": "FP32", "data": x.ravel().tolist()}]}
        ).encode()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": spec.name,
                        "shape": shape,
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        binary = (header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))})
        no_grpc = _has_grpc()

        print(
            f"{name} ({spec.name} {shape} FP32), batch-1 requests, {duration:g} s per cell after {warmup:g} s of "
            f"warm-up, clients in separate processes, {len(os.sched_getaffinity(0))} CPUs\n",
            flush=True,
        )
        rows: list[tuple[int, str, Cell | str]] = []
        ceiling: dict[int, float] = {}

        ports: mp.Queue = _FORK.Queue()
        noop = _FORK.Process(target=_noop_server, args=(ports,), daemon=True)
        noop.start()
        noop_port = ports.get()
        for c in counts:
            cell = drive(_http_client, c, warmup, duration, noop_port, path, b"{}", {})
            ceiling[c] = cell.rate
            rows.append((c, "no-op server (the ceiling)", cell))
        noop.terminate()

        for serve_args in args.serve_args or [""]:
            label = f" ({serve_args})" if serve_args else ""
            served = Served(model, [*shlex.split(serve_args), *([] if no_grpc else ["--grpc-port", "0"])])
            try:
                for c in counts:
                    json_http = (served.port, path, as_json, {"Content-Type": "application/json"})
                    rows.append((c, f"JSON{label}", drive(_http_client, c, warmup, duration, *json_http)))
                    binary_http = (served.port, path, *binary)
                    rows.append((c, f"binary{label}", drive(_http_client, c, warmup, duration, *binary_http)))
                    if served.grpc_port is None:
                        rows.append((c, f"gRPC{label}", f"{NOT_AVAILABLE} ({no_grpc or 'no gRPC port printed'})"))
                        continue
                    grpc_args = (served.grpc_port, name, spec.name, x)
                    rows.append((c, f"gRPC{label}", drive(_grpc_client, c, warmup, duration, *grpc_args)))
            finally:
                served.stop()

        for c in counts:
            rows.append((c, "onnxruntime in-process", in_process(model, c, warmup, duration, x)))

    columns = list(dict.fromkeys(what for _, what, _ in rows))
    print("requests/s (share of the no-op server's), p50 / p99 latency in ms\n")
    print(f"| clients | {' | '.join(columns)} |")
    print(f"| ---: |{' --- |' * len(columns)}")
    for c in dict.fromkeys(counts):
        cells = {what: cell for n, what, cell in rows if n == c}
        print(f"| {c} | {' | '.join(_cell(cells[what], ceiling[c]) for what in columns)} |")
    print()
    for c, what, cell in rows:
        mode = what.split(" ")[0]
        if mode not in TARGETS or isinstance(cell, str):
            continue
        share, p50 = TARGETS[mode]
        if c == 16:
            ratio, tail = cell.rate / ceiling[c], cell.p99 / cell.p50
            print(
                f"{what} at 16 clients: {ratio:.2f} of the no-op server's requests/s (aim >= {share}), "
                f"p99/p50 {tail:.1f} (aim <= 3)"
            )
        if c == 1:
            print(f"{what} at 1 client: p50 {cell.p50:.3f} ms (aim <= {p50} ms)")


if __name__ == "__main__":
    main()
