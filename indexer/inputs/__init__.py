"""What goes into a run: model specs and loading, corpus specs and reading, token contexts,
and where the embedded data lives.

Layer rule: imports only ``indexer.config`` and ``indexer.errors``.
"""
