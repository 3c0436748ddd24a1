"""QuantileSampler's torch backend (an accelerator's), the twin of quantile_kernels.py: the
same kept set, bit for bit, computed densely so that a GPU never waits for the host.

Each step folds a slice of the batch's positions, every position with those not recorded
(BOS, padding) masked, so steps go by shape, not by data. The pool's entries [feat,
capacity] and the step's tokens [tokens, feat] are filtered together by the thresholds of
the counts so far; instead of halving a full pool's thresholds until it fits (a loop that
reads a flag from the device per pass), each token gets the most halvings it stays under
(``halvings_under``), and a per-feature histogram of those gives the least squeeze that
fits. Survivors are written by a scatter to slots from a cumsum: no ``nonzero``, boolean
selection or ``.item()`` anywhere (tests/unit/test_torch_syncs.py counts them).
"""

from __future__ import annotations

from typing import Any

import torch

from indexer.recorders.common import step_elements, valid_tokens
from indexer.recorders.finebins import N_FINE, fine_bins_t
from indexer.recorders.hashing import priority_t, token_hash_t, token_priority_t
from indexer.recorders.keep_rule import group_thresholds_t, token_thresholds_t

ELEMENTS_PER_STEP = 1 << 22  # tokens x features per step (on a CPU; common.step_elements), bounds the temporaries
HALVINGS_MAX = 33  # thresholds are at most keep_rule.KEEP_ALL = 2**32: no priority stays under 33 halvings


def update(self: Any, acts, lengths, ctx_ids, offered=None, skip_zeros: bool = False) -> None:
    """QuantileSampler's torch update (``self``: the sampler; a torch batch on its device).
    Fold the batch a step of positions at a time: every position, those not recorded
    (BOS, padding) masked, so steps go by shape, not by data, and a GPU never waits for
    a count (no host sync). After the last step ``offered(rows)`` (if given) gets int64
    [feat, capacity]: for each kept-pool entry, the batch row of the token that entered
    it in this batch, -1 for the others (the sample-window pool's candidates)."""
    n_batch, n_pos, n_feat = acts.shape
    flat = acts.reshape(n_batch * n_pos, n_feat)
    recorded = valid_tokens(lengths, n_pos).reshape(-1, 1)
    feat = torch.arange(n_feat, device=acts.device)
    rows = torch.full((n_feat, self.capacity), -1, dtype=torch.int64, device=acts.device)
    step = max(1, step_elements(ELEMENTS_PER_STEP, acts.device) // max(1, n_feat))
    for r in range(0, flat.shape[0], step):
        x = flat[r:r + step]  # [tokens, feat]
        at = torch.arange(r, r + x.shape[0], device=acts.device)
        row, pos = at // n_pos, at % n_pos
        q = fine_bins_t(x)
        seen = ~torch.isnan(x) & recorded[r:r + step]  # NaN: a token the feature did not see (common.py)
        if skip_zeros:
            seen &= x != 0
        self.fine_counts.view(-1).index_add_(0, (feat * N_FINE + q).view(-1),
                                             seen.view(-1).to(self.fine_counts.dtype))
        group = group_thresholds_t(self.fine_counts, self.quantiles, self.per_bin)  # counts after the step: valid
        ctx = ctx_ids[row]
        prio = priority_t(token_hash_t(self.seed, ctx, pos), self.keys)  # [tokens, feat]
        halvings = halvings_under(prio, token_thresholds_t(group, self.fine_counts, feat, q, self.per_bin))
        rows = _absorb(self, group, halvings.masked_fill_(~seen, -1), x, ctx, pos, row, rows)
    if offered is not None:
        offered(rows)


def _absorb(self: Any, group, halvings, x, ctx, pos, row, rows) -> torch.Tensor:
    """This step's tokens (``halvings`` [tokens, feat]: the most halvings of its threshold
    each token stays under, -1 for those not seen; x [tokens, feat]; ctx, pos, row
    [tokens]) into the pool with its entries, all filtered by the thresholds of the
    counts so far, squeezing a feature (the least extra halvings) whose pool would stay
    over three-quarters full; a feature's entries first, then its new tokens in token
    order. Vectorised, no host sync. ``rows`` [feat, capacity]: the batch row of each
    entry's token if it entered in this batch, else -1; returned for the pool after."""
    n_feat, cap, dev = self.n_features, self.capacity, self.device
    feat = torch.arange(n_feat, device=dev)[:, None]
    q = fine_bins_t(self.kval)
    prio = token_priority_t(self.seed, self.kctx, self.kpos, self.keys[:, None])
    limit = token_thresholds_t(group, self.fine_counts, feat, q, self.per_bin)
    old = halvings_under(prio, limit).masked_fill_(torch.arange(cap, device=dev)[None, :] >= self.kn[:, None], -1)
    # entries kept at squeeze s: those with halvings >= s; per feature the least s >= its
    # squeeze at which at most three-quarters of the pool is kept
    levels = HALVINGS_MAX + 2
    counts = torch.zeros((n_feat, levels), dtype=torch.int64, device=dev)
    counts.scatter_add_(1, old + 1, torch.ones_like(old))
    counts.scatter_add_(1, (halvings + 1).T, torch.ones_like(halvings.T))
    kept_at = counts.flip(1).cumsum(1).flip(1)[:, 1:]  # [feat, s]: entries with halvings >= s
    s = torch.arange(levels - 1, device=dev)
    fits = (4 * kept_at <= 3 * cap) & (s[None, :] >= self.squeeze[:, None])
    self.squeeze = torch.maximum(fits.to(torch.int32).argmax(1), self.squeeze)  # the first that fits
    keep_old = old >= self.squeeze[:, None]
    keep_new = halvings >= self.squeeze[None, :]  # [tokens, feat]
    n_old = keep_old.sum(1)
    slot_old = torch.where(keep_old, keep_old.cumsum(1) - 1, cap)  # cap: a column thrown away
    slot_new = torch.where(keep_new, n_old[None, :] + keep_new.cumsum(0) - 1, cap).T  # [feat, tokens]
    n_tok = x.shape[0]
    for name, new in (("kval", x.T), ("kctx", ctx[None, :].expand(n_feat, n_tok)),
                      ("kpos", pos[None, :].expand(n_feat, n_tok))):
        a = getattr(self, name)
        out = torch.zeros((n_feat, cap + 1), dtype=a.dtype, device=dev)
        out.scatter_(1, slot_old, a).scatter_(1, slot_new, new.to(a.dtype))
        setattr(self, name, out[:, :cap])
    out = torch.full((n_feat, cap + 1), -1, dtype=torch.int64, device=dev)
    out.scatter_(1, slot_old, rows).scatter_(1, slot_new, row[None, :].expand(n_feat, n_tok))
    self.kn = (n_old + keep_new.sum(0)).to(self.kn.dtype)
    return out[:, :cap]


def halvings_under(prio: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """int64: the most halvings s of ``limit`` that ``prio`` stays under (prio < limit >> s,
    that is (prio + 1) << s <= limit), -1 where not even under ``limit`` itself."""
    p1 = prio + 1
    s = (torch.frexp(limit.double()).exponent - torch.frexp(p1.double()).exponent).to(torch.int64)  # bit lengths
    s = torch.where((p1 << s.clamp(min=0)) > limit, s - 1, s)
    return s.clamp(min=-1, max=HALVINGS_MAX)
