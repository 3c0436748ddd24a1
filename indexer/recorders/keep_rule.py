"""The keep rule of the quantile sampler: which tokens a feature keeps as sample candidates.

A band's final sample is its ``per_bin`` tokens of smallest priority (a hash, uniform in
[0, 2**32)). A band of N_B tokens needs priorities below about ``per_bin * 2**32 / N_B``,
so a token needs keeping only if its priority is below ``MARGIN * per_bin * 2**32 / L``,
where L is a lower bound on the count of the band it will end in. Bounds that only grow as
tokens arrive make the kept set a pure function of the tokens seen: a token below the final
threshold was below every earlier one, so it was kept when it came and never dropped.

The bound, per group of GROUP fine bins, from the tokens strictly above (a) and below (b)
the group and the total n: a token of the group in band i (quantiles lo_i .. hi_i, share
s_i) has at most (1 - lo_i) n tokens at or above it and at most hi_i n at or below it, and
the band holds s_i n, so the band's count is at least

    L = min over bands i of  s_i * max(n, a / (1 - lo_i), b / hi_i)

when the band holds its nominal share. Each term grows with a, b and n; so does L. The kept
set then has about ``MARGIN * per_bin * 11.4`` tokens at the default quantiles (the integral
of 1 / L over the distribution), whatever the corpus length. At the end a band whose kept
tokens below its smallest group threshold number ``per_bin`` has its exact bottom-k (all
bands, unless a fine bin holding much of a band's nominal share sits at its edge, and even
then with probability about 1 - P(Poisson(MARGIN * per_bin) < per_bin) = 1 - 4e-9); any
other band gets the kept tokens below that threshold: a smaller uniform sample of it, the
same for every run, order, shard and backend.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.finebins import N_FINE

GROUP_BITS = 3
GROUP = 1 << GROUP_BITS  # fine bins per threshold group
N_GROUPS = (N_FINE + GROUP - 1) // GROUP
MARGIN = 6.0  # the threshold is MARGIN x the expected largest priority of a band's sample
KEEP_ALL = 1 << 32  # a threshold that keeps every priority
SLACK = 2  # kernels keep a little more than the rule: float rounding never drops a token


def pool_capacity(per_bin: int) -> int:
    """Kept-token entries per feature: about twice the expected kept set."""
    return int(np.ceil(2 * 12 * MARGIN * per_bin / 16) * 16)


def band_terms(quantiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 [Q+1] each: 1 - lo_i, hi_i and s_i of every band."""
    edges = np.concatenate([[0.0], np.asarray(quantiles, np.float64), [1.0]])
    return 1.0 - edges[:-1], edges[1:].copy(), np.diff(edges)


def group_counts_np(counts: np.ndarray) -> np.ndarray:
    """int64 [feat, N_GROUPS]: the fine counts summed per group."""
    padded = np.zeros((counts.shape[0], N_GROUPS * GROUP), np.int64)
    padded[:, :N_FINE] = counts
    return padded.reshape(counts.shape[0], N_GROUPS, GROUP).sum(axis=2)


def bin_limit_np(counts: np.ndarray, per_bin: int) -> np.ndarray:
    """int64, shaped like counts: the threshold a fine bin's own count allows (a band holds
    at least the tokens of each of its fine bins, whatever the edges)."""
    ck = MARGIN * per_bin
    n = np.asarray(counts, np.float64)
    with np.errstate(divide="ignore"):
        return np.where(n <= ck, float(KEEP_ALL), np.floor(ck * 4294967296.0 / n)).astype(np.int64)


def fine_thresholds_np(counts: np.ndarray, quantiles: np.ndarray, per_bin: int, squeeze: np.ndarray) -> np.ndarray:
    """int64 [feat, N_FINE]: the threshold of every fine bin (exact: the rule's definition)."""
    group = thresholds_np(counts, quantiles, per_bin, np.zeros(len(counts), np.int64))
    t = np.minimum(np.repeat(group, GROUP, axis=1)[:, :N_FINE], bin_limit_np(counts, per_bin))
    return t >> np.asarray(squeeze, np.int64)[:, None]


