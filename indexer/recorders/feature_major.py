"""Feature-major batches for the numba kernels: the token list of a batch and tile transposes.

A batch arrives token-major (acts [batch, pos, feat]). Walking it token by token touches every
feature's recorder state once per token: with 2,561 fine bins per feature the state of one
thread's features is tens of MB, so each value costs a cache miss or two. Instead each thread
copies a tile of ``TILE`` features x all tokens of the batch into a small buffer (one 64-byte
read per token row and tile) and then walks one feature at a time over all tokens, so that
feature's counts, thresholds and histogram stay in L1/L2 for the whole batch.

Within a feature tokens are visited in (context, position) order, the order the token-major
kernels used, so float sums come out bit for bit the same.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.hashing import context_hash_nb, token_hash_nb

TILE = 64  # features per transposed tile: 256 bytes of each token row


@njit(**NJIT_OPTIONS)
def batch_tokens(lengths):
    """The recorded tokens of a batch in (context, position) order: row b [n] int32,
    position t [n] int32, and where each context's run starts, starts [batch + 1] int64."""
    n_batch = lengths.shape[0]
    starts = np.zeros(n_batch + 1, np.int64)
    for b in range(n_batch):
        starts[b + 1] = starts[b] + max(lengths[b] - 1, 0)
    n = starts[n_batch]
    rows = np.empty(n, np.int32)
    poss = np.empty(n, np.int32)
    for b in range(n_batch):
        for i in range(starts[b], starts[b + 1]):
            rows[i] = b
            poss[i] = i - starts[b] + 1
    return rows, poss, starts


@njit(**NJIT_OPTIONS)
def token_hashes(ctx_ids, starts, seed):
    """uint32 [n]: the token hash of every recorded token (see hashing.token_hash_nb)."""
    n_batch = ctx_ids.shape[0]
    out = np.empty(starts[n_batch], np.uint32)
    for b in range(n_batch):
        ch = context_hash_nb(seed, ctx_ids[b])
        for i in range(starts[b], starts[b + 1]):
            out[i] = token_hash_nb(ch, i - starts[b] + 1)
    return out


@njit(**NJIT_OPTIONS)
def transpose_tile(bits, rows, poss, f0, m, buf):
    """buf[j, i] = bits[rows[i], poss[i], f0 + j] for j < m: a tile of int32 value bits."""
    for i in range(rows.shape[0]):
        row = bits[rows[i], poss[i], f0:f0 + m]
        for j in range(m):
            buf[j, i] = row[j]
