"""The models one `netspec serve` answers for, by name and version: one ONNX file, or a folder laid out as
Triton's model repository.

A folder holds `NAME/VERSION/model.onnx` (VERSION: a number; every numbered folder is a version) and plain
`NAME.onnx` files (version 1). A model file that cannot be served (unreadable, not ONNX, a tensor type netspec
does not serve, a version folder without model.onnx) is recorded as UNAVAILABLE with its reason and skipped;
the rest are served. Each version has its own onnxruntime session and its own batcher (queue and merged
runs); the batchers of one worker share its --instances session slots (runtime.Slots), so that a worker
computes no more runs at once with ten models than with one and the threads stay within its cores.

The lookup the protocol front ends (HTTP in serve.py, gRPC) use:

    model = repository.get(name, version)   # version None or "": the latest (highest) READY version
    model.batcher.run(feeds, output_names)  # what the session returns for one request
    model.inputs, model.outputs             # runtime.Tensor lists; model.metadata: the V2 metadata dict

`get` raises ModelNotFound (no such name, or no such version of it: HTTP 404, gRPC NOT_FOUND) or
ModelUnavailable (it is there but could not be loaded: HTTP 503, gRPC UNAVAILABLE); both are ModelError,
whose str() is the message for the client. `repository.metadata(name, version)` is the model metadata
answer (an unversioned one lists every READY version) and `repository.index()` the rows of Triton's
`POST /v2/repository/index`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netspec.deploy.runtime import Batcher, Execution, Runtime, Slots, Tensor
from netspec.errors import NetspecError

PLATFORM = "onnxruntime_onnx"


class ModelError(LookupError):
    """A request names a model or version the server cannot answer for; str(): what to tell the client."""


class ModelNotFound(ModelError):
    """No model of that name, or no version of that number."""


class ModelUnavailable(ModelError):
    """The model (version) is in the repository but could not be loaded."""


@dataclass(frozen=True)
class Batching:
    """How each model version's requests are queued and merged (runtime.Batcher's options)."""

    instances: int = 2  # session runs at once, for all the models together
    max_batch_size: int = 64
    max_queue_delay: float = 0.0  # seconds
    max_queue_size: int = 1024
    queue_timeout: float | None = None  # seconds; None: a request waits as long as it takes


@dataclass(eq=False)
class ServedModel:
    """One version of one model, ready to run."""

    name: str
    version: str
    runtime: Runtime
    batcher: Batcher

    @property
    def inputs(self) -> list[Tensor]:
        return self.runtime.inputs

    @property
    def outputs(self) -> list[Tensor]:
        return self.runtime.outputs

    @property
    def metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol's model metadata for this version."""
        return _metadata(self, [self.version])


@dataclass(frozen=True)
class Entry:
    """One row of the repository index: a model version, READY or UNAVAILABLE with the reason."""

    name: str
    version: str
    model: ServedModel | None
    reason: str = ""

    @property
    def state(self) -> str:
        return "READY" if self.model is not None else "UNAVAILABLE"

    def index(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "state": self.state, "reason": self.reason}


