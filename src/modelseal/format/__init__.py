"""The sealed-model format: header bytes, key schedule, STREAM payload, manifest."""
