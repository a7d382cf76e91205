#!/usr/bin/env bash
# Regenerate clicooper_pb2*.py from clicooper.proto (needs grpcio-tools; see gen_proto.py).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../../.." && pwd)"   # repository root
PY="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT/src" && "$PY" -m clicooper.net.proto.gen_proto
