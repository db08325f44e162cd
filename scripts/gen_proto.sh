#!/bin/sh
# Regenerates the committed protobuf modules from their .proto files (grpcio-tools, the dev extra):
# the attestation report (modelseal/keyrelease, read by the vault without gRPC) and the card's
# service messages (modelseal/device). The gRPC service wiring is written by hand in
# modelseal/device (typed, and free of the grpcio version pin that generated *_pb2_grpc.py files
# carry), so only messages are generated.
# Usage: scripts/gen_proto.sh   (from anywhere; uses .venv/bin/python unless PYTHON is set)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
cd "$root/src"
for proto in modelseal/keyrelease/report.proto modelseal/device/attestation.proto; do
    "$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. "$proto"
    echo "regenerated src/${proto%.proto}_pb2.py and .pyi"
done
