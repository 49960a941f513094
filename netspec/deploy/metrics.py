"""What `netspec serve` did, as Prometheus metrics on prometheus-client: requests by model, version, endpoint
and status; requests inferred against session runs (how much the batcher merged); rows per run, time queued
and time computing.

With several worker processes, the supervisor gives them a private folder in PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode, chosen by that variable when the library is first imported): each
worker's values live in memory-mapped files there, and every worker's /metrics adds up all of them, so any
worker answers for the whole server. Counters of a worker that died stay (counters never go down); the
supervisor drops its share of the in-flight gauge (mark_process_dead)."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from netspec.deploy.runtime import Execution
from netspec.errors import DataError

SHARED = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's name for the workers' shared folder
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MODEL = ("model", "version")

# The *_created samples carry the time a series first appeared, which multiprocess mode cannot merge and
# leaves out: one worker or several then expose the same series.
disable_created_metrics()


class Metrics:
    """The metrics of one server. Within a process each server has its own registry; with PROMETHEUS_MULTIPROC_DIR
    set, the registry reads every worker's files instead (the values themselves are then process-wide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        shared = os.environ.get(SHARED)
        if shared:
            if not os.path.isdir(shared):
                raise DataError(
                    f"{SHARED} names '{shared}', which is not a folder",
                    hint="make it, or unset it (with --workers N, netspec serve gives the workers a folder itself)",
                )
            MultiProcessCollector(self.registry, shared)
        own = None if shared else self.registry
        self.requests = Counter(
            "netspec_requests",
            "Requests by model, version, endpoint and status ('' where no model was addressed).",
            [*MODEL, "endpoint", "code"],
            registry=own,
        )
        self.errors = Counter("netspec_request_errors", "Requests answered with an error status.", MODEL, registry=own)
        self.inferences = Counter(
            "netspec_inference_count", "Inference requests run (alone or batched).", MODEL, registry=own
        )
        self.executions = Counter(
            "netspec_execution_count", "onnxruntime runs (fewer than requests when batched).", MODEL, registry=own
        )
        self.batch_size = Histogram(
            "netspec_batch_size", "Rows per onnxruntime run.", MODEL, buckets=BATCH_BUCKETS, registry=own
        )
        self.queue_seconds = Histogram(
            "netspec_queue_seconds", "Time a request waited for a run.", MODEL, buckets=SECONDS_BUCKETS, registry=own
        )
        self.compute_seconds = Histogram(
            "netspec_compute_seconds", "Time in onnxruntime per run.", MODEL, buckets=SECONDS_BUCKETS, registry=own
        )
        self.in_flight = Gauge(
            "netspec_requests_in_flight", "Requests being answered now.", registry=own, multiprocess_mode="livesum"
        )
        # labelled series by their label values: looking one up in the library costs a lock and a check of
        # every value on each request
        self._requests: dict[tuple[str, str, str, int], tuple[Counter, Counter | None]] = {}
        self._runs: dict[tuple[str, str], tuple[Any, ...]] = {}

    def request(self, model: str, version: str, endpoint: str, status: int) -> None:
        key = (model, version, endpoint, status)
        series = self._requests.get(key)
        if series is None:
            error = self.errors.labels(model, version) if status >= 400 else None
            series = self._requests[key] = (self.requests.labels(model, version, endpoint, str(status)), error)
        series[0].inc()
        if series[1] is not None:
            series[1].inc()

    def model(self, name: str, version: str) -> tuple[Any, ...]:
        """The series of a model version's runs; the server makes them for each model it serves before the
        first request, so that they are there from the first scrape (at 0), as rate() wants them."""
        series = self._runs.get((name, version))
        if series is None:
            series = self._runs[(name, version)] = tuple(
                m.labels(name, version)
                for m in (self.inferences, self.executions, self.batch_size, self.queue_seconds, self.compute_seconds)
            )
        return series

    def execution(self, model: str, version: str, run: Execution) -> None:
        """One session run of a model version, as its batcher reports it."""
        inferences, executions, batch_size, queue_seconds, compute_seconds = self.model(model, version)
        inferences.inc(run.requests)
        executions.inc()
        batch_size.observe(run.rows)
        compute_seconds.observe(run.compute_seconds)
        for seconds in run.queue_seconds:
            queue_seconds.observe(seconds)

    def value(self, name: str, **labels: str) -> float:
        """One sample's value (0 when the series has no sample yet)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def text(self) -> bytes:
        """The text exposition format; label values escaped by the library."""
        return generate_latest(self.registry)
