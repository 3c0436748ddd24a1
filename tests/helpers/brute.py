"""Brute-force references for the engine tests: every activation of every context, in memory.

Activations come from ``run_with_cache`` on the same padded batches the engine uses (so MLP
values are bit-identical); head metrics are recomputed here independently, straight from
their definitions (``z @ W_O`` for the output norm, not the engine's Gram-matrix shortcut).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from indexer.config import IndexConfig
from indexer.inputs.contexts import ContextStream, batches
from indexer.inputs.corpus import parse_corpus_spec
from indexer.forward.runner import make_batch
from indexer.inputs.models import load_model
from indexer.forward.sites import Site, plan_sites


@dataclass
class Reference:
    """acts[site.key]: one [len, feat] array per context (BOS row included), in stream order."""

    ctx_ids: list[int]
    tokens: list[np.ndarray]
    acts: dict[str, list[np.ndarray]]
    plan: list[Site]


def head_metrics(pattern: np.ndarray, v: np.ndarray, z: np.ndarray, w_o: np.ndarray) -> np.ndarray:
    """pattern [head, q, k], v/z [pos, head, d_head], w_o [head, d_head, d_model] -> [pos, head*4]."""
    n_heads, n_pos, _ = pattern.shape
    out = np.zeros((n_pos, n_heads, 4), np.float64)
    p = pattern.astype(np.float64)
    for h in range(n_heads):
        for q in range(n_pos):
            row = p[h, q, : q + 1]
            out[q, h, 0] = row[1:].max() if q >= 1 else 0.0
            nz = row[row > 0]
            out[q, h, 1] = -(nz * np.log(nz)).sum()
            out[q, h, 2] = np.linalg.norm(z[q, h].astype(np.float64) @ w_o[h].astype(np.float64))
            out[q, h, 3] = (row * np.linalg.norm(v[: q + 1, h].astype(np.float64), axis=-1)).max()
    return out.reshape(n_pos, -1)


def reference(cfg: IndexConfig) -> Reference:
    model = load_model(cfg.model)
    ctx_len = cfg.ctx_len or min(model.info.n_ctx, 1024)
    specs = [parse_corpus_spec(c) for c in cfg.corpus]
    stream = ContextStream(specs, model.tokenizer, model.info.bos_token_id, ctx_len, cfg.tokens,
                           order=cfg.order, seed=cfg.seed, tokens_bos=cfg.tokens_bos)
    plan = plan_sites(model.info, cfg.sites, cfg.layers)
    ref = Reference([], [], {site.key: [] for site in plan}, plan)
    names = sorted({n for site in plan for n in site.hook_names() if site.name == "heads"}
                   | {MLP_HOOKS[site.name].format(site.layer) for site in plan if site.name != "heads"})
    for group in batches(iter(stream), cfg.batch_size):
        batch = make_batch(group, model.info.bos_token_id, "cpu", ctx_len)
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(batch.tokens, names_filter=names)
        for row, ctx in enumerate(group):
            n = len(ctx.token_ids)
            ref.ctx_ids.append(ctx.ctx_id)
            ref.tokens.append(ctx.token_ids)
            for site in plan:
                ref.acts[site.key].append(_site_acts(model, site, cache, row, n))
    return ref


# The hook each MLP site reads, named here independently of the engine (the bridge's canonical
# names, not the aliases sites.py uses), so a site wired to the wrong hook fails the comparison.
MLP_HOOKS = {"mlp_pre": "blocks.{}.mlp.in.hook_out", "mlp_mid": "blocks.{}.mlp.ln.hook_in",
             "mlp_post": "blocks.{}.mlp.out.hook_in"}


def _site_acts(model, site: Site, cache, row: int, n: int) -> np.ndarray:
    if site.name != "heads":
        return cache[MLP_HOOKS[site.name].format(site.layer)][row, :n].float().numpy()
    v_name, pattern_name, z_name = site.hook_names()
    w_o = model.bridge.blocks[site.layer].attn.W_O.detach().float().numpy()
    return head_metrics(
        cache[pattern_name][row, :, :n, :n].float().numpy(),
        cache[v_name][row, :n].float().numpy(),
        cache[z_name][row, :n].float().numpy(),
        w_o,
    ).astype(np.float32)


def recorded(ref: Reference, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every recorded token (BOS excluded): values [token, feat], ctx_ids and pos [token]."""
    values, ctxs, poss = [], [], []
    for ctx_id, acts in zip(ref.ctx_ids, ref.acts[key]):
        values.append(acts[1:])
        ctxs.append(np.full(len(acts) - 1, ctx_id))
        poss.append(np.arange(1, len(acts)))
    return np.concatenate(values), np.concatenate(ctxs), np.concatenate(poss)


def top_k(ref: Reference, key: str, feature: int, k: int) -> list[tuple[float, int, int]]:
    """(value, ctx_id, pos): the best token of each context, best contexts first."""
    best = []
    for ctx_id, acts in zip(ref.ctx_ids, ref.acts[key]):
        column = acts[1:, feature]
        if len(column):
            pos = int(np.argmax(column)) + 1
            best.append((float(acts[pos, feature]), ctx_id, pos))
    best.sort(key=lambda t: (-t[0], t[1]))
    return best[:k]


def fine_quantile_bands(values: np.ndarray, quantiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boundaries [feat, Q], edges [feat, Q], counts [feat, Q+1]) from every token's value:
    per feature and quantile q, the fine-grid boundary whose share of tokens below is nearest
    q (ties: below the target, then the boundary next to it), found by trying every boundary.
    values [token, feat] float32."""
    from indexer.recorders.finebins import N_FINE, fine_bins_np, lower_edges

    fine = fine_bins_np(values)  # [token, feat]
    n_tok, n_feat = fine.shape
    bounds = np.zeros((n_feat, len(quantiles)), np.int64)
    every = np.arange(N_FINE)
    for f in range(n_feat):
        below = np.searchsorted(np.sort(fine[:, f]), every, side="left")  # tokens in bins < j
        for i, q in enumerate(quantiles):
            target = q * n_tok
            dist = np.abs(below - target)
            side = below >= target
            # lexicographic: distance, then below-the-target first, then nearest the target
            key = np.lexsort((np.where(side, every, -every), side, dist))
            bounds[f, i] = every[key[0]]
    bins = (fine[:, :, None] >= bounds[None]).sum(-1)  # [token, feat]
    counts = np.stack([(bins == b).sum(0) for b in range(len(quantiles) + 1)], axis=1)
    return bounds, lower_edges()[bounds], counts
