"""The messages and methods of ``grpc_predict_v2.proto``, compiled here at import with
grpcio-tools' protoc (about 0.3 s, once per process) into a descriptor pool of our own.

Nothing generated is kept in the repository, and the pool is private: a process that also
loads another copy of the protocol (tritonclient's, which uses the same ``inference``
package) sees no clash. ``messages.ModelInferRequest`` and so on are ordinary protobuf
classes; ``METHODS`` names each RPC's request and response; ``Stub`` is a client.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO = Path(__file__).with_name("grpc_predict_v2.proto")
PACKAGE, SERVICE = "inference", "GRPCInferenceService"
METHODS = {  # RPC: (request, response)
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}


def _compile(proto: Path) -> descriptor_pb2.FileDescriptorSet:
    """protoc (grpcio-tools) in a process of its own: in this one, TensorFlow's protobuf
    library and protoc's would clash (a segmentation fault)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "descriptors.pb"
        done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc",
                               f"--proto_path={proto.parent}", f"--descriptor_set_out={out}",
                               proto.name], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"protoc could not compile {proto}: {done.stderr.strip()}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class _Messages:
    """``messages.Name``: the message class ``inference.Name`` of the private pool."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        found = message_factory.GetMessageClass(
            self._pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        setattr(self, name, found)
        return found


_pool = descriptor_pool.DescriptorPool()
for _file in _compile(PROTO).file:
    _pool.Add(_file)
messages = _Messages(_pool)
_service = _pool.FindServiceByName(f"{PACKAGE}.{SERVICE}")
assert {m.name for m in _service.methods} == set(METHODS), "the proto and METHODS disagree"


def handler(implementation: Any) -> grpc.GenericRpcHandler:
    """The service for a gRPC server: each RPC calls ``implementation.<RPC>(request, context)``."""
    return grpc.method_handlers_generic_handler(f"{PACKAGE}.{SERVICE}", {
        rpc: grpc.unary_unary_rpc_method_handler(
            getattr(implementation, rpc),
            request_deserializer=getattr(messages, request).FromString,
            response_serializer=getattr(messages, response).SerializeToString)
        for rpc, (request, response) in METHODS.items()})


class Stub:
    """A client: ``Stub(channel).ModelInfer(request, metadata=...)``."""

    def __init__(self, channel: grpc.Channel) -> None:
        for rpc, (request, response) in METHODS.items():
            setattr(self, rpc, channel.unary_unary(
                f"/{PACKAGE}.{SERVICE}/{rpc}",
                request_serializer=getattr(messages, request).SerializeToString,
                response_deserializer=getattr(messages, response).FromString))
