"""The Open Inference Protocol (KServe V2) over gRPC: `GRPCInferenceService` on grpcio, in each worker beside its
HTTP front (serve.Server), for every model and version of its repository (a request's model_name and
model_version; no version: the latest ready one), sharing that worker's sessions, batchers and metrics: a
gRPC request and an HTTP one may be merged into one onnxruntime run.

Requests are parsed here rather than by grpcio, so that bytes that are no message get INVALID_ARGUMENT (grpcio
would answer INTERNAL and log a traceback). Every refused request gets a status code and a message that says
what was wrong: INVALID_ARGUMENT for a request the model cannot take, NOT_FOUND for an unknown model or
version, UNAVAILABLE for a model that could not be loaded, while the server drains, or when the queue is
full or a request waited past --queue-timeout-ms; RESOURCE_EXHAUSTED (from grpcio) for
a message over --max-body-mb. A bug in netspec is INTERNAL, with the traceback in the server's log only.

Inputs come as typed `contents` (the field of their datatype) or all in `raw_input_contents` (little-endian,
row-major). Outputs go back the way the inputs came, as KServe's servers answer; FP16, which has no typed
field, always travels raw.
"""

from __future__ import annotations

import math
import sys
import traceback
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from netspec import __version__
from netspec._proto import grpc_predict_v2_pb2 as pb
from netspec.deploy.repository import ModelNotFound, ModelUnavailable, ServedModel
from netspec.deploy.runtime import NUMPY_OF, QueueFull, QueueTimeout, Tensor
from netspec.errors import NetspecError

if TYPE_CHECKING:
    from netspec.deploy.serve import Server

SERVICE = "inference.GRPCInferenceService"
THREADS = 64  # RPCs answered at once per worker: enough for the batcher to merge up to its usual batch size
# The field of InferTensorContents that holds each datatype's values (FP16 has none: raw only)
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
# the HTTP status of each code, for the request counts that HTTP and gRPC share
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
}


