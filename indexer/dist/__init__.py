"""Scale-out: the shards of one run on a Dask cluster, retried from their checkpoints and
merged exactly into one index.

``spec.py`` (what ``--dask`` means, which options it refuses), ``cluster.py`` (start or join a
cluster, describe it), ``shard.py`` (the worker side: one shard, one model per worker
process), ``job.py`` (the client side: submit, follow, reduce, finalize once).
Dask is imported only inside the functions that use it (``neuroscope --help`` stays light).

Layer rule: imports ``indexer.run`` and what it may import.
"""