@dataclass
class Repository:
    """Model name -> version -> Entry. Built once before serving and only read afterwards, so lookups from
    many threads need no lock."""

    batching: Batching = field(default_factory=Batching)
    entries: dict[str, dict[str, Entry]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.slots = Slots(self.batching.instances)

    @classmethod
    def load(
        cls, path: str, name: str | None = None, threads: int | None = None, batching: Batching | None = None
    ) -> Repository:
        """The models at `path`: one ONNX file (served as `name`, default its stem, version 1; a file that
        cannot be loaded is an error, as before repositories) or a repository folder (models that cannot be
        loaded are recorded and skipped; a folder where none can be loaded is an error)."""
        repository = cls(batching or Batching())
        root = Path(path)
        if not root.is_dir():
            repository.add(name or root.stem, "1", Runtime(path, threads))
            return repository
        if name is not None:
            raise NetspecError(
                f"--name names a single model; '{path}' is a model repository, whose folder and file names "
                "are the models' names"
            )
        for model, version, file, reason in _scan(root):
            if reason:
                repository.fail(model, version, reason)
                continue
            try:
                repository.add(model, version, Runtime(str(file), threads))
            except NetspecError as e:
                repository.fail(model, version, e.msg)
        if not any(repository.models()):
            failed = repository.unavailable()
            raise NetspecError(
                f"no model in '{path}' can be served"
                + (f"; model '{failed[0].name}': {failed[0].reason}" if failed else ""),
                hint="a model repository holds NAME/VERSION/model.onnx folders or NAME.onnx files",
            )
        return repository

    def add(self, name: str, version: str, runtime: Runtime) -> ServedModel:
        """Serves `runtime` as version `version` of `name`, with its own batcher on the shared slots."""
        b = self.batching
        batcher = Batcher(
            runtime,
            self.slots,
            b.max_batch_size,
            b.max_queue_delay,
            b.max_queue_size,
            queue_timeout=b.queue_timeout,
        )
        model = ServedModel(name, version, runtime, batcher)
        self._put(Entry(name, version, model))
        return model

    def fail(self, name: str, version: str, reason: str) -> None:
        """Records a model version that cannot be served, and why."""
        self._put(Entry(name, version, None, reason))

    def _put(self, entry: Entry) -> None:
        versions = self.entries.setdefault(entry.name, {})
        versions[entry.version] = entry
        self.entries[entry.name] = dict(sorted(versions.items(), key=lambda kv: _number(kv[0])))

    def observe(self, callback: Callable[[ServedModel, Execution], None]) -> None:
        """Has every batcher report its runs to `callback`, with the model version that ran."""
        for model in self.models():
            model.batcher.observe = _Observer(callback, model)

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The model version a request names; no version (None or ""): the latest READY one."""
        versions = self.entries.get(name)
        if versions is None:
            known = ", ".join(f"'{n}'" for n in self.entries) or "none"
            raise ModelNotFound(f"unknown model '{name[:80]}'; this server serves {known}")
        if version:
            version = str(int(version)) if version.isdigit() else version  # "01" is version 1, as in Triton
            entry = versions.get(version)
            if entry is None:
                numbered = [v for v in versions if v]  # not "": a model file without a version
                has = f"version{'s' if len(numbered) > 1 else ''} {', '.join(numbered)}"
                raise ModelNotFound(f"unknown version '{version[:20]}' of model '{name}'; it has {has}")
            if entry.model is None:
                raise ModelUnavailable(f"model '{name}' version {version} is unavailable: {entry.reason}")
            return entry.model
        ready = [e.model for e in versions.values() if e.model is not None]
        if not ready:
            latest = list(versions.values())[-1]
            raise ModelUnavailable(f"model '{name}' has no version ready: {latest.reason}")
        return ready[-1]

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The model metadata answer: of that version, or of the latest, listing every READY version."""
        model = self.get(name, version)
        if version:
            return model.metadata
        return _metadata(model, [e.version for e in self.entries[name].values() if e.model is not None])

    def models(self) -> Iterator[ServedModel]:
        """Every READY model version."""
        for versions in self.entries.values():
            for entry in versions.values():
                if entry.model is not None:
                    yield entry.model

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: name, version, state (READY or UNAVAILABLE) and reason per version."""
        return [
            entry.index()
            for versions in self.entries.values()
            for entry in versions.values()
            if entry.model is not None or not ready_only
        ]

    def unavailable(self) -> list[Entry]:
        return [e for versions in self.entries.values() for e in versions.values() if e.model is None]


@dataclass(frozen=True)
class _Observer:
    callback: Callable[[ServedModel, Execution], None]
    model: ServedModel

    def __call__(self, run: Execution) -> None:
        self.callback(self.model, run)


def _metadata(model: ServedModel, versions: list[str]) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [t.metadata() for t in model.inputs],
        "outputs": [t.metadata() for t in model.outputs],
    }


def _number(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def _scan(root: Path) -> Iterator[tuple[str, str, Path, str]]:
    """(name, version, model file, reason it cannot be served or "") for each model version in a folder,
    by name. Hidden entries and other files are not models; a folder without a numbered version folder is
    one that cannot be served (as Triton reports it)."""
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".onnx":
            if entry.stem in folders:  # the folder's versions are served; this row says why the file is not
                yield entry.stem, "", entry, f"{entry.name} is not served: the folder {entry.stem}/ is"
            else:
                yield entry.stem, "1", entry, ""
        elif entry.is_dir():
            numbered = (p for p in entry.iterdir() if p.is_dir() and p.name.isdigit())
            versions = sorted(numbered, key=lambda p: int(p.name))
            if not versions:
                yield entry.name, "", entry, f"{entry.name}/ has no version folder ({entry.name}/1/model.onnx)"
            for folder in versions:
                file = folder / "model.onnx"
                reason = "" if file.is_file() else f"{entry.name}/{folder.name}/ has no model.onnx"
                yield entry.name, str(int(folder.name)), file, reason


def log_unavailable(repository: Repository) -> None:
    """Says on stderr which model versions are skipped and why (the index says it to clients)."""
    for entry in repository.unavailable():
        version = f" version {entry.version}" if entry.version else ""
        message = f"netspec serve: model '{entry.name}'{version} is not served: {entry.reason}"
        print(message, file=sys.stderr, flush=True)
