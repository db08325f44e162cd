"""Service plumbing shared by the vault server and the edge agent (neither imports the other).

logs          JsonLog: one JSON object per line, never a secret (names, codes, timings)
http          the JSON error body, no-store headers, bounded request bodies
connections   listening (ListenError), request-head deadline, keep-alive, connection cap, peer
              credentials on unix sockets (imports uvicorn: only the serve functions load it)

May import: the core's errors only (and starlette, which both services run on).
"""
