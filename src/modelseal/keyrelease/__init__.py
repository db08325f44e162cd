"""What a key release puts on the wire, shared by the vault, devices and the edge agent: pure
functions over ``cryptography``, no HTTP, no SQL, no gRPC (so a device or the card imports them
without the server).

wire       the release and device-request MAC inputs, the HPKE suite and info strings, device headers
datakeys   the body of a `vault` stanza: a data key AES-GCM-wrapped under one master key version
report     a card's attestation report: canonical signed bytes, protobuf message (report.proto),
           verification against enrolled identity keys; report_pb2 is generated
           (scripts/gen_proto.sh)

May import: the core, recipients and ``modelseal.vault.errors`` (never gRPC).
Imported by: vault, device, agent.
"""
