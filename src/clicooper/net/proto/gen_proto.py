"""Regenerate the checked-in protobuf / gRPC modules from ``clicooper.proto``.

The generated ``clicooper_pb2.py``, ``clicooper_pb2.pyi`` and ``clicooper_pb2_grpc.py`` are checked in so
users need no protobuf compiler; only contributors who change the ``.proto`` run this (it needs
``grpcio-tools``)::

    python -m clicooper.net.proto.gen_proto          # or: src/clicooper/net/proto/gen_proto.sh

``tests/test_net_proto.py`` fails when the checked-in code and the ``.proto`` disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: ``src/`` — the include root, so generated imports read ``from clicooper.net.proto import clicooper_pb2``.
SRC_ROOT = Path(__file__).resolve().parents[3]
PROTO = Path(__file__).resolve().with_name("clicooper.proto")
GENERATED = ("clicooper_pb2.py", "clicooper_pb2.pyi", "clicooper_pb2_grpc.py")
#: Where the generated modules live, relative to :data:`SRC_ROOT` (and to ``generate``'s ``out_dir``).
PACKAGE_DIR = PROTO.parent.relative_to(SRC_ROOT)


def generate(out_dir: Path | None = None) -> list[Path]:
    """Run ``grpc_tools.protoc`` on ``clicooper.proto``; write into ``out_dir`` (default: in place).

    Returns the paths of the generated files. ``out_dir`` receives the package layout
    (``clicooper/net/proto/…``) when given, so a test can compare without touching the source tree.
    """
    try:
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - dev-only tool
        raise RuntimeError("regenerating the wire code needs grpcio-tools: pip install grpcio-tools") from e
    import grpc_tools

    out = SRC_ROOT if out_dir is None else Path(out_dir)
    (out / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    rel = PROTO.relative_to(SRC_ROOT)
    args = [
        "protoc",
        f"-I{SRC_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(rel),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} on {PROTO}")
    return [out / PACKAGE_DIR / name for name in GENERATED]


if __name__ == "__main__":  # pragma: no cover
    for path in generate():
        print(path)
    sys.exit(0)
