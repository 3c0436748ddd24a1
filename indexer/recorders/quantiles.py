"""QuantileSampler: per feature, exact counts in fine value bins and a small pool of kept
tokens, from which the requested quantile bins (bands) and their uniform samples are cut at
the end.

Design (issues 8 and 25): the edges of a feature's quantile bins must be the requested
quantiles of *all* its tokens, known only when the stream ends, while memory stays flat and
shards merge exactly. So the stream keeps, per feature, the exact token count of every bin
of a fixed global fine grid (``finebins``: 64 bins per octave, 2,561 bins) and the tokens
whose hash priority is below the keep rule's threshold for their fine bin (``keep_rule``):
a threshold that only falls as tokens arrive, so the kept set is a pure function of the
tokens seen and resume, shards, merge and backends agree bit for bit. At the end each
requested quantile q snaps to the fine-bin boundary whose share of tokens below is nearest
to q; a band is a run of fine bins, its count the sum of theirs, and its sample the
``per_bin`` lowest priorities among its kept tokens under the band's smallest threshold:
exactly the bottom-k of the band (a uniform sample of it) whenever that many are there.

Memory per feature: N_FINE x 4 bytes of counts and ``pool_capacity(per_bin)`` x 10 bytes of
kept tokens (10.2 + 7.2 KB at per_bin=5: value float32, ctx_id int32, pos int16, int32 for
contexts over common.SHORT_CONTEXT tokens; a kept token's priority is recomputed from its
coordinates, not stored), independent of the corpus length. A band's share
is exact; its distance from the nominal share is at most the share of the fine bin its edge
falls in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from indexer.recorders.common import (
    SHORT_CONTEXT, Recorder, RecorderError, check_batch, feature_chunk, host_tokens, numpy_batch, position_dtype,
    state_max_len, torch_batch,
)
from indexer.recorders.finebins import N_FINE, ZERO, choose_boundaries, fine_bins_np, lower_edges
from indexer.recorders.histogram import hist_from_fine
from indexer.recorders.hashing import EMPTY_PRIORITY, feature_keys, seed_of
from indexer.recorders.keep_rule import MARGIN, band_terms, fine_thresholds_np, pool_capacity
from indexer.recorders.kept_kernels import band_samples, canonical_counts, canonical_fill
from indexer.recorders.quantile_kernels import quantile_update
from indexer.recorders.quantiles_torch import update

STATUS = ("ok", "near_constant", "dead")


def check_quantiles(quantiles) -> np.ndarray:
    q = np.asarray(quantiles, np.float64).ravel()
    if q.size == 0 or not np.all((q > 0) & (q < 1)) or np.any(np.diff(q) <= 0):
        raise RecorderError(f"quantiles={q.tolist()} but expected increasing values strictly between 0 and 1")
    return q


MAX_TOKENS = 2**31 - 1  # fine counts are int32
CHUNK = 1024  # features per numpy step at the end (bounds the [feat, N_FINE] temporaries)


class QuantileSampler(Recorder):
    """Fine-bin counts and a pool of kept tokens per feature.

    A token's priority is a pure hash of (salt, feature, ctx_id, pos); a feature keeps the
    tokens whose priority is below its fine bin's threshold (keep_rule.py). `bands()` cuts
    the requested quantile bins and their samples from them.

    Attributes:
        fine_counts: int32 [feat, N_FINE].
        kval float32, kctx int32, kpos int16 (int32 past common.SHORT_CONTEXT), each [feat, capacity]:
            the kept tokens, unordered, the first kn[f] of row f in use.
        kn: int32 [feat] (int64 on torch).  squeeze: [feat], how often a feature's
            thresholds were halved because its pool overflowed (0 but for freak inputs).
    """

    kind = "quantiles"
    arrays = ("fine_counts", "kval", "kctx", "kpos", "kn", "squeeze")

    def __init__(self, n_features: int, quantiles=(0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999),
                 per_bin: int = 5, salt: int = 0, backend: str | None = None, device="cpu",
                 max_len: int = SHORT_CONTEXT):
        super().__init__(backend, device)
        if per_bin < 1:
            raise RecorderError(f"per_bin={per_bin} but expected per_bin >= 1")
        self.n_features, self.per_bin, self.salt, self.max_len = int(n_features), int(per_bin), int(salt), int(max_len)
        self.quantiles = check_quantiles(quantiles)
        self.seed = seed_of(self.salt)
        self.capacity = pool_capacity(self.per_bin)
        terms = band_terms(self.quantiles)
        self.terms = np.zeros((4, len(terms[0])), np.float64)
        self.terms[:3] = terms
        self.terms[3, 0] = MARGIN
        self.keys = self._array(feature_keys(self.n_features))
        wide = self.backend == "torch"  # torch has no uint32 arithmetic
        if wide:
            self.keys = self.keys.to(torch.int64)
        shape = (self.n_features, self.capacity)
        self.fine_counts = self._array(np.zeros((self.n_features, N_FINE), np.int32))
        self.kval = self._array(np.zeros(shape, np.float32))
        self.kctx = self._array(np.zeros(shape, np.int32))  # ctx ids < 2**31 (MAX_CONTEXTS)
        self.kpos = self._array(np.zeros(shape, position_dtype(self.max_len)))
        self.kn = self._array(np.zeros(self.n_features, np.int64 if wide else np.int32))
        self.squeeze = self._array(np.zeros(self.n_features, np.int64 if wide else np.int32))
        self.n_seen = 0  # tokens per feature so far (the fine counts of any feature sum to it)

    def config(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "quantiles": self.quantiles,
                "per_bin": self.per_bin, "salt": self.salt, "max_len": self.max_len}

    @classmethod
    def _config_from_state(cls, state):
        if "quantiles" not in state or "kept_feature" not in state:
            raise RecorderError("quantile state without kept tokens: written by an older neuroscope; re-index")
        return {"n_features": int(state["n_features"]), "quantiles": np.asarray(state["quantiles"]),
                "per_bin": int(state["per_bin"]), "salt": int(state["salt"]), "max_len": state_max_len(state)}

    def _read(self, name: str) -> np.ndarray:
        """A state array as numpy, without a copy where it already is one: read only!"""
        a = getattr(self, name)
        return a if isinstance(a, np.ndarray) else a.detach().cpu().numpy()

    # --- the kept set, canonical: what the rule keeps, sorted -------------------------------

    def kept(self) -> dict[str, np.ndarray]:
        """The kept tokens the rule keeps for the counts so far, sorted by (feature,
        priority, ctx_id, pos): feature int64, prio int64, value float32, ctx_id int64,
        pos int64 (flat). The same for every order, shard and backend."""
        args = self._kernel_args()
        keep = np.zeros(args[-2].shape, bool)
        n = canonical_counts(*args, N_FINE, keep)
        offsets = np.zeros(len(n) + 1, np.int64)
        np.cumsum(n, out=offsets[1:])
        total = int(offsets[-1])
        out = {"feature": np.empty(total, np.int64), "prio": np.empty(total, np.int64),
               "value": np.empty(total, np.float32), "ctx_id": np.empty(total, np.int64), "pos": np.empty(total, np.int64)}
        canonical_fill(*args[4:], keep, offsets, *out.values())
        return out

    def _kernel_args(self) -> tuple:
        """counts, terms, per_bin, squeeze, seed, keys, kval, kctx, kpos, kn: numpy, for kept_kernels."""
        return (self._read("fine_counts"), self.terms, self.per_bin, self._read("squeeze").astype(np.int64),
                np.uint32(self.seed), feature_keys(self.n_features), self._read("kval"), self._read("kctx"),
                self._read("kpos"), self._read("kn").astype(np.int64))

    def _set_kept(self, kept: dict[str, np.ndarray], squeeze: np.ndarray) -> None:
        """Fill the pool from a kept set sorted by feature."""
        n = np.bincount(kept["feature"], minlength=self.n_features)
        kept = {k: v for k, v in kept.items() if k != "prio"}
        if n.size and n.max() > self.capacity:
            raise RecorderError(f"{int(n.max())} kept tokens for a feature but the pool holds {self.capacity}")
        rank = np.arange(len(kept["feature"])) - np.searchsorted(kept["feature"], kept["feature"])
        arrays = {name: self._numpy(name) for name in ("kval", "kctx", "kpos")}
        for name, col in (("kval", "value"), ("kctx", "ctx_id"), ("kpos", "pos")):
            arrays[name][kept["feature"], rank] = kept[col]
        arrays["kn"] = n.astype(self._numpy("kn").dtype)
        arrays["squeeze"] = np.asarray(squeeze).astype(self._numpy("squeeze").dtype)
        for name, a in arrays.items():
            setattr(self, name, self._array(a))

    # --- state: sparse counts and the canonical kept set ---------------------------------

    def state(self, copy: bool = True) -> dict[str, np.ndarray]:
        """Config, the non-zero fine counts and the kept tokens, as flat indices and values
        (always fresh arrays, whatever ``copy``)."""
        out = {"kind": np.array(self.kind), **{k: np.asarray(v) for k, v in self.config().items()}}
        counts = self._read("fine_counts").ravel()
        nz = np.flatnonzero(counts)
        out["fine_index"], out["fine_value"] = _narrow(nz), counts[nz].astype(np.uint32)
        kept = self.kept()
        out["kept_feature"] = kept["feature"].astype(np.uint32)
        out["kept_value"] = kept["value"]
        out["kept_ctx"] = kept["ctx_id"]
        out["kept_pos"] = kept["pos"].astype(np.int32)
        out["squeeze"] = self._read("squeeze").astype(np.int32)
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], backend: str | None = None, device="cpu"):
        kind = str(np.asarray(state.get("kind", "")))
        if kind != cls.kind:
            raise RecorderError(f"state kind={kind!r} but expected {cls.kind!r}")
        obj = cls(**cls._config_from_state(state), backend=backend, device=device)
        counts = obj._numpy("fine_counts")
        try:
            counts.ravel()[np.asarray(state["fine_index"], np.int64)] = state["fine_value"]
            kept = {"feature": np.asarray(state["kept_feature"], np.int64), "value": np.asarray(state["kept_value"]),
                    "ctx_id": np.asarray(state["kept_ctx"], np.int64), "pos": np.asarray(state["kept_pos"], np.int64)}
            squeeze = np.asarray(state["squeeze"])
            if squeeze.shape != (obj.n_features,) or (kept["feature"] >= obj.n_features).any():
                raise IndexError("features out of range")
        except (KeyError, IndexError) as err:
            raise RecorderError(f"quantile state is incomplete or of another shape: {err}") from None
        obj.fine_counts = obj._array(counts)
        obj.n_seen = int(counts[0].sum()) if obj.n_features else 0
        obj._set_kept(kept, squeeze)
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
        bounds = np.empty((n_feat, len(self.quantiles)), np.int64)
        band_counts = np.empty((n_feat, n_bands), np.int64)
        for f0 in range(0, n_feat, CHUNK):
            c = counts[f0:f0 + CHUNK].astype(np.int64)
            bounds[f0:f0 + CHUNK] = choose_boundaries(c, self.quantiles)
            cum = np.zeros((len(c), N_FINE + 1), np.int64)
            np.cumsum(c, axis=1, out=cum[:, 1:])
            full = _full_bounds(bounds[f0:f0 + CHUNK])
            rows = np.arange(len(c))[:, None]
            band_counts[f0:f0 + CHUNK] = cum[rows, full[:, 1:]] - cum[rows, full[:, :-1]]
        total = counts.sum(axis=1, dtype=np.int64)  # tokens each feature saw (NaN ones not)
        shares = band_counts / np.maximum(total, 1)[:, None]
        status = np.where((band_counts == 0).any(axis=1), "near_constant", "ok")
        status = np.where((total == 0) | (counts[:, ZERO] == total), "dead", status).astype(object)
        out = {"boundaries": bounds, "edges": lower_edges()[bounds], "counts": band_counts, "shares": shares,
               "status": status}
        out.update(self._band_samples(bounds, n_bands))
        return out

    def _band_samples(self, bounds: np.ndarray, n_bands: int) -> dict[str, np.ndarray]:
        """Per band, the per_bin smallest (priority, ctx, pos) among its kept tokens under the
        band's smallest fine threshold: all of them are kept, so this is the band's bottom-k."""
        shape = (self.n_features, n_bands, self.per_bin)
        out = {"prio": np.full(shape, EMPTY_PRIORITY, np.int64), "value": np.full(shape, np.nan, np.float32),
               "ctx_id": np.full(shape, -1, np.int64), "pos": np.full(shape, -1, np.int64)}
        band_samples(*self._kernel_args(), N_FINE, np.ascontiguousarray(bounds, np.int64), *out.values())
        out["pos"] = out["pos"].astype(np.int32)
        return out

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

    def _count_tokens(self, n: int) -> None:
        if self.n_seen + n > MAX_TOKENS:
            raise RecorderError(f"{self.n_seen + n} tokens but one index counts at most {MAX_TOKENS} per feature: "
                                "index in shards of fewer tokens")
        self.n_seen += n

    def update(self, acts, lengths, ctx_ids, offered=None, skip_zeros: bool = False,
               n_tokens: int | None = None) -> None:
        """Record one batch (common.Recorder.update); torch backend: ``offered`` as in _update_torch;
        ``skip_zeros``: zeros are not counted or kept (a sparse site, bundle.FeatureRecorders.update);
        ``n_tokens``: the batch's recorded tokens, if the caller counted them on the host."""
        check_batch(acts, lengths, ctx_ids, self.n_features, self.max_len)
        self._count_tokens(host_tokens(torch.as_tensor(lengths).cpu()) if n_tokens is None else n_tokens)
        if self.backend == "numba":
            self._update_numba(*numpy_batch(acts, lengths, ctx_ids), skip_zeros=skip_zeros)
            return
        with torch.no_grad():
            self._update_torch(*torch_batch(acts, lengths, ctx_ids, self.device), offered=offered, skip_zeros=skip_zeros)

    def _update_numba(self, acts, lengths, ctx_ids, skip_zeros: bool = False) -> None:
        quantile_update(acts, lengths, ctx_ids, feature_chunk(self.n_features), np.uint32(self.seed),
                        self.keys, self.fine_counts, self.terms, self.per_bin,
                        self.kval, self.kctx, self.kpos, self.kn, self.squeeze, skip_zeros)

    def _update_torch(self, acts, lengths, ctx_ids, offered=None, skip_zeros: bool = False) -> None:
        """quantiles_torch.update: the batch folded densely on the device, no host sync;
        ``offered(rows)`` gets the sample-window pool's candidates (see there)."""
        update(self, acts, lengths, ctx_ids, offered, skip_zeros)

    def merge(self, other: "QuantileSampler") -> None:
        """Fold another sampler in: counts add, kept sets unite under the merged thresholds."""
        self._check_mergeable(other)
        self._count_tokens(other.n_seen)
        counts = self._read("fine_counts").astype(np.int64) + other._read("fine_counts")
        mine, theirs = self.kept(), other.kept()
        order = np.argsort(np.concatenate([mine["feature"], theirs["feature"]]), kind="stable")
        kept = {k: np.concatenate([mine[k], theirs[k]])[order] for k in mine}  # shards: disjoint tokens
        squeeze = np.maximum(self._read("squeeze"), other._read("squeeze")).astype(np.int64)
        while True:
            kept = _canonical(kept, counts, self.quantiles, self.per_bin, squeeze)
            over = 4 * np.bincount(kept["feature"], minlength=self.n_features) > 3 * self.capacity
            if not over.any():
                break
            squeeze += over
        self.fine_counts = self._array(counts.astype(np.int32))
        self._set_kept(kept, squeeze)


