"""The messages and methods of ``grpc_predict_v2.proto``, in a descriptor pool of our own.

The proto is compiled ahead of time (``make grpc``: ``grpc_codegen``) into the committed
``grpc_predict_v2_descriptors``, and a test checks that module is current; serving needs no
protoc. The pool is private, and built on first use, not at import: a process that also loads
another copy of the protocol (tritonclient's, which uses the same ``inference`` package and
message names in protobuf's default pool) sees no clash, so tritonclient and this server's own
clients work side by side in one process. ``messages.ModelInferRequest`` and so on are
ordinary protobuf classes; ``METHODS`` names each RPC's request and response; ``Stub`` is a
client.
"""

from __future__ import annotations

import functools
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from services.serving.grpc_predict_v2_descriptors import SERIALIZED

PACKAGE, SERVICE = "inference", "GRPCInferenceService"
METHODS = {  # RPC: (request, response)
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "ModelStatistics": ("ModelStatisticsRequest", "ModelStatisticsResponse"),
}


@functools.cache
def pool() -> descriptor_pool.DescriptorPool:
    """The private pool holding the compiled proto (built once, on first use)."""
    built = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(SERIALIZED).file:
        built.Add(file)
    served = {m.name for m in built.FindServiceByName(f"{PACKAGE}.{SERVICE}").methods}
    if served != set(METHODS):
        raise RuntimeError(f"the proto's RPCs {sorted(served)} are not METHODS {sorted(METHODS)}")
    return built


class _Messages:
    """``messages.Name``: the message class ``inference.Name`` of the private pool."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and the like ask for these: not messages
            raise AttributeError(name)
        found = message_factory.GetMessageClass(pool().FindMessageTypeByName(f"{PACKAGE}.{name}"))
        setattr(self, name, found)
        return found


messages = _Messages()


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
