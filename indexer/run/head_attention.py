"""Where each head example attends: the ``head_attention`` table.

For every row of ``head_examples`` (already written), the attention weights from the
example's destination token to its source tokens, sparse: weights >= THRESHOLD, largest first,
at most MAX_SOURCES per example. Sources anywhere in the context (up to the destination) are
kept, not only those inside the example's window: an induction head's source is usually far
back (the token after the previous occurrence), and the contexts table has every token to
draw it; those between ``window_start`` and the window's end are the ones its window shows.

It reads the head examples and their contexts back from the index being finalized and re-runs
only those contexts (n_layers x n_heads x 4 metrics x (top_k + bins x per_bin) examples, so a
few hundred to a few thousand contexts), each only up to its last example's destination (the
attention is causal) and batched with contexts of similar length, keeping only the attention
patterns. Decoupled from how the windows themselves are captured, at the price of one more
forward pass over the head examples' contexts.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from indexer.store.schema import Contexts, HeadAttention, HeadExamples
from indexer.store.writer import IndexWriter

THRESHOLD = 0.01  # attention weights below this are not stored
MAX_SOURCES = 32  # per example, the largest weights first


def write_head_attention(run: Any, writer: IndexWriter, progress: bool = True) -> int:
    """Write the head_attention table for a run whose head_examples and contexts are written;
    returns the number of rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = HeadExamples.files(run.out)
    if not files:
        return 0
    cols = ["layer", "head", "metric", "kind", "bin", "rank", "ctx_id", "pos"]
    ex = pa.concat_tables([pq.read_table(f, columns=cols, partitioning=None) for f in files]).to_pandas()
    ex["layer"] = ex["layer"].astype(np.int32)
    wanted = set(ex["ctx_id"].tolist())
    tokens: dict[int, np.ndarray] = {}
    for f in Contexts.files(run.out):
        t = pq.read_table(f, columns=["ctx_id", "token_ids"])
        t = t.filter(pc.is_in(t["ctx_id"], value_set=pa.array(sorted(wanted), type="int64")))
        for cid, ids in zip(t["ctx_id"].to_pylist(), t["token_ids"].to_pylist()):
            tokens[cid] = np.asarray(ids, np.int64)
    missing = wanted - set(tokens)
    if missing:
        raise RuntimeError(f"head_attention: {len(missing)} example contexts are not in the contexts table")
    layers = sorted(set(ex["layer"].tolist()))
    rows = _attention_rows(run, ex, tokens, layers, progress)
    for layer in layers:
        part = rows[rows["layer"] == layer]
        writer.write(HeadAttention, {c: part[c].to_list() if c in ("src_pos", "weights", "metric", "kind")
                                     else part[c].to_numpy() for c in HeadAttention.columns()},
                     partition={"layer": layer})
    return len(rows)


def _attention_rows(run: Any, ex: Any, tokens: dict[int, np.ndarray], layers: list[int], progress: bool) -> Any:
    import torch
    from tqdm import tqdm

    from indexer.forward.hooks import Stop

    bridge = run.model.bridge
    device = next(bridge.parameters()).device
    bos = run.model.info.bos_token_id
    by_ctx = {cid: grp for cid, grp in ex.groupby("ctx_id")}
    # causal attention: a context runs only up to its last example's destination, and contexts
    # of similar lengths share a batch (no padding worth the name)
    need = {c: int(by_ctx[c]["pos"].max()) + 1 for c in tokens}
    ctx_ids = sorted(tokens, key=lambda c: (need[c], c))
    # Per layer, the (batch row, head, pos) pattern rows the batch's examples need: only those
    # leave the hook (a whole [batch, head, q, k] pattern per layer would not fit for big models).
    wanted: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    rows_of: dict[int, torch.Tensor] = {}

    def keep(layer: int, last: bool):
        def hook(tensor: torch.Tensor, hook: Any) -> None:
            if layer in wanted:
                i, h, q = wanted[layer]
                rows_of[layer] = tensor[i.to(tensor.device), h.to(tensor.device), q.to(tensor.device)].float().cpu()
            if last:
                raise Stop

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_pattern", keep(layer, layer == layers[-1])) for layer in layers]
    out: dict[str, list] = {c: [] for c in HeadAttention.columns()}
    budget = max(1, int(run.cfg.batch_size)) * int(run.ctx_len)  # tokens per forward, as in the stream
    bar = tqdm(total=len(ctx_ids), unit="ctx", desc="head attention", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    for group in _token_batches(ctx_ids, need, budget):
        width = max(need[c] for c in group)
        batch = np.full((len(group), width), bos, np.int64)
        for i, c in enumerate(group):
            batch[i, : need[c]] = tokens[c][: need[c]]
        index: dict[int, list[tuple[int, int, int]]] = {}
        for i, c in enumerate(group):
            for r in by_ctx[c].itertuples(index=False):
                index.setdefault(int(r.layer), []).append((i, int(r.head), int(r.pos)))
        wanted.clear()
        rows_of.clear()
        for layer, triples in index.items():
            wanted[layer] = tuple(torch.tensor(col, dtype=torch.long) for col in zip(*triples))
        slot = {layer: 0 for layer in index}
        with torch.inference_mode(), bridge.hooks(fwd_hooks=hooks):
            try:
                bridge(torch.from_numpy(batch).to(device))
            except Stop:
                pass
        for i, c in enumerate(group):
            for r in by_ctx[c].itertuples(index=False):
                lo, hi = 0, int(r.pos) + 1  # causal: nothing after the destination
                w = rows_of[int(r.layer)][slot[int(r.layer)], lo:hi].numpy()
                slot[int(r.layer)] += 1
                keep_idx = np.flatnonzero(w >= THRESHOLD)
                keep_idx = keep_idx[np.argsort(-w[keep_idx], kind="stable")][:MAX_SOURCES]
                for col in ("layer", "head", "metric", "kind", "bin", "rank", "ctx_id", "pos"):
                    out[col].append(getattr(r, col))
                out["src_pos"].append((keep_idx + lo).astype(np.int32))
                out["weights"].append(w[keep_idx].astype(np.float32))
        bar.update(len(group))
    bar.close()
    import pandas as pd

    frame = pd.DataFrame(out)
    for col in ("layer", "head", "bin", "rank", "pos"):
        frame[col] = frame[col].astype(np.int32)
    frame["ctx_id"] = frame["ctx_id"].astype(np.int64)
    return frame


def _token_batches(ctx_ids: list[int], need: dict[int, int], budget: int) -> list[list[int]]:
    """Consecutive groups of ``ctx_ids`` (sorted by ``need``) of at most ``budget`` tokens once
    padded to the group's longest (always at least one context)."""
    groups: list[list[int]] = []
    for c in ctx_ids:
        if groups and (len(groups[-1]) + 1) * need[c] <= budget:  # c is the group's longest
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups
