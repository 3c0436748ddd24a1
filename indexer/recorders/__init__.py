"""Recorders: exact top-k, quantile-bin samples and statistics of every feature of a site.

Layer rule: imports only ``indexer.errors`` (and numpy, numba, torch); it knows nothing of
models, sites or files. ``FeatureRecorders`` (bundle.py) holds one site's three recorders.

Each recorder takes batches `update(acts [batch, pos, feat], lengths [batch], ctx_ids
[batch])`, merges exactly with `merge(other)`, and round-trips through `state()` /
`from_state()`. Backends: "numba" (CPU, neuron-major kernels) and "torch" (any device);
both give identical results except for floating sums.
"""

from indexer.recorders.common import RecorderError, default_backend
from indexer.recorders.bundle import FeatureRecorders, warm_up
from indexer.recorders.finebins import N_FINE
from indexer.recorders.histogram import N_BINS, hist_edges
from indexer.recorders.quantiles import QuantileSampler
from indexer.recorders.stats import Stats
from indexer.recorders.topk import TopK

__all__ = [
    "FeatureRecorders",
    "N_BINS",
    "N_FINE",
    "QuantileSampler",
    "RecorderError",
    "Stats",
    "TopK",
    "default_backend",
    "hist_edges",
    "warm_up",
]
