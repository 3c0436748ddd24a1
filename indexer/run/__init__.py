"""One indexing run: the ``Run`` object (stream, checkpoint, finalize), the output folder,
checkpoints, finalize, merge of shards, and the bench.

Layer rule: imports ``indexer.forward``, ``indexer.recorders``, ``indexer.store``,
``indexer.inputs`` (and config, errors).
"""
