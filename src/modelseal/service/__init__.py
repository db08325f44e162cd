"""Service plumbing shared by the vault server and the edge agent (neither imports the other).

logs   JsonLog: one JSON object per line, never a secret (names, codes, timings)
http   the JSON error body, no-store headers, bounded request bodies

May import: the core only (and starlette, which both services run on).
"""