def thresholds_np(counts: np.ndarray, quantiles: np.ndarray, per_bin: int, squeeze: np.ndarray) -> np.ndarray:
    """int64 [feat, N_GROUPS]: the group part of the rule (fine_thresholds_np adds the bin part)."""
    g = group_counts_np(counts).astype(np.float64)
    cum = np.cumsum(g, axis=1)
    n = cum[:, -1:]
    below, above = cum - g, n - cum
    one_minus_lo, hi, share = band_terms(quantiles)
    low = np.full(g.shape, np.inf)
    for i in range(len(share)):
        v = np.maximum(np.maximum(n, above / one_minus_lo[i]), below / hi[i])
        low = np.minimum(low, share[i] * v)
    ck = MARGIN * per_bin
    with np.errstate(divide="ignore"):
        t = np.where(low <= ck, float(KEEP_ALL), np.floor(ck * 4294967296.0 / low))
    return t.astype(np.int64) >> np.asarray(squeeze, np.int64)[:, None]


@njit(**NJIT_OPTIONS)
def bin_limit_nb(n, ck, slack=SLACK):
    """bin_limit_np of one count, ``slack`` above it (0: the rule's exact value)."""
    if n <= ck:
        return KEEP_ALL
    return min(np.int64(np.floor(ck * 4294967296.0 / n)) + slack, KEEP_ALL)


@njit(**NJIT_OPTIONS)
def thresholds_nb(counts_f, one_minus_lo, hi, share, ck, squeeze, out, slack=SLACK):
    """One feature's group thresholds into out int64 [N_GROUPS], ``slack`` above the rule's
    (0: exactly thresholds_np's, the same float64 operations in the same order)."""
    n_fine = counts_f.shape[0]
    n_groups = out.shape[0]
    g = np.zeros(n_groups, np.float64)
    for j in range(n_fine):
        g[j >> GROUP_BITS] += counts_f[j]
    n = 0.0
    for k in range(n_groups):
        n += g[k]
    below = 0.0
    for k in range(n_groups):
        above = n - below - g[k]
        low = np.inf
        for i in range(share.shape[0]):
            v = max(max(n, above / one_minus_lo[i]), below / hi[i])
            low = min(low, share[i] * v)
        if low <= ck:
            t = KEEP_ALL
        else:
            t = min(np.int64(np.floor(ck * 4294967296.0 / low)) + slack, KEEP_ALL)
        out[k] = t >> squeeze
        below += g[k]


def token_thresholds_t(group: torch.Tensor, counts: torch.Tensor, f: torch.Tensor, q: torch.Tensor,
                       per_bin: int) -> torch.Tensor:
    """int64 [n]: the threshold of fine bin q[i] of feature f[i] (group: group_thresholds_t),
    SLACK above fine_thresholds_np, before any squeeze (quantiles_torch.halvings_under
    counts the halvings a priority stays under)."""
    ck = MARGIN * per_bin
    n = counts[f, q].to(torch.float64)
    own = (torch.floor(ck * 4294967296.0 / n.clamp(min=1)).to(torch.int64) + SLACK).clamp(max=KEEP_ALL)
    own = torch.where(n <= ck, torch.full_like(own, KEEP_ALL), own)
    return torch.minimum(group[f, q >> GROUP_BITS], own)


def group_thresholds_t(counts: torch.Tensor, quantiles: np.ndarray, per_bin: int) -> torch.Tensor:
    """int64 [feat, N_GROUPS], SLACK above thresholds_np."""
    g = torch.zeros((counts.shape[0], N_GROUPS * GROUP), dtype=torch.float64, device=counts.device)
    g[:, :N_FINE] = counts
    g = g.view(counts.shape[0], N_GROUPS, GROUP).sum(2)
    cum = torch.cumsum(g, 1)
    n = cum[:, -1:]
    below, above = cum - g, n - cum
    low = torch.full_like(g, float("inf"))
    for oml, h, s in zip(*band_terms(quantiles)):
        low = torch.minimum(low, s * torch.maximum(torch.maximum(n, above / oml), below / h))
    ck = MARGIN * per_bin
    t = torch.floor(ck * 4294967296.0 / low).clamp(max=float(KEEP_ALL)).to(torch.int64) + SLACK
    return torch.where(low <= ck, torch.full_like(t, KEEP_ALL), t.clamp(max=KEEP_ALL))
