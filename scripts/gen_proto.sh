#!/bin/sh
# Regenerates the committed protobuf module of modelseal.device from its .proto (grpcio-tools, the
# dev extra). The gRPC service wiring is written by hand in modelseal/device (typed, and free of
# the grpcio version pin that generated *_pb2_grpc.py files carry), so only messages are generated.
# Usage: scripts/gen_proto.sh   (from anywhere; uses .venv/bin/python unless PYTHON is set)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
cd "$root/src"
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. modelseal/device/attestation.proto
echo "regenerated src/modelseal/device/attestation_pb2.py and .pyi"