def _canonical(cols: dict[str, np.ndarray], counts: np.ndarray, quantiles: np.ndarray, per_bin: int,
               squeeze: np.ndarray) -> dict[str, np.ndarray]:
    """The entries (sorted by feature) the rule keeps (priority under the fine threshold of
    their feature's counts), sorted by (feature, priority, ctx_id, pos)."""
    f = cols["feature"]
    keep = np.zeros(len(f), bool)
    q = fine_bins_np(cols["value"])
    for f0 in range(0, counts.shape[0], CHUNK):
        t = fine_thresholds_np(counts[f0:f0 + CHUNK], quantiles, per_bin, squeeze[f0:f0 + CHUNK])
        at = slice(*np.searchsorted(f, [f0, f0 + CHUNK]))
        keep[at] = cols["prio"][at] < t[f[at] - f0, q[at]]
    order = np.lexsort((cols["pos"][keep], cols["ctx_id"][keep], cols["prio"][keep], f[keep]))
    return {k: v[keep][order] for k, v in cols.items()}


def _full_bounds(bounds: np.ndarray) -> np.ndarray:
    """[feat, Q+2]: 0, the boundaries, N_FINE."""
    n = len(bounds)
    return np.concatenate([np.zeros((n, 1), np.int64), bounds, np.full((n, 1), N_FINE)], axis=1)


def _narrow(a: np.ndarray) -> np.ndarray:
    """Non-negative int64 as uint32 when every value fits (smaller checkpoints)."""
    return a.astype(np.uint32) if a.size == 0 or a.max() <= 0xFFFFFFFF else a
