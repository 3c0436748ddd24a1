"""The index on disk: table schemas (one frozen dataclass per table), the atomic writer, the
manifest, the DuckDB query layer with its lock-down, and canned queries.

Layer rule: imports only ``indexer.config`` and ``indexer.errors``; never torch, so the viewer
and `neuroscope sql` start without it.
"""
