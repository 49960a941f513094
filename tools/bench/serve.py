"""Requests per second of `netspec serve` against in-process onnxruntime calls on the same model, in one run.

The model is Caffe's MNIST LeNet exported by netspec (batch 1, 1x28x28). The baseline calls
session.run from C concurrent threads in this process on a session configured as the server configures
its own; the server is a `netspec serve` process driven by C client processes over keep-alive HTTP
connections, sending each input as JSON and (separately) as Triton binary tensors. Each measurement runs
for --duration seconds after a warm-up. Printed: requests/s, latency p50/p99 (per request, seen by the
client) and the ratio of the server's requests/s to the baseline's and to a no-op stdlib HTTP server's
with the same clients (the ceiling the clients and the machine allow). Each --serve-args (repeatable) is one
server configuration measured in the same run, e.g. batching off against on, one worker against two:

    python tools/bench/serve.py [--clients 4] [--duration 10] [--batch 1] [--model FILE.onnx]
        [--serve-args "--workers 1 --max-batch-size 1" --serve-args "--workers 2"]
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import multiprocessing as mp
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    ms = np.array(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def in_process(model: str, clients: int, duration: float, x: np.ndarray) -> tuple[float, list[float]]:
    from netspec.deploy.runtime import Runtime

    runtime = Runtime(model, 1)  # one thread per run, as a server worker on one core runs it
    name = runtime.inputs[0].name
    latencies: list[list[float]] = [[] for _ in range(clients)]

    def client(i: int, until: float) -> None:
        while (start := time.monotonic()) < until:
            runtime.run({name: x})
            latencies[i].append(time.monotonic() - start)

    for run_for, keep in ((1.0, False), (duration, True)):  # a warm-up, then the measurement
        until = time.monotonic() + run_for
        threads = [threading.Thread(target=client, args=(i, until)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not keep:
            latencies = [[] for _ in range(clients)]
    flat = [v for per in latencies for v in per]
    return len(flat) / duration, flat


def _client(
    port: int, model: str, body: bytes, headers: dict[str, str], begin: float, until: float, out: mp.Queue
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies, errors = [], 0
    time.sleep(max(0.0, begin - time.monotonic()))
    while (start := time.monotonic()) < until:
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append(time.monotonic() - start)
        errors += response.status != 200
    conn.close()
    out.put((latencies, errors))


def over_http(
    port: int, model: str, clients: int, duration: float, body: bytes, headers: dict[str, str]
) -> tuple[float, list[float], int]:
    """Client processes (no shared GIL with each other) start together, after the processes are up."""
    out: mp.Queue = mp.Queue()
    for run_for in (1.0, duration):  # a warm-up, then the measurement
        begin = time.monotonic() + 1.0
        procs = [
            mp.Process(target=_client, args=(port, model, body, headers, begin, begin + run_for, out))
            for _ in range(clients)
        ]
        for p in procs:
            p.start()
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
    latencies = [v for lat, _ in results for v in lat]
    return len(latencies) / duration, latencies, sum(e for _, e in results)


class _NoOp(http.server.BaseHTTPRequestHandler):
    """Reads the request and answers a fixed body: what the clients and the machine allow at most."""

    protocol_version = "HTTP/1.1"
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
    _NoOp.disable_nagle_algorithm = True
    ports.put(server.server_address[1])
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--model", help="an ONNX model with one FP32 input (default: LeNet exported by netspec)")
    parser.add_argument(
        "--serve-args",
        action="append",
        help="options for `netspec serve` (repeatable: one server configuration each; default: none)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            import netspec

            model = str(Path(tmp) / "lenet.onnx")
            netspec.export_onnx(netspec.compile(str(ROOT / "models" / "lenet.prototxt")), model, verify=False)
        from netspec.deploy.runtime import Runtime

        spec = Runtime(model).inputs[0]
        shape = [args.batch if d == -1 else d for d in spec.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

        rate, lat = in_process(model, args.clients, args.duration, x)
        p50, p99 = _percentiles(lat)
        print(
            f"model {Path(model).name}, input {spec.name} {shape}, {args.clients} concurrent clients, "
            f"{args.duration:g} s each"
        )
        print(f"in-process onnxruntime: {rate:9.1f} requests/s  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms")

        name = Path(model).stem
        ports: mp.Queue = mp.Queue()
        noop = mp.Process(target=_noop_server, args=(ports,), daemon=True)
        noop.start()
        ceiling, lat, _ = over_http(ports.get(), name, args.clients, args.duration, b"{}", {})
        noop.terminate()
        p50, p99 = _percentiles(lat)
        print(
            f"no-op stdlib server:    {ceiling:9.1f} requests/s  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  "
            "(the ceiling the clients allow)",
            flush=True,
        )
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
        for serve_args in args.serve_args or [""]:
            proc = subprocess.Popen(
                [sys.executable, "-m", "netspec.cli", "serve", model, "--port", "0", *shlex.split(serve_args)],
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stderr is not None
                line = proc.stderr.readline()
                found = re.search(r":(\d+) \(POST", line)
                if not found:
                    raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
                port = int(found.group(1))
                for mode, body, headers in (
                    ("JSON", as_json, {"Content-Type": "application/json"}),
                    ("binary", header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}),
                ):
                    served, lat, errors = over_http(port, name, args.clients, args.duration, body, headers)
                    p50, p99 = _percentiles(lat)
                    print(
                        f"netspec serve {serve_args} ({mode:6}): {served:9.1f} requests/s  p50 {p50:6.3f} ms  "
                        f"p99 {p99:6.3f} ms  errors {errors}  of in-process {served / rate:.2f}  of no-op "
                        f"{served / ceiling:.2f}",
                        flush=True,
                    )
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)


if __name__ == "__main__":
    main()
