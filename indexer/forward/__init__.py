"""The forward pass: sites, hooks, head metrics, batched forward stopped after the last site,
and head scores on synthetic sequences.

Layer rule: imports ``indexer.inputs`` (and config, errors); never the recorders, the run or
the store.
"""
