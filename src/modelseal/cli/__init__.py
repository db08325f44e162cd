"""The `modelseal` command line: argument parsing and output only; all work is the public API."""
