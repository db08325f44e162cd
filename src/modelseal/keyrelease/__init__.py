"""What a key release puts on the wire, shared by the vault, devices and the edge agent: pure
functions over ``cryptography``, no HTTP, no SQL, no gRPC (so a device or the card imports them
without the server).

wire       the release and device-request MAC inputs, the HPKE suite and info strings, device headers
datakeys   the body of a `vault` stanza: a data key AES-GCM-wrapped under one master key version

May import: the core (errors) and ``modelseal.vault.errors``. Imported by: vault, device, agent.
"""
