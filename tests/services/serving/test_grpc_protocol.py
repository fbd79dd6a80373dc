"""The gRPC protocol's generated module is current, serving needs no protoc, and the private
descriptor pool lives beside tritonclient's copy of the same ``inference`` package."""

import subprocess
import sys
from pathlib import Path

from services.serving import grpc_codegen

COMMITTED = Path(grpc_codegen.__file__).with_name(grpc_codegen.MODULE)


def _generate(out: Path, *options: str) -> Path:
    """``make grpc``'s command, into ``out`` (a process of its own, as make runs it)."""
    done = subprocess.run([sys.executable, "-m", "services.serving.grpc_codegen", str(out),
                           *options], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return out / grpc_codegen.MODULE


def test_the_committed_module_is_what_the_proto_compiles_to(tmp_path):
    """Fails after an edit of grpc_predict_v2.proto until `make grpc` is run."""
    assert _generate(tmp_path).read_bytes() == COMMITTED.read_bytes()


def test_an_edited_proto_compiles_to_another_module(tmp_path):
    proto = tmp_path / grpc_codegen.PROTO.name
    text = grpc_codegen.PROTO.read_text()
    live = "message ServerLiveResponse {\n  bool live = 1;"
    proto.write_text(text.replace(live, live + "\n  int32 extra = 2;"))
    assert proto.read_text() != text
    assert _generate(tmp_path, "--proto", str(proto)).read_bytes() != COMMITTED.read_bytes()


def test_the_module_text_round_trips_any_bytes():
    data = bytes(range(256)) * 3 + b'\\"\'\n'
    namespace: dict[str, object] = {}
    exec(grpc_codegen.module_text(data, "x.proto"), namespace)  # noqa: S102
    assert namespace["SERIALIZED"] == data
    text = grpc_codegen.module_text(data, "x.proto")
    assert max(len(line) for line in text.splitlines()) <= grpc_codegen.WIDTH


SERVES_WITHOUT_GRPC_TOOLS = """
import sys
sys.modules["grpc_tools"] = None  # any import of it fails
import tritonclient.grpc.service_pb2 as triton  # its own copy of inference.*, default pool
from services.serving import grpc_api, grpc_protocol
assert grpc_protocol.pool.cache_info().currsize == 0, "the pool was built at import"
assert "tensorflow" not in sys.modules
request = grpc_protocol.messages.ModelInferRequest(model_name="fashion-mnist", id="a")
theirs = triton.ModelInferRequest.FromString(request.SerializeToString())
assert theirs.model_name == "fashion-mnist" and theirs.id == "a"
assert type(request) is not triton.ModelInferRequest
grpc_protocol.handler(grpc_api.InferenceService(None))
print("served")
"""


def test_serving_needs_no_protoc_and_lives_beside_tritonclient():
    done = subprocess.run([sys.executable, "-c", SERVES_WITHOUT_GRPC_TOOLS], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "served", done.stderr
