"""Fixed "symlog" histogram bins, computed from the float32 bit pattern with integer ops.

The bins are the same for every feature, run and shard, so histograms merge by addition.
With a = |x| as bits, N_BINS = 129 bins:

    bin 64            |x| < 2**-8 (the zero bin, also subnormals and -0.0)
    bin 65 + k        x > 0,  k = 4 * (exponent + 8) + top 2 mantissa bits, k in [0, 64)
    bin 63 - k        x < 0,  the mirror image

so there are 4 sub-bins per octave over 2**-8 <= |x| < 2**8. Values with |x| >= 2**8
(also inf and NaN) are clamped into the outermost bin of their sign, 0 or 128.
`hist_edges()` gives the 130 edges; positive bins are [lo, hi), negative bins (lo, hi]
(closed on the side nearer zero), the zero bin is open on both sides.

>>> hist_edges()[[0, 64, 65, 66, 129]].tolist()
[-256.0, -0.00390625, 0.00390625, 0.0048828125, 256.0]
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from indexer.recorders.common import NJIT_OPTIONS

LOG2_MIN, LOG2_MAX, SUB_BITS = -8, 8, 2
N_SIDE = (LOG2_MAX - LOG2_MIN) << SUB_BITS  # 64 bins per sign
N_BINS = 2 * N_SIDE + 1
ZERO_BIN = N_SIDE
_LO = (127 + LOG2_MIN) << 23  # bits of 2**-8
_HI = (127 + LOG2_MAX) << 23  # bits of 2**8
_SHIFT = 23 - SUB_BITS
_ABS = 0x7FFFFFFF


def hist_edges() -> np.ndarray:
    """float64 [N_BINS + 1]; the outermost bins also hold everything beyond their edge."""
    k = np.arange(N_SIDE + 1)
    octave, sub = k >> SUB_BITS, k & ((1 << SUB_BITS) - 1)
    pos = np.ldexp(1.0 + sub / (1 << SUB_BITS), LOG2_MIN + octave)
    return np.concatenate([-pos[::-1], pos])


def hist_bins_np(x: np.ndarray) -> np.ndarray:
    """Reference bins (int64) of a float32 array."""
    u = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
    a = u & _ABS
    k = (np.minimum(a, _HI - 1) - _LO) >> _SHIFT
    return np.where(a < _LO, ZERO_BIN, np.where(u >= 0, ZERO_BIN + 1 + k, ZERO_BIN - 1 - k))


@njit(**NJIT_OPTIONS)
def hist_bin_nb(u):
    """Bin of one float32 given as its int32 bit pattern."""
    a = u & np.int32(_ABS)
    k = (min(a, np.int32(_HI - 1)) - np.int32(_LO)) >> np.int32(_SHIFT)
    if a < np.int32(_LO):
        return np.int32(ZERO_BIN)
    return np.int32(ZERO_BIN + 1) + k if u >= 0 else np.int32(ZERO_BIN - 1) - k


def hist_bins_t(x: torch.Tensor) -> torch.Tensor:
    """int64 bins of a float32 tensor, same shape."""
    u = x.contiguous().view(torch.int32).to(torch.int64)
    a = u & _ABS
    k = (a.clamp(max=_HI - 1) - _LO) >> _SHIFT
    side = torch.where(u >= 0, ZERO_BIN + 1 + k, ZERO_BIN - 1 - k)
    return torch.where(a < _LO, torch.full_like(side, ZERO_BIN), side)


def fine_to_hist() -> np.ndarray:
    """int64 [N_FINE]: the histogram bin of every fine bin of the quantile sampler's grid.

    The fine grid (finebins.py: 64 sub-bins per octave over 2**-10..2**10) refines this one
    (4 per octave over 2**-8..2**8, the same clamping of what lies beyond), so each fine bin
    lies inside one histogram bin: the histogram is a sum of fine counts, exactly. The map is
    non-decreasing, so `hist_from_fine` can sum runs.
    """
    from indexer.recorders.finebins import N_FINE, ZERO, lower_edges

    edges = lower_edges()  # x >= edges[j] <=> fine bin >= j: edges[j] lies in bin j
    probe = edges.copy()
    probe[0] = np.float32(-np.inf)
    out = hist_bins_np(probe)
    out[ZERO] = ZERO_BIN
    assert out.shape == (N_FINE,) and np.all(np.diff(out) >= 0)
    return out


def hist_from_fine(fine_counts: np.ndarray) -> np.ndarray:
    """int64 [feat, N_BINS]: the histogram of features whose fine-bin counts are given."""
    lut = fine_to_hist()
    starts = np.flatnonzero(np.diff(lut, prepend=-1))  # first fine bin of each histogram bin
    assert len(starts) == N_BINS
    return np.add.reduceat(np.asarray(fine_counts, np.int64), starts, axis=1)
