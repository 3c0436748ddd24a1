"""SampleWindows: windows of likely quantile samples, captured while streaming, in a bounded
per-feature pool, so finalize runs the model only over the samples it missed.

A band's final sample is the ``per_bin`` smallest priorities among its ``N`` tokens, and
priorities are uniform in [0, 2**32): its largest is about ``per_bin * 2**32 / N``. So a
kept token whose priority is below ``cap = MARGIN * per_bin * 2**32 / N̂`` (MARGIN: 3 at the
default pool of 2.7 entries per sample, up to 5 for larger pools, sample_window_kernels; N̂: the count of
the band its fine bin falls in, estimated from the feature's current fine counts as the end
will cut them; fine bins in an estimated edge's zone take the larger cap of the two bands,
since edges still move: the fine bins within the tokens its rank may still move by,
sample_window_kernels.zone_tokens) is a likely final sample.

Inside the fused kernel, after ``quantile_feature`` folded a feature's tokens:
``sample_windows_feature`` copies the window of each token that entered the sampler's kept
pool under its bin's cap into a free pool entry. In batches 1, 2, 4 and every
``SWEEP_EVERY``th (and whenever the feature's pool is full) ``refresh_feature`` first
recomputes the feature's band edges and caps (``edges`` [feat, Q, 5], ``band_cap`` [feat, Q+1])
and frees entries whose priority is now above their cap. The pool never grows past ``pool``
entries per feature; a token met while it is full is not captured.

The torch backend (an accelerator's) does the same on the device, vectorised and without a
host sync (``capturer``): caps are refreshed before every batch (``_refresh_torch``), because
noticing a full pool, as the numba kernel does, would sync the device; after the batch the
candidates are the tokens that entered the sampler's kept pool in it, and each feature keeps
the pool's worth of its entries and candidates most likely to end a sample (``_place``: a
sort per feature, no compaction).

Exactness does not depend on what is captured: an entry's window is the token's true window,
and finalize runs the model over the contexts of final samples without one. Which entries
are captured depends on batch timing and backend.

An entry keeps its token (ctx id, position) and its window, nothing else: its priority is
recomputed from the token (hashing.py) and its fine bin from its own value in the window.

The numba kernels are in sample_window_kernels.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from indexer.recorders.common import (
    SHORT_CONTEXT, Recorder, RecorderError, position_dtype, state_max_len, step_elements,
)
from indexer.recorders.finebins import fine_bins_t
from indexer.recorders.hashing import token_priority_t
from indexer.recorders.sample_window_kernels import (
    MAX_MARGIN, NO_CAP, OVERSUBSCRIBE, ZONE_SHARE, ZONE_SIGMAS, find_slots, merge_pool, refresh_all,
)

# Pool entries per feature = entries per sample x bands x per_bin (at least POOL_PER_SAMPLE: 108
# at the defaults, 25.3 KB with windows of 48 + 8; `--window-pool`). Fewer entries miss more
# final samples, whose contexts finalize then runs: toy-1l over 1M tokens of code re-ran 159 of
# 4,042 contexts at 3 entries per sample, 237 at 2.7, 321 at 2.5 (scripts/finalize_counts.py);
# 2.7 keeps the state at the defaults under 48 KB. With many features nearly every context holds
# a missed sample at 2.7 (the GPT-2-small shape: 0.26% of samples); 6 misses few (README).
POOL_PER_SAMPLE = 2.7
WINDOW_ELEMENTS = 1 << 22  # torch backend: window values per step of a placement (bounds its temporaries)


def pool_size(n_quantiles: int, per_bin: int, per_sample: float = POOL_PER_SAMPLE) -> int:
    return math.ceil(round(per_sample * (n_quantiles + 1) * per_bin, 9))  # 2.7 x 40 is 108, not 109


class SampleWindows(Recorder):
    """A pool of captured windows per feature.

    Attributes (state):
        vals: float32 [feat, pool, W].  ctx: int32 (-1: free), pos: int16 (int32 for contexts
        over common.SHORT_CONTEXT tokens), each [feat, pool].
    Derived: edges int64 [feat, Q, 5] (each estimated band edge's fine bin, its zone [lo, hi),
    and the caps of the bands above and below should they take its zone's bins),
    band_cap int64 [feat, Q+1]; free int32 [feat, pool] / top
    int64 [feat], a stack.
    """

    kind = "sample_windows"
    arrays = ("vals", "ctx", "pos")
    merge_free = ("pool",)  # pools of any size merge (--window-pool auto sizes a shard's to its machine)

    def __init__(self, n_features: int, pool: int, backend: str | None = None, device="cpu",
                 before: int = 0, after: int = 0, max_len: int = SHORT_CONTEXT):
        super().__init__(backend, device)
        if pool < 0 or before < 0 or after < 0:
            raise RecorderError(f"pool={pool}, before={before}, after={after} but expected all >= 0")
        self.n_features, self.pool, self.before, self.after = int(n_features), int(pool), int(before), int(after)
        self.max_len = int(max_len)
        self.width = self.before + self.after + 1
        shape = (self.n_features, self.pool)
        self.vals = self._array(np.zeros((*shape, self.width), np.float32))
        self.ctx = self._array(np.full(shape, -1, np.int32))  # ctx ids < 2**31, as the sampler's
        self.pos = self._array(np.full(shape, -1, position_dtype(self.max_len)))
        # per feature: the estimated band edges (fine bins) and each band's cap (none yet)
        self.edges = self._array(np.zeros((self.n_features, 0, 5), np.int64))
        self.band_cap = self._array(np.full((self.n_features, 1), NO_CAP, np.int64))
        self._rebuild_free()

    def bands_for(self, n_quantiles: int) -> None:
        """Size the per-feature band estimates for this many quantiles (no caps yet)."""
        if self.edges.shape[1] != n_quantiles:
            self.edges = self._array(np.zeros((self.n_features, n_quantiles, 5), np.int64))
            self.band_cap = self._array(np.full((self.n_features, n_quantiles + 1), NO_CAP, np.int64))

    def _rebuild_free(self) -> None:
        ctx = self._numpy("ctx")
        self.free = np.zeros((self.n_features, self.pool), np.int32)
        self.top = np.zeros(self.n_features, np.int64)
        for f in range(self.n_features):
            slots = np.flatnonzero(ctx[f] < 0)
            self.free[f, :len(slots)] = slots
            self.top[f] = len(slots)

    def config(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "pool": self.pool, "before": self.before, "after": self.after,
                "max_len": self.max_len}

    @classmethod
    def _config_from_state(cls, state):
        return {**{k: int(state[k]) for k in ("n_features", "pool", "before", "after")},
                "max_len": state_max_len(state)}

    @classmethod
    def from_state(cls, state, backend=None, device="cpu"):
        obj = super().from_state(state, backend, device)
        obj._rebuild_free()
        return obj

    def lookup(self, feature: np.ndarray, ctx_id: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found bool [n], values float32 [n, W]) of the pool entries of (feature, ctx, pos)."""
        slot = find_slots(self._numpy("ctx"), self._numpy("pos"), np.asarray(feature, np.int64),
                           np.asarray(ctx_id, np.int64), np.asarray(pos, np.int64))
        found = slot >= 0
        out = np.zeros((len(feature), self.width), np.float32)
        out[found] = self._numpy("vals")[np.asarray(feature)[found], slot[found]]
        return found, out

    def sweep(self, samples: Any) -> None:
        """New caps from the sampler's fine counts; free the entries above them."""
        if self.pool == 0:
            return
        if self.backend == "torch":
            with torch.no_grad():
                self._refresh_torch(samples)
            return
        self.bands_for(len(samples.quantiles))
        refresh_all(samples.fine_counts, samples.quantiles, samples.per_bin, np.uint32(samples.seed), samples.keys,
                    self.edges, self.band_cap, self.vals, self.ctx, self.pos, self.free, self.top, self.before)

    def _update_numba(self, acts, lengths, ctx_ids) -> None:
        """Nothing: captures happen inside the fused kernel (``FeatureRecorders.update``)."""

    def _update_torch(self, acts, lengths, ctx_ids) -> None:
        """Nothing: captures need the sampler's candidates (``capturer``, from FeatureRecorders.update)."""

    def capturer(self, acts, lengths, ctx_ids, samples: Any):
        """Torch backend, before ``samples`` folds this batch (a torch batch on this device):
        new caps and a sweep from the counts so far, then a function the sampler calls after
        folding the batch with ``rows`` int64 [feat, capacity] (for each of its kept-pool
        entries, the batch row of the token that entered it in this batch, -1 for the others),
        which captures those under their bin's cap (_place); None without a pool."""
        if self.pool == 0:
            return None
        self._refresh_torch(samples)

        def capture(rows: torch.Tensor) -> None:
            ctx, pos = samples.kctx.to(torch.int64), samples.kpos.to(torch.int64)
            q = fine_bins_t(samples.kval)
            prio = token_priority_t(samples.seed, ctx, pos, samples.keys[:, None])
            fresh = (rows >= 0) & (prio < self._cap_of(q))
            feat = torch.arange(self.n_features, device=self.device)[:, None]

            def windows(col: torch.Tensor, at: slice) -> torch.Tensor:  # the windows of columns col of features at
                row = rows[at].gather(1, col).clamp(min=0)
                return _windows_t(acts, lengths, row, pos[at].gather(1, col), feat[at], self.before, self.width)

            self._place(fresh, prio, q, ctx, pos, windows, samples)

        return capture

    def _cap_of(self, q: torch.Tensor) -> torch.Tensor:
        """int64 caps (refresh_feature's cap[f, q]) of fine bins q [feat, m], row f of feature f."""
        edges, caps = self.edges[:, None], self.band_cap[:, None, :]  # [feat, 1, Q, 5], [feat, 1, Q+1]
        band = (edges[..., 0] <= q[..., None]).sum(-1)
        cap = caps.expand(*band.shape, -1).gather(-1, band[..., None])[..., 0]
        for j in range(edges.shape[-2]):  # edges still move: in one's zone, also the cap of the band it would join
            m = edges[..., j, 0]
            cap = torch.where((q >= edges[..., j, 1]) & (q < m), torch.maximum(cap, edges[..., j, 3]), cap)
            cap = torch.where((q >= m) & (q < edges[..., j, 2]), torch.maximum(cap, edges[..., j, 4]), cap)
        return cap

    def _refresh_torch(self, samples: Any) -> None:
        """refresh_feature for every feature at once: band bounds chosen as nearest_boundaries
        chooses them, band caps, then free the entries above their cap."""
        counts = samples.fine_counts  # [feat, N_FINE]
        n_feat, n_fine = counts.shape
        cum = torch.zeros((n_feat, n_fine + 1), dtype=torch.int64, device=counts.device)
        cum[:, 1:] = torch.cumsum(counts, 1, dtype=torch.int64)
        quantiles = torch.as_tensor(samples.quantiles, dtype=torch.float64, device=counts.device)
        target = quantiles[None, :] * cum[:, -1:].double()  # [feat, Q]
        upper = torch.searchsorted(cum.double(), target).clamp(max=n_fine - 1)
        lower = (upper - 1).clamp(min=0)
        cum_upper, cum_lower = cum.gather(1, upper).double(), cum.gather(1, lower).double()
        mids = torch.where(target - cum_lower <= cum_upper - target, lower, upper)
        lo, hi = _edge_zones(cum, mids, quantiles)
        bounds = torch.cat([torch.zeros_like(mids[:, :1]), mids, torch.full_like(mids[:, :1], n_fine)], dim=1)
        n = cum.gather(1, bounds[:, 1:]) - cum.gather(1, bounds[:, :-1])  # [feat, Q+1]
        margin = min(OVERSUBSCRIBE * self.pool / n.shape[1], MAX_MARGIN * samples.per_bin)

        def caps(tokens):  # unclamped, as the numba kernel: a small band's entries rank first
            return (margin * 4294967296.0 / tokens.clamp(min=1).double()).floor().to(torch.int64)

        self.band_cap = caps(n)
        counts64 = counts.to(torch.int64)
        gain_up = torch.where(lo < mids, counts64.gather(1, (mids - 1).clamp(min=0)), 0)
        gain_down = torch.where(hi > mids, counts64.gather(1, mids.clamp(max=n_fine - 1)), 0)
        self.edges = torch.stack([mids, lo, hi, caps(n[:, 1:] + gain_up), caps(n[:, :-1] + gain_down)], dim=-1)
        self._clear(~self._wanted(self.ctx, self.pos, self.vals, samples)[0])

    def _entry_keys(self, ctx, pos, vals, samples: Any):
        """int64 (priority, fine bin) of entries (ctx, pos [feat, m], vals [feat, m, W]), row f
        of feature f, recomputed from their tokens and windows."""
        at = pos.to(torch.int64).clamp(min=0, max=self.before)  # a window starts at max(pos - before, 0)
        return (token_priority_t(samples.seed, ctx, pos, samples.keys[:, None]),
                fine_bins_t(vals.gather(-1, at[..., None])[..., 0]))

    def _wanted(self, ctx, pos, vals, samples: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """bool [feat, m]: which of these entries (each [feat, m], row f of feature f) are in
        use and under their bin's cap; with their priorities and fine bins."""
        prio, q = self._entry_keys(ctx, pos, vals, samples)
        return (ctx >= 0) & (prio < self._cap_of(q)), prio, q

    def _clear(self, drop: torch.Tensor) -> None:
        self.ctx.masked_fill_(drop, -1)
        self.pos.masked_fill_(drop, -1)
        self.vals.masked_fill_(drop[..., None], 0)

    def _place(self, fresh, prio, q, ctx, pos, windows, samples: Any) -> None:
        """Candidates into the pool, vectorised, with no host sync: ``fresh`` bool [feat, m]
        marks them among m columns of priorities, fine bins, ctx ids and positions (int64
        [feat, m] each), and ``windows(col, at)`` gives the windows [n, pool, W] of columns
        col [n, pool] of the features in slice ``at``. Per feature, the pool's worth of its
        entries and candidates most likely to end a sample (smallest priority relative to
        their cap; ties: entries first, then the columns in order) is kept, as the numba
        kernel's eviction does one at a time; the rest is freed."""
        used = self.ctx >= 0
        e_prio, e_q = self._entry_keys(self.ctx, self.pos, self.vals, samples)
        ratio = torch.cat([torch.where(used, self._ratio(e_prio, e_q), torch.inf),
                           torch.where(fresh, self._ratio(prio, q), torch.inf)], 1)
        order = torch.sort(ratio, dim=1, stable=True).indices[:, :self.pool]  # [feat, pool]
        taken = ratio.gather(1, order) < torch.inf
        mine = order < self.pool
        e, col = order.clamp(max=self.pool - 1), (order - self.pool).clamp(min=0)
        chunk = max(1, step_elements(WINDOW_ELEMENTS, self.device) // max(1, self.pool * self.width))
        for f0 in range(0, self.n_features, chunk):  # in place, a chunk of features at a time (bounded memory)
            at = slice(f0, f0 + chunk)
            kept = self.vals[at].gather(1, e[at, :, None].expand(-1, -1, self.width))
            self.vals[at] = torch.where(mine[at, :, None], kept, windows(col[at], at))
        self.vals.masked_fill_(~taken[..., None], 0)
        ctx = torch.where(mine, self.ctx.gather(1, e).to(torch.int64), ctx.gather(1, col))
        pos = torch.where(mine, self.pos.gather(1, e).to(torch.int64), pos.gather(1, col))
        self.ctx = ctx.masked_fill_(~taken, -1).to(self.ctx.dtype)
        self.pos = pos.masked_fill_(~taken, -1).to(self.pos.dtype)

    def _ratio(self, prio, q) -> torch.Tensor:
        """float64 [feat, m]: priorities over the caps of their fine bins, row f of feature f
        (below 1: under the cap)."""
        return prio.double() / self._cap_of(q).clamp(min=1).double()

    def merge(self, other: "SampleWindows") -> None:
        raise RecorderError("a sample-window pool merges with its sampler: merge_with(other, samples)")

    def merge_with(self, other: "SampleWindows", samples: Any) -> None:
        """Fold another pool in, ``samples`` already merged: first free this pool's entries the
        merged sampler no longer needs, then take the other's entries that are under their
        bin's cap, while there is room."""
        self._check_mergeable(other)
        if self.pool == 0:
            return
        self.sweep(samples)
        o = {name: other._numpy(name) for name in self.arrays}
        if self.backend == "torch":
            with torch.no_grad():
                self._merge_torch({k: torch.from_numpy(v).to(self.device) for k, v in o.items()}, samples)
            return
        merge_pool(self.vals, self.ctx, self.pos, self.free, self.top, o["vals"], o["ctx"], o["pos"],
                   np.uint32(samples.seed), samples.keys, self.edges, self.band_cap, self.before)

    def _merge_torch(self, other, samples: Any) -> None:
        """Other's entries into free entries: those under their bin's cap, not already here."""
        keep, prio, q = self._wanted(other["ctx"], other["pos"], other["vals"], samples)
        step = max(1, 2**24 // max(1, self.pool * other["ctx"].shape[1]))
        for f0 in range(0, self.n_features, step):  # not already here (bounded memory)
            mine, theirs = slice(f0, f0 + step), (slice(f0, f0 + step), slice(None), None)
            same = ((self.ctx[mine][:, None, :] == other["ctx"][theirs])
                    & (self.pos[mine][:, None, :] == other["pos"][theirs]))
            keep[mine] &= ~same.any(2)
        vals = other["vals"]
        self._place(keep, prio, q, other["ctx"].to(torch.int64), other["pos"].to(torch.int64),
                    lambda col, at: vals[at].gather(1, col[..., None].expand(-1, -1, self.width)), samples)


def _windows_t(acts, lengths, b, t, f, before: int, width: int) -> torch.Tensor:
    """float32 [..., W]: feature f's values around position t of batch row b (int64, broadcast
    alike), as topk_kernels.window_into cuts them (from max(t - before, 0), zero-padded)."""
    start = (t - before).clamp(min=0)
    cols = start[..., None] + torch.arange(width, device=acts.device)
    inside = cols < torch.minimum(t + (width - before), lengths[b])[..., None]
    got = acts[b[..., None], cols.clamp(max=acts.shape[1] - 1), f[..., None]]
    return got.masked_fill(~inside, 0)


def _edge_zones(cum: torch.Tensor, mids: torch.Tensor, quantiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sample_window_kernels.edge_zones for every feature at once: each edge's zone [lo, hi)
    of fine bins (cum: int64 [feat, N_FINE + 1] tokens below each fine bin; mids [feat, Q])."""
    n_fine = cum.shape[1] - 1
    n = cum[:, -1:]
    p = quantiles[None, :]
    padded = torch.cat([quantiles.new_zeros(1), quantiles, quantiles.new_ones(1)])
    share = torch.minimum(padded[1:-1] - padded[:-2], padded[2:] - padded[1:-1])[None, :]
    nd = n.double()
    w = torch.ceil(ZONE_SIGMAS * torch.sqrt(nd * p * (1.0 - p)) + ZONE_SHARE * nd * share).to(torch.int64).clamp(min=1)
    target = p * nd
    half = (cum[:, :-1] + cum[:, 1:]).double() * 0.5  # [feat, N_FINE]: half[i] between boundaries i and i + 1
    # down: boundary b - 1 could be nearest while half[b - 1] >= target - w (half ascends)
    first = torch.searchsorted(half, target - w.double())  # first i with half[i] >= target - w
    lo = torch.minimum(first, mids)
    # up: boundary b + 1 could be nearest while half[b] <= target + w
    last = torch.searchsorted(half, target + w.double(), right=True)  # first i with half[i] > target + w
    hi = torch.maximum(last, mids).clamp(max=n_fine)
    return lo, hi
