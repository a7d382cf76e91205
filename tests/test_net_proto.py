"""The checked-in generated code matches clicooper.proto; the wire bytes are pinned (golden)."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch
from google.protobuf import descriptor_pb2

from clicooper.net.proto import clicooper_pb2 as pb
from clicooper.net.proto import clicooper_pb2_grpc as pb_grpc
from clicooper.net.proto.gen_proto import GENERATED, PACKAGE_DIR, PROTO, SRC_ROOT, generate
from clicooper.net.serde import WireLimits, message_from_bytes, message_to_bytes
from clicooper.protocol.messages import Activations, Control, Header

torch.set_num_threads(1)

GOLDEN_ACTIVATIONS = (
    "0a0572756e2d311202444f1a025431200728013002380140024a0b61637469766174696f6e73521e0a07666c6f61743332"
    "120201021a080000803f000000c02205747261696e"
)
GOLDEN_CONTROL = (
    "0a0572756e2d31120254311a02444f20082803300440014a07636f6e74726f6c5a1b0a09726f756e645f656e641206"
    "0a016112013212060a017a120131"
)


def _descriptor(module: object) -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fdp)  # type: ignore[attr-defined]
    return fdp


# What names the generating tool's version: it differs between grpcio-tools / protoc releases that emit
# the same code (1.85.1 and 1.85.4 wrote byte-different files for an identical descriptor).
_TOOL_VERSIONS = (
    (re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.M), "GRPC_GENERATED_VERSION = <version>"),
    (re.compile(r"^# Protobuf Python Version: .*$", re.M), "# Protobuf Python Version: <version>"),
    (re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)", re.S), "<runtime version check>"),
)


def _without_tool_versions(text: str) -> str:
    for pattern, placeholder in _TOOL_VERSIONS:
        text = pattern.sub(placeholder, text)
    return text


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools not installed")
def test_checked_in_code_matches_proto(tmp_path):
    # prepare: regenerate from the .proto into a scratch tree
    paths = generate(tmp_path)
    # execute: read the fresh module's serialized descriptor (importing it would clash in the pool)
    fresh_src = paths[0].read_text()
    # assert: identical descriptors — what goes on the wire — whatever tool version generated them
    checked_in_src = (SRC_ROOT / PACKAGE_DIR / GENERATED[0]).read_text()
    marker = "AddSerializedFile(b'"
    fresh_desc = fresh_src.split(marker, 1)[1].split("')", 1)[0]
    checked_desc = checked_in_src.split(marker, 1)[1].split("')", 1)[0]
    assert fresh_desc == checked_desc, f"regenerate with src/clicooper/net/proto/gen_proto.sh ({PROTO})"
    # and identical code apart from the lines naming the generator's version
    for name, path in zip(GENERATED, paths, strict=True):
        fresh = _without_tool_versions(path.read_text())
        assert fresh == _without_tool_versions((SRC_ROOT / PACKAGE_DIR / name).read_text()), name


def test_version_lines_are_the_only_ones_masked():
    # the mask drops the generator's version lines and nothing that carries the service or the messages
    grpc_src = (SRC_ROOT / PACKAGE_DIR / "clicooper_pb2_grpc.py").read_text()
    pb2_src = (SRC_ROOT / PACKAGE_DIR / "clicooper_pb2.py").read_text()
    masked_grpc, masked_pb2 = _without_tool_versions(grpc_src), _without_tool_versions(pb2_src)
    assert "GRPC_GENERATED_VERSION = <version>" in masked_grpc and "<runtime version check>" in masked_pb2
    # only the version lines changed: the line counts drop by the runtime check's extra lines alone
    assert len(grpc_src.splitlines()) == len(masked_grpc.splitlines())
    assert "class LinkStub" in masked_grpc and "'/clicooper.v1.Link/Stream'" in masked_grpc
    assert "AddSerializedFile(b'" in masked_pb2


def test_service_shape():
    fdp = _descriptor(pb)
    (service,) = fdp.service
    (method,) = service.method
    assert (service.name, method.name, method.client_streaming, method.server_streaming) == (
        "Link", "Stream", True, True)
    assert hasattr(pb_grpc, "LinkStub")
    env_fields = {f.name: f.number for f in pb.Envelope.DESCRIPTOR.fields}
    assert env_fields == {"run_id": 1, "sender": 2, "receiver": 3, "seq": 4, "epoch": 5, "step": 6,
                          "micro": 7, "n_micro": 8, "kind": 9, "tensor": 10, "control": 11}


def test_golden_bytes_activations():
    # prepare
    msg = Activations(Header("DO", "T1", 1, 2, micro=1, n_micro=2, run_id="run-1", seq=7),
                      torch.tensor([[1.0, -2.0]]), mode="train")
    # execute
    data = message_to_bytes(msg)
    # assert
    assert data.hex() == GOLDEN_ACTIVATIONS
    back = message_from_bytes(bytes.fromhex(GOLDEN_ACTIVATIONS), limits=WireLimits())
    assert back.header == msg.header and torch.equal(back.tensor, msg.tensor)


def test_golden_bytes_control_sorted_map():
    msg = Control(Header("T1", "DO", 3, 4, run_id="run-1", seq=8), kind="round_end",
                  payload={"z": "1", "a": "2"})
    assert message_to_bytes(msg).hex() == GOLDEN_CONTROL
