"""QuantileSampler: per feature, exact counts and uniform samples in fine value bins, from
which the requested quantile bins (bands) are cut at the end.

Design (issue 8): the edges of a feature's quantile bins must be the requested quantiles of
*all* its tokens, known only when the stream ends, while memory stays flat and shards merge
exactly. So the stream keeps, per feature, the exact token count of every bin of a fixed
global fine grid (``finebins``: 64 bins per octave, 2,561 bins) and, per fine bin, the
``per_bin`` tokens with the smallest hash priority. Both depend only on the multiset of
tokens seen, so resume, shards and merge are exact. At the end each requested quantile q
snaps to the fine-bin boundary whose share of tokens below is nearest to q; a band is a run
of fine bins, its count the sum of theirs, and its sample the ``per_bin`` lowest priorities
among its fine bins' samples: exactly the bottom-k of the band, a uniform sample of it.

Memory per feature: N_FINE * (12 + per_bin * 24) bytes (338 KB at per_bin=5; on disk only
the filled slots are stored), independent of
the corpus length. A band's share is exact; its distance from the nominal share is at most
the share of the fine bin its edge falls in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from indexer.recorders.common import (
    Recorder, RecorderError, check_batch, feature_chunk, torch_batch, valid_tokens,
)
from indexer.recorders.finebins import N_FINE, ZERO, choose_boundaries, fine_bins_t, lower_edges
from indexer.recorders.histogram import hist_from_fine
from indexer.recorders.hashing import EMPTY_PRIORITY, feature_keys, priority_t, seed_of, token_hash_t
from indexer.recorders.quantile_kernels import band_samples, quantile_merge, quantile_update, thresholds

ELEMENTS_PER_STEP = 1 << 22  # torch backend: tokens x features per step, bounds the temporaries
STATUS = ("ok", "near_constant", "dead")


def check_quantiles(quantiles) -> np.ndarray:
    q = np.asarray(quantiles, np.float64).ravel()
    if q.size == 0 or not np.all((q > 0) & (q < 1)) or np.any(np.diff(q) <= 0):
        raise RecorderError(f"quantiles={q.tolist()} but expected increasing values strictly between 0 and 1")
    return q


def bytes_per_feature(per_bin: int) -> int:
    """State bytes of one feature: fine counts, thresholds and the per-fine-bin sample slots."""
    return N_FINE * (8 + 4 + per_bin * (8 + 4 + 8 + 4))


class QuantileSampler(Recorder):
    """Fine-bin counts and bottom-k-by-priority samples per (feature, fine bin).

    A token's priority is a pure hash of (salt, feature, ctx_id, pos); each fine bin keeps the
    `per_bin` tokens with the smallest priority (ties by ctx_id, pos). `bands()` cuts the
    requested quantile bins from them.

    Attributes:
        fine_counts: int64 [feat, N_FINE].
        prio: int64, vals: float32, ctxs: int64, poss: int32, each [feat, N_FINE, per_bin],
            sorted by priority; empty slots have prio 2**32, ctx_id -1, pos -1, value nan.
    """

    kind = "quantiles"
    arrays = ("fine_counts", "prio", "vals", "ctxs", "poss")

    def __init__(self, n_features: int, quantiles=(0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999),
                 per_bin: int = 5, salt: int = 0, backend: str | None = None, device="cpu"):
        super().__init__(backend, device)
        if per_bin < 1:
            raise RecorderError(f"per_bin={per_bin} but expected per_bin >= 1")
        self.n_features, self.per_bin, self.salt = int(n_features), int(per_bin), int(salt)
        self.quantiles = check_quantiles(quantiles)
        self.seed = seed_of(self.salt)
        self.keys = self._array(feature_keys(self.n_features))
        if self.backend == "torch":
            self.keys = self.keys.to(torch.int64)
        shape = (self.n_features, N_FINE, self.per_bin)
        self.fine_counts = self._array(np.zeros(shape[:2], np.int64))
        self.prio = self._array(np.full(shape, EMPTY_PRIORITY, np.int64))
        self.vals = self._array(np.full(shape, np.nan, np.float32))
        self.ctxs = self._array(np.full(shape, -1, np.int64))
        self.poss = self._array(np.full(shape, -1, np.int32))
        self.thr = None  # numba backend: each bin's admission threshold, derived from prio
        self._sync_thresholds()

    def _sync_thresholds(self) -> None:
        """Recompute the numba kernels' cached thresholds after prio changed outside them."""
        if self.backend == "numba":
            if self.thr is None:
                self.thr = np.empty(self.prio.shape[:2], np.uint32)
            thresholds(self.prio, self.thr)

    def config(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "quantiles": self.quantiles,
                "per_bin": self.per_bin, "salt": self.salt}

    @classmethod
    def _config_from_state(cls, state):
        if "quantiles" not in state:
            raise RecorderError("quantile state without 'quantiles': written by an older neuroscope; re-index")
        return {"n_features": int(state["n_features"]), "quantiles": np.asarray(state["quantiles"]),
                "per_bin": int(state["per_bin"]), "salt": int(state["salt"])}

    def _read(self, name: str) -> np.ndarray:
        """A state array as numpy, without a copy where it already is one: read only!"""
        a = getattr(self, name)
        return a if isinstance(a, np.ndarray) else a.detach().cpu().numpy()

    # --- state: sparse, since most fine bins of a feature stay empty ------------------------

    def state(self) -> dict[str, np.ndarray]:
        """Config, the non-zero fine counts and the filled slots, as flat indices and values."""
        out = {"kind": np.array(self.kind), **{k: np.asarray(v) for k, v in self.config().items()}}
        counts = self._read("fine_counts").ravel()
        nz = np.flatnonzero(counts)
        out["fine_index"], out["fine_value"] = _narrow(nz), _narrow(counts[nz])
        filled = np.flatnonzero(self._read("ctxs").ravel() >= 0)
        out["slot_index"] = _narrow(filled)
        for name in ("prio", "vals", "ctxs", "poss"):
            out[f"slot_{name}"] = self._read(name).ravel()[filled]
        out["slot_prio"] = out["slot_prio"].astype(np.uint32)  # filled slots: priority < 2**32
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], backend: str | None = None, device="cpu"):
        kind = str(np.asarray(state.get("kind", "")))
        if kind != cls.kind:
            raise RecorderError(f"state kind={kind!r} but expected {cls.kind!r}")
        obj = cls(**cls._config_from_state(state), backend=backend, device=device)
        arrays = {name: obj._numpy(name) for name in obj.arrays}
        try:
            arrays["fine_counts"].ravel()[np.asarray(state["fine_index"])] = state["fine_value"]
            at = np.asarray(state["slot_index"])
            for name in ("prio", "vals", "ctxs", "poss"):
                arrays[name].ravel()[at] = state[f"slot_{name}"]
        except (KeyError, IndexError) as err:
            raise RecorderError(f"quantile state is incomplete or of another shape: {err}") from None
        for name, a in arrays.items():
            setattr(obj, name, obj._array(a))
        obj._sync_thresholds()
        return obj

    # --- results -----------------------------------------------------------------------

    def bands(self) -> dict[str, np.ndarray]:
        """The requested quantile bins cut from the fine bins (B = Q + 1 bands):

        boundaries int64 [feat, Q] (fine-bin index of each edge), edges float32 [feat, Q]
        (x >= edges[f, i] exactly when x lies in band > i), counts int64 [feat, B],
        shares float64 [feat, B], status str [feat] ('ok'; 'near_constant': some band is
        empty because the mass sits in too few fine bins; 'dead': every token within
        2**-10 of zero, or none), and the samples prio, value, ctx_id, pos [feat, B, per_bin]
        sorted by priority.
        """
        counts = self._read("fine_counts")
        n_feat, n_bands = self.n_features, len(self.quantiles) + 1
        bounds = choose_boundaries(counts, self.quantiles)  # [feat, Q]
        cum = np.zeros((n_feat, N_FINE + 1), np.int64)
        np.cumsum(counts, axis=1, out=cum[:, 1:])
        rows = np.arange(n_feat)[:, None]
        full = np.concatenate([np.zeros((n_feat, 1), np.int64), bounds, np.full((n_feat, 1), N_FINE)], axis=1)
        band_counts = cum[rows, full[:, 1:]] - cum[rows, full[:, :-1]]
        total = cum[:, -1]
        shares = band_counts / np.maximum(total, 1)[:, None]
        status = np.where((band_counts == 0).any(axis=1), "near_constant", "ok")
        status = np.where((total == 0) | (counts[:, ZERO] == total), "dead", status).astype(object)
        out = {"boundaries": bounds, "edges": lower_edges()[bounds], "counts": band_counts, "shares": shares,
               "status": status}
        out.update(self._band_samples(bounds, n_bands))
        return out

    def _band_samples(self, bounds: np.ndarray, n_bands: int) -> dict[str, np.ndarray]:
        shape = (self.n_features, 1, n_bands, self.per_bin)  # the kernel inserts into out[f][0, band]
        out = {"prio": np.full(shape, EMPTY_PRIORITY, np.int64), "value": np.full(shape, np.nan, np.float32),
               "ctx_id": np.full(shape, -1, np.int64), "pos": np.full(shape, -1, np.int32)}
        band_samples(*(self._read(name) for name in ("prio", "vals", "ctxs", "poss")),
                     np.ascontiguousarray(bounds, np.int64), out["prio"], out["value"], out["ctx_id"], out["pos"])
        return {k: v[:, 0] for k, v in out.items()}

    def histogram(self) -> np.ndarray:
        """int64 [feat, histogram.N_BINS]: every token in the fixed symlog bins of
        `histogram.hist_edges()`, summed from the fine counts (exact: the grids nest)."""
        return hist_from_fine(self._read("fine_counts"))

    @property
    def edges(self) -> np.ndarray:
        """float32 [feat, Q]: the band edges chosen from the tokens seen so far."""
        return self.bands()["edges"]

    def counts(self) -> np.ndarray:
        """int64 [feat, Q+1] exact token counts per band."""
        return self.bands()["counts"]

    def samples(self) -> dict[str, np.ndarray]:
        """prio, value, ctx_id, pos, each [feat, Q+1, per_bin], sorted by priority."""
        b = self.bands()
        return {k: b[k] for k in ("prio", "value", "ctx_id", "pos")}

    # --- updates -----------------------------------------------------------------------

    def _update_numba(self, acts, lengths, ctx_ids) -> None:
        quantile_update(acts, lengths, ctx_ids, feature_chunk(self.n_features), np.uint32(self.seed),
                        self.keys, self.fine_counts, self.thr, self.prio, self.vals, self.ctxs, self.poss)

    def _merge_numba(self, other: dict[str, np.ndarray]) -> None:
        self.fine_counts += other["fine_counts"]
        quantile_merge(self.prio, self.vals, self.ctxs, self.poss,
                       other["prio"], other["vals"], other["ctxs"], other["poss"])
        self._sync_thresholds()

    def update(self, acts, lengths, ctx_ids, offered=None) -> None:
        """Record one batch (common.Recorder.update); torch backend: ``offered`` as in _update_torch."""
        if offered is None or self.backend == "numba":
            return super().update(acts, lengths, ctx_ids)
        check_batch(acts, lengths, ctx_ids, self.n_features)
        with torch.no_grad():
            self._update_torch(*torch_batch(acts, lengths, ctx_ids, self.device), offered=offered)

    def _update_torch(self, acts, lengths, ctx_ids, offered=None) -> None:
        """Fold the batch, a step of tokens at a time; after each step, ``offered(b, t, f)`` (if
        given) gets the batch row, position and feature of the tokens offered to a bin's slots
        in it (the sample-window pool's candidates)."""
        b, t = valid_tokens(lengths, acts.shape[1]).nonzero(as_tuple=True)  # [tokens]
        n_feat = self.n_features
        feat = torch.arange(n_feat, device=acts.device)
        step = max(1, ELEMENTS_PER_STEP // max(1, n_feat))
        for r in range(0, b.numel(), step):
            x = acts[b[r:r + step], t[r:r + step]]  # [tokens, feat]
            ctx, pos = ctx_ids[b[r:r + step]], t[r:r + step]
            group = feat * N_FINE + fine_bins_t(x)  # [tokens, feat]
            self.fine_counts += torch.bincount(group.flatten(), minlength=self.fine_counts.numel()
                                               ).view_as(self.fine_counts)
            prio = priority_t(token_hash_t(self.seed, ctx, pos), self.keys)  # [tokens, feat]
            threshold = self.prio.view(-1, self.per_bin)[:, -1]
            row, f = (prio <= threshold[group]).nonzero(as_tuple=True)  # candidates only
            self._keep_best(group[row, f], prio[row, f], x[row, f], ctx[row], pos[row])
            if offered is not None:
                offered(b[r:r + step][row], pos[row], f)

    def _merge_torch(self, other: dict[str, torch.Tensor]) -> None:
        self.fine_counts += other["fine_counts"]
        group = torch.arange(self.fine_counts.numel(), device=self.device).repeat_interleave(self.per_bin)
        keep = other["ctxs"].flatten() >= 0
        self._keep_best(group[keep], *(other[k].flatten()[keep] for k in ("prio", "vals", "ctxs", "poss")))

    def _keep_best(self, group, prio, vals, ctxs, poss) -> None:
        """Replace the slots of the touched groups by the bottom per_bin of slots + candidates."""
        if group.numel() == 0:
            return
        k = self.per_bin
        touched = torch.unique(group)  # sorted
        old_group = touched.repeat_interleave(k)
        old_flat = (touched[:, None] * k + torch.arange(k, device=self.device)).flatten()
        flats = {name: getattr(self, name).view(-1) for name in ("prio", "vals", "ctxs", "poss")}
        old = flats["ctxs"][old_flat] >= 0
        cols = [torch.cat([a, b]) for a, b in zip(
            (old_group[old], *(flats[name][old_flat][old] for name in ("prio", "vals", "ctxs", "poss"))),
            (group, prio, vals, ctxs, poss.to(torch.int32)))]
        g, p, v, c, s = _sorted_unique(*cols)
        start = torch.searchsorted(g, g)
        rank = torch.arange(g.numel(), device=self.device) - start
        sel = rank < k
        for name, empty in (("prio", EMPTY_PRIORITY), ("vals", float("nan")), ("ctxs", -1), ("poss", -1)):
            flats[name][old_flat] = empty
        flat = g[sel] * k + rank[sel]
        for name, col in (("prio", p), ("vals", v), ("ctxs", c), ("poss", s)):
            flats[name][flat] = col[sel]


def _narrow(a: np.ndarray) -> np.ndarray:
    """Non-negative int64 as uint32 when every value fits (smaller checkpoints)."""
    return a.astype(np.uint32) if a.size == 0 or a.max() <= 0xFFFFFFFF else a


def _sorted_unique(group, prio, vals, ctxs, poss):
    """Sort by (group, prio, ctx, pos) and drop repeated tokens."""
    order = torch.sort(poss, stable=True).indices
    for key in (ctxs, prio, group):
        order = order[torch.sort(key[order], stable=True).indices]
    g, p, v, c, s = (a[order] for a in (group, prio, vals, ctxs, poss))
    new = torch.ones_like(g, dtype=torch.bool)
    new[1:] = (g[1:] != g[:-1]) | (p[1:] != p[:-1]) | (c[1:] != c[:-1]) | (s[1:] != s[:-1])
    return tuple(a[new] for a in (g, p, v, c, s))