class Refused(Exception):
    """A request the server refuses: a gRPC status code and what was wrong."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def start(server: Server, host: str, port: int, reuse_port: bool) -> tuple[grpc.Server, int]:
    """A running gRPC server for `server`'s models on host:port, and the port it took (port 0: a free one).
    With `reuse_port` it joins the other workers' sockets on the port (SO_REUSEPORT); without, a port that is
    taken is an error rather than shared."""
    service = InferenceService(server)
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="grpc"),
        handlers=[service.handler()],
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", server.max_body),
        ],
        maximum_concurrent_rpcs=server.max_connections,
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = grpc_server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older releases returned 0
        bound = 0
    if bound == 0:
        raise NetspecError(
            f"cannot listen for gRPC on {address}: the port is taken or the address is not this machine's",
            hint="pick another --grpc-port (0 takes a free one)",
        )
    grpc_server.start()
    return grpc_server, bound


class InferenceService:
    """The RPCs of GRPCInferenceService for one worker's Server."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[type[Message], Callable[[Any], Message]]] = {
            "ServerLive": (pb.ServerLiveRequest, self.server_live),
            "ServerReady": (pb.ServerReadyRequest, self.server_ready),
            "ModelReady": (pb.ModelReadyRequest, self.model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self.server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, self.model_metadata),
            "ModelInfer": (pb.ModelInferRequest, self.model_infer),
            "RepositoryIndex": (pb.RepositoryIndexRequest, self.repository_index),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {name: grpc.unary_unary_rpc_method_handler(self._answer(name, *m)) for name, m in methods.items()},
        )

    def _answer(
        self, name: str, request_type: type[Message], method: Callable[[Any], Message]
    ) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        """The handler of one RPC, from the request's bytes to the answer's: every failure becomes a status."""
        endpoint = "grpc_" + "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")

        def answer(data: bytes, context: grpc.ServicerContext) -> bytes:
            code, message, labels = grpc.StatusCode.OK, "", ("", "")
            try:
                with self.server.metrics.in_flight.track_inprogress():
                    try:
                        request = request_type.FromString(data)
                    except DecodeError:
                        raise Refused(
                            grpc.StatusCode.INVALID_ARGUMENT, f"the request is not an inference.{name}Request message"
                        ) from None
                    labels = self._labels(request)
                    return method(request).SerializeToString()
            except Refused as e:
                code, message = e.code, e.message
            except ModelNotFound as e:
                code, message = grpc.StatusCode.NOT_FOUND, str(e)
            except ModelUnavailable as e:
                code, message = grpc.StatusCode.UNAVAILABLE, str(e)
            except Exception:  # a bug in netspec: the client is told, the server keeps serving and logs it
                traceback.print_exc(file=sys.stderr)
                code, message = grpc.StatusCode.INTERNAL, "internal server error (the server's log has the details)"
            finally:
                self.server.metrics.request(*labels, endpoint, HTTP_STATUS[code])
            context.abort(code, message)
            raise AssertionError("unreachable: abort raises")

        return answer

    def _labels(self, request: Message) -> tuple[str, str]:
        """The model version a request is for, as its metrics name it: ('', '') for none, or for one the server
        cannot answer for (the names come from clients; only the repository's own become labels)."""
        if isinstance(request, pb.ModelInferRequest):
            name, version = request.model_name, request.model_version
        elif isinstance(request, (pb.ModelReadyRequest, pb.ModelMetadataRequest)):
            name, version = request.name, request.version
        else:
            return "", ""
        try:
            model = self.server.models.get(name, version)
        except (ModelNotFound, ModelUnavailable):
            return "", ""
        return model.name, model.version

    # ---- health and metadata ------------------------------------------------------------------------------

    def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server.ready)

    def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="netspec", version=__version__)

    def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        """Ready or not; NOT_FOUND only for a model or version the repository does not have."""
        try:
            self.server.models.get(request.name, request.version)
        except ModelUnavailable:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.server.ready)

    def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        meta = self.server.models.metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    def repository_index(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        rows = self.server.models.index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    # ---- inference ----------------------------------------------------------------------------------------

    def model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = self.server.models.get(request.model_name, request.model_version)
        if not self.server.ready:
            raise Refused(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another")
        feeds = self._feeds(request, model)
        types = {t.name: t.datatype for t in model.outputs}
        wanted = [o.name for o in request.outputs] or list(types)
        for name in wanted:
            if name not in types:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unknown output '{name[:80]}'; the model has: {', '.join(types)}",
                )
        try:
            results = model.batcher.run(feeds, wanted)
        except (QueueFull, QueueTimeout) as e:
            raise Refused(grpc.StatusCode.UNAVAILABLE, str(e)) from None
        except Exception as e:  # onnxruntime's errors for inputs it refuses
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT, f"inference failed: {str(e).splitlines()[0][:300]}"
            ) from None
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        raw = bool(request.raw_input_contents) or any(types[name] not in CONTENTS for name in wanted)
        for name, value in zip(wanted, results, strict=True):
            value = np.asarray(value)
            datatype = types[name]
            out = response.outputs.add(name=name, datatype=datatype, shape=value.shape)
            if raw:
                little = np.dtype(NUMPY_OF[datatype]).newbyteorder("<")
                response.raw_output_contents.append(np.ascontiguousarray(value, dtype=little).tobytes())
            else:
                getattr(out.contents, CONTENTS[datatype]).extend(value.reshape(-1).tolist())
        return response

    def _feeds(self, request: pb.ModelInferRequest, model: ServedModel) -> dict[str, np.ndarray]:
        if not request.inputs:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the request has no inputs")
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request has {len(request.inputs)} inputs and {len(raw)} raw_input_contents; "
                "give every input's values there, in the order of the inputs, or none",
            )
        spec = {t.name: t for t in model.inputs}
        feeds: dict[str, np.ndarray] = {}
        for i, item in enumerate(request.inputs):
            name = item.name
            if name not in spec:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unknown input '{name[:80]}'; the model takes: {', '.join(spec)}",
                )
            if name in feeds:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}' is given twice")
            tensor = spec[name]
            shape = list(item.shape)
            if (
                len(shape) != len(tensor.shape)
                or any(s < 0 for s in shape)
                or any(m != -1 and m != s for m, s in zip(tensor.shape, shape, strict=True))
            ):
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{name}' has shape {shape}; the model takes {list(tensor.shape)} (-1: any size)",
                )
            if item.datatype != tensor.datatype:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{name}' has datatype {item.datatype[:20] or '(none)'}; the model takes {tensor.datatype}",
                )
            if raw:
                if item.HasField("contents"):
                    raise Refused(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input '{name}' has both contents and raw_input_contents; give one",
                    )
                feeds[name] = _from_raw(name, tensor, shape, raw[i])
            else:
                feeds[name] = _from_contents(name, tensor, shape, item.contents)
        missing = [n for n in spec if n not in feeds]
        if missing:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"missing input(s): {', '.join(missing)}")
        return feeds


def _from_raw(name: str, tensor: Tensor, shape: list[int], data: bytes) -> np.ndarray:
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    need = math.prod(shape) * dtype.itemsize
    if len(data) != need:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}' of shape {shape} and {tensor.datatype} needs {need} bytes; "
            f"its raw_input_contents has {len(data)}",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(tensor.dtype, copy=False)


def _from_contents(name: str, tensor: Tensor, shape: list[int], contents: pb.InferTensorContents) -> np.ndarray:
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}' is {tensor.datatype}, which has no typed contents; send it in raw_input_contents",
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        given = [f.name for f, v in contents.ListFields() if f.name != field and len(v)]
        elsewhere = f" (values are in {', '.join(given)}, not {field})" if given else ""
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}' of shape {shape} needs {count} values in contents.{field}; "
            f"it holds {len(values)}{elsewhere}",
        )
    dtype = np.dtype(tensor.dtype)
    if dtype.kind not in "iu" or not count:
        return np.array(values, dtype=dtype).reshape(shape)
    # the fields are 32 or 64 bits wide: narrower types are checked here, not wrapped around
    wide = np.array(values, dtype=np.int64 if dtype.kind == "i" else np.uint64)
    info = np.iinfo(dtype)
    if wide.min() < info.min or wide.max() > info.max:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}': a value in contents.{field} is out of {tensor.datatype}'s range [{info.min}, {info.max}]",
        )
    return wide.astype(dtype).reshape(shape)
