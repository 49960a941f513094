"""An ONNX model in onnxruntime: one session, its inputs and outputs in Open Inference Protocol terms,
and its netspec metadata. Shared by `netspec serve` and `netspec predict`."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netspec.errors import DataError
from netspec.files import checked

# Open Inference Protocol datatype <-> onnxruntime type <-> numpy dtype
DATATYPES = {
    "tensor(float)": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int16)": ("INT16", np.int16),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(uint16)": ("UINT16", np.uint16),
    "tensor(uint32)": ("UINT32", np.uint32),
    "tensor(uint64)": ("UINT64", np.uint64),
    "tensor(bool)": ("BOOL", np.bool_),
}
NUMPY_OF = {name: dtype for name, dtype in DATATYPES.values()}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a free axis

    @property
    def dtype(self) -> Any:
        return NUMPY_OF[self.datatype]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def physical_cores() -> int:
    """The physical cores this process may use: its CPU affinity, capped by its cgroup's CPU quota, with
    hyperthread siblings counted once."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus // _threads_per_core())


def _cgroup_cpus() -> int | None:
    """CPUs' worth of time the cgroup allows (cgroup v2 cpu.max, or v1 cfs quota), rounded up; None: no cap."""
    text = _read("/sys/fs/cgroup/cpu.max")
    if text is not None:
        quota, _, period = text.partition(" ")
    else:
        quota, period = (
            _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") or "-1",
            _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us") or "100000",
        )
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return -(-q // p) if q > 0 and p > 0 else None


def _threads_per_core() -> int:
    """Hardware threads per core, from CPU 0's siblings ("0-1", "0,64" or "0"); 1 when unknown."""
    text = _read("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
    if not text:
        return 1
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        try:
            count += int(high) - int(low) + 1 if high else 1
        except ValueError:
            return 1
    return max(1, count)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


class Runtime:
    """One onnxruntime session for a model file (run() may be called from several threads at once)."""

    def __init__(self, path: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        p = checked(path, "model file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # the CPU is shared
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own kinds for every unreadable model
            raise DataError(
                f"onnxruntime cannot load '{path}': {str(e).splitlines()[0][:300]}",
                hint="export it with `netspec export SPEC --onnx FILE`",
            ) from None
        self.path = p
        self.inputs = [self._tensor(v) for v in self.session.get_inputs()]
        self.outputs = [self._tensor(v) for v in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels: list[str] | None = json.loads(meta["netspec.labels"]) if "netspec.labels" in meta else None
        self.channel_order = meta.get("netspec.channel_order", "BGR")
        self.channel_order_recorded = "netspec.channel_order" in meta
        self.input_ranges: dict[str, tuple[float, float]] = {
            k: (float(v[0]), float(v[1])) for k, v in json.loads(meta.get("netspec.input_ranges", "{}")).items()
        }

    @staticmethod
    def _tensor(value: Any) -> Tensor:
        if value.type not in DATATYPES:
            raise DataError(f"model tensor '{value.name}' has type {value.type}, which netspec does not serve")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in value.shape)
        return Tensor(value.name, DATATYPES[value.type][0], shape)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        return self.session.run(outputs or [o.name for o in self.outputs], feeds)


class QueueFull(Exception):
    """The batcher's queue holds --max-queue-size requests already."""


class QueueTimeout(Exception):
    """A request waited in the queue longer than --queue-timeout-ms, counted from its own arrival."""


class Slots:
    """The session runs a worker may have going at once (--instances), shared by the batchers of all the
    models it serves: a worker with many models computes no more runs at once than a worker with one, so
    instances x threads per run stays within its share of the cores however many models it holds. The
    batchers also share the lock and the condition that hand the slots out."""

    def __init__(self, count: int) -> None:
        self.free = count
        self.cond = threading.Condition()


@dataclass(eq=False)
class _Pending:
    feeds: dict[str, np.ndarray]
    outputs: list[str]
    key: tuple[Any, ...] | None  # requests with equal keys may share a run; None: runs alone
    rows: int
    arrival: float = field(default_factory=time.monotonic)
    taken: bool = False  # into a run: its queue deadline no longer applies
    done: bool = False
    results: list[np.ndarray] | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class Execution:
    """What one session run did, for metrics."""

    requests: int
    rows: int
    queue_seconds: list[float]  # per request: from arrival to the start of its run
    compute_seconds: float


class Batcher:
    """Dynamic batching with Triton's semantics. Requests wait in one queue; whenever one of the session
    slots (`instances`: a count, or Slots shared with other models' batchers) is free, the thread of a
    waiting request takes the oldest request and every later one whose inputs agree with it in everything
    but the first axis (names, datatypes, other dimensions), up to `max_batch_size` rows, concatenates them,
    runs the session once and splits the outputs back by row. With `max_queue_delay` 0 nothing waits on
    purpose: a request that finds a slot free runs at once, alone (a run waiting up to max_queue_delay for
    a fuller batch holds its slot meanwhile). A merged run that fails is retried
    request by request, so that each request gets its own answer or error. With `queue_timeout` (Triton's
    default_queue_policy timeout), a request still queued that long after its own arrival leaves the queue
    with QueueTimeout, whatever the requests around it do. `batchable` False (a model without a free first
    axis on every input and output) runs requests one by one through the same queue."""

    def __init__(
        self,
        runtime: Runtime,
        instances: int | Slots,
        max_batch_size: int = 64,
        max_queue_delay: float = 0.0,
        max_queue_size: int = 1024,
        batchable: bool | None = None,
        observe: Callable[[Execution], None] | None = None,
        queue_timeout: float | None = None,
    ) -> None:
        self.runtime = runtime
        self.slots = instances if isinstance(instances, Slots) else Slots(instances)
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue_size = max_queue_size
        self.queue_timeout = queue_timeout
        if batchable is None:
            batchable = all(t.shape[:1] == (-1,) for t in [*runtime.inputs, *runtime.outputs])
        self.batchable = batchable and max_batch_size > 1
        self.observe = observe
        self.queue: deque[_Pending] = deque()
        self.cond = self.slots.cond

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """The outputs for one request, run alone or merged with others. Raises QueueFull, QueueTimeout, or
        what the session raised for this request."""
        rows = {len(a) for a in feeds.values() if a.ndim > 0}
        mergeable = self.batchable and len(rows) == 1 and 0 < (n := rows.pop()) <= self.max_batch_size
        key = tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in feeds.items())) if mergeable else None
        item = _Pending(feeds, outputs, key, n if mergeable else 0)
        with self.cond:
            if len(self.queue) >= self.max_queue_size:
                raise QueueFull(
                    f"the server's queue holds {self.max_queue_size} requests (--max-queue-size); retry later"
                )
            self.queue.append(item)
            if self.max_queue_delay > 0:
                self.cond.notify_all()  # a run waiting to fill up may take this one
            while not item.done:
                if self.slots.free > 0 and self.queue:
                    self.slots.free -= 1
                    batch = self._take()
                    self.cond.release()
                    try:
                        self._execute(batch)
                    finally:
                        self.cond.acquire()
                        self.slots.free += 1
                        for done in batch:
                            done.done = True
                        self.cond.notify_all()
                elif self.queue_timeout is None:
                    self.cond.wait()
                else:
                    self._expire()
                    if not item.done:
                        left = item.arrival + self.queue_timeout - time.monotonic()
                        self.cond.wait(None if item.taken else max(0.0, left))
        if item.error is not None:
            raise item.error
        return item.results or []

    def _expire(self) -> None:
        """Ends the wait of every queued request older than queue_timeout (the lock is held)."""
        if self.queue_timeout is None:
            return
        now = time.monotonic()
        late = [item for item in self.queue if now - item.arrival >= self.queue_timeout]
        for item in late:
            self.queue.remove(item)
            item.error = QueueTimeout(
                f"the request waited {(now - item.arrival) * 1000:.0f} ms in the queue, longer than "
                f"{self.queue_timeout * 1000:g} ms (--queue-timeout-ms); retry later"
            )
            item.done = True
        if late:
            self.cond.notify_all()

    def _take(self) -> list[_Pending]:
        """The next run's requests (the lock is held; waits up to max_queue_delay for a fuller batch)."""
        self._expire()
        if not self.queue:
            return []
        head = self.queue[0]
        if head.key is not None and self.max_queue_delay > 0:
            deadline = head.arrival + self.max_queue_delay
            while (left := deadline - time.monotonic()) > 0 and self._fill(head) < self.max_batch_size:
                self.cond.wait(left)
            self._expire()
            if not self.queue:
                return []
            head = self.queue[0]
        batch = [self.queue.popleft()]
        head.taken = True
        if head.key is None:
            return batch
        rows = head.rows
        for item in list(self.queue):
            if rows >= self.max_batch_size:
                break
            if item.key == head.key and rows + item.rows <= self.max_batch_size:
                self.queue.remove(item)
                item.taken = True
                batch.append(item)
                rows += item.rows
        return batch

    def _fill(self, head: _Pending) -> int:
        return sum(item.rows for item in self.queue if item.key == head.key)

    def _execute(self, batch: list[_Pending]) -> None:
        if not batch:  # another slot took them while this one waited for more
            return
        if len(batch) == 1:
            self._alone(batch[0])
            return
        names = list(dict.fromkeys(name for item in batch for name in item.outputs))
        feeds = {name: np.concatenate([item.feeds[name] for item in batch]) for name in batch[0].feeds}
        start = time.monotonic()
        try:
            results = self.runtime.run(feeds, names)
            total = sum(item.rows for item in batch)
            if any(np.ndim(r) == 0 or len(r) != total for r in results):
                raise ValueError("an output does not have one row per input row")
        except Exception:  # each request is retried alone and gets its own answer
            for item in batch:
                self._alone(item)
            return
        self._observe(batch, start)
        offset = 0
        for item in batch:
            part = {name: r[offset : offset + item.rows] for name, r in zip(names, results, strict=True)}
            item.results = [part[name] for name in item.outputs]
            offset += item.rows

    def _alone(self, item: _Pending) -> None:
        start = time.monotonic()
        try:
            item.results = self.runtime.run(item.feeds, item.outputs)
        except Exception as e:  # the session's error for this request, raised in its own thread
            item.error = e
            return
        self._observe([item], start)

    def _observe(self, batch: list[_Pending], start: float) -> None:
        if self.observe is not None:
            end = time.monotonic()
            self.observe(
                Execution(
                    len(batch), sum(item.rows for item in batch), [start - item.arrival for item in batch], end - start
                )
            )
