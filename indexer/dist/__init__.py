"""Scale-out: shards of one run on a Dask cluster, merged exactly.

Layer rule: imports ``indexer.run`` and what it may import.
"""
