"""Compiles ``grpc_predict_v2.proto`` ahead of time into ``grpc_predict_v2_descriptors.py``, the
committed module the server loads its gRPC messages from (``grpc_protocol``), as KServe ships
its generated ``grpc_predict_v2_pb2.py``. Run by ``make grpc`` after an edit of the proto:

    python -m services.serving.grpc_codegen [OUT_FOLDER] [--proto PROTO]

protoc (grpcio-tools: a development tool, not needed to serve) writes the proto's
``FileDescriptorSet``; the module holds it serialized, as a bytes literal laid out the same
way for the same bytes, so a test can regenerate it and compare the files exactly
(``tests/services/serving/test_grpc_protocol.py``). Unlike protoc's ``*_pb2.py``, the module
registers nothing in protobuf's default pool: see ``grpc_protocol`` for why.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
PROTO = HERE / "grpc_predict_v2.proto"
MODULE = "grpc_predict_v2_descriptors.py"
WIDTH = 96  # the longest line written
PLAIN = frozenset(range(0x20, 0x7F)) - {ord("\\"), ord('"')}


def descriptor_set(proto: Path) -> bytes:
    """protoc's ``FileDescriptorSet`` of ``proto``, serialized. protoc runs in a process of its
    own: in one that has loaded TensorFlow, its protobuf library and protoc's clash (a
    segmentation fault)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "descriptors.pb"
        done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc",
                               f"--proto_path={proto.parent}", f"--descriptor_set_out={out}",
                               proto.name], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"protoc could not compile {proto}: {done.stderr.strip()}")
        return out.read_bytes()


def _literal_lines(data: bytes, indent: str) -> list[str]:
    """``data`` as bytes literals, one per line of at most ``WIDTH`` characters: printable
    ASCII as itself (the message and field names read as text), the rest as ``\\xNN``."""
    lines, line = [], ""
    for byte in data:
        if byte in PLAIN:
            token = chr(byte)
        elif byte in b'\\"':
            token = "\\" + chr(byte)
        else:
            token = f"\\x{byte:02x}"
        if len(indent) + len(line) + len(token) + 3 > WIDTH:
            lines.append(f'{indent}b"{line}"')
            line = ""
        line += token
    if line or not lines:
        lines.append(f'{indent}b"{line}"')
    return lines


def module_text(serialized: bytes, proto_name: str) -> str:
    """The generated module's text for a serialized ``FileDescriptorSet``."""
    return "\n".join([
        f"# Generated from {proto_name} by `make grpc` (python -m services.serving.grpc_codegen):",
        "# do not edit. tests/services/serving/test_grpc_protocol.py checks it is current.",
        f'"""{proto_name} compiled by protoc: its ``FileDescriptorSet``, serialized (read by',
        '``grpc_protocol`` into a descriptor pool of its own)."""',
        "",
        "SERIALIZED = (",
        *_literal_lines(serialized, "    "),
        ")",
        "",
    ])


def generate(out_folder: Path, proto: Path = PROTO) -> Path:
    """Writes ``MODULE`` for ``proto`` into ``out_folder``; returns its path."""
    path = out_folder / MODULE
    path.write_text(module_text(descriptor_set(proto), proto.name))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=HERE,
                        help=f"where to write {MODULE} (default: beside the proto)")
    parser.add_argument("--proto", type=Path, default=PROTO)
    args = parser.parse_args(argv)
    print(generate(args.out, args.proto))


if __name__ == "__main__":
    main()
