"""The `modelseal` command. It calls the public library (``modelseal``, ``modelseal.runtimes``,
``modelseal.cfs``, ``modelseal.device``) and the vault's client and server entry points; nothing
here holds logic of its own beyond reading flags.

main          the parser (every group's ``add_commands``), signals, errors -> exit codes
_common       shared flags and their reading: identities, passphrases, --force, device slots, the vault
keys          keygen, identity, recipient, signer
sealing       seal, unseal, inspect, verify, rewrap
qaic          encrypt-model, encrypt-with-session-keys, wrap-mek, replace-mek (the seed's workflow)
cfs           cfs mount, cfs run
device        device serve/attest/verify/load/run/keygen (emulated accelerator cards)
vault         the parsers of the REST API commands (`vault key|token|device|policy|...`), whose
              commands are in vault_admin; vault_server: init, serve, status, seal, unseal, audit
agent         agent serve
progress      the progress bar

Imports go one way: main -> the group modules -> _common; no group module imports main.
"""
