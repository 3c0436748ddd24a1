"""Scale-out: one run's stream tokenized once, indexed in many shards on a Dask cluster (handed
out as workers free up, retried from their checkpoints), merged exactly into one index.

Client side: ``job.py`` (the job: tokenize, index, merge, finalize once), ``tokenize_phase.py``
(pieces dealt to the workers), ``pieces.py`` (which pieces), ``layout.py`` (the single run's
stream from the pieces; shards of equal tokens), ``follow.py`` (progress), ``figures.py`` (the
manifest's ``dask`` entry). Worker side: ``tokenize.py`` (one piece into the token store,
``token_store.py``), ``shard.py`` (one shard from its checkpoint), ``reduce.py`` (pairwise
merges of state files), ``worker.py`` (the model loaded once per worker process). ``spec.py``
says what ``--dask`` means; ``cluster.py`` starts or joins a cluster. Dask is imported only
inside the functions that use it (``neuroscope --help`` stays light).

Layer rule: imports ``indexer.run`` and what it may import.
"""
