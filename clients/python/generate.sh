#!/usr/bin/env bash
# Regenerates the protobuf/gRPC modules of the `whatisup` package from ../../proto with grpcio-tools (protoc is
# embedded in it: no system protoc). Usage: clients/python/generate.sh [OUT_DIR]   (default: src, in place)
# PYTHON may name the interpreter that has grpcio-tools (default: python3). The output depends only on the proto
# files and the grpcio-tools version (pinned in pyproject.toml's `generate` extra), so the test suite regenerates
# into a temporary directory and compares.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$(cd "$here/../../proto" && pwd)"
out="${1:-$here/src}"
py="${PYTHON:-python3}"
mkdir -p "$out"
cd "$proto"
"$py" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  whatisup/v1/*.proto
