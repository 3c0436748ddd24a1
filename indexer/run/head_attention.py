"""Where each head example attends: the ``head_attention`` table.

For every row of ``head_examples`` (already written), the attention weights from the
example's destination token to its source tokens, sparse: weights >= THRESHOLD, largest first,
at most MAX_SOURCES per example (``attention_rows.sparse_rows``). Sources anywhere in the
context (up to the destination) are kept, not only those inside the example's window: an
induction head's source is usually far back (the token after the previous occurrence), and the
contexts table has every token to draw it; those between ``window_start`` and the window's end
are the ones its window shows.

Most rows were cut from the stream's own attention patterns (``attention_rows``). The
contexts of the rest are read back from the contexts table and run again through
``SiteForward`` in the stream's batch shape (a batch of the run's size, padded to its context
length), so a re-run row equals the row the stream would have cut, bit for bit.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from indexer.run.attention_rows import cut_rows
from indexer.store.schema import Contexts, HeadAttention, HeadExamples
from indexer.store.writer import IndexWriter

# Private switch for tests: ignore the rows cut while streaming and run every head example's
# context again (the brute force the captured rows are checked against).
FORWARD_ALL = False


def write_head_attention(run: Any, writer: IndexWriter, progress: bool = True) -> int:
    """Write the head_attention table for a run whose head_examples and contexts are written;
    returns the number of rows. Adds to ``run.attention_contexts`` the contexts run again here
    (finalize's own re-runs cut the rows it knew were missing: ``missing_rows``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = HeadExamples.files(run.out)
    done = run.attention_contexts or 0  # contexts finalize's own re-runs already cut rows from
    if not files:
        run.attention_contexts = done
        return 0
    cols = ["layer", "head", "metric", "kind", "bin", "rank", "ctx_id", "pos"]
    ex = pa.concat_tables([pq.read_table(f, columns=cols, partitioning=None) for f in files]).to_pandas()
    ex["layer"] = ex["layer"].astype(np.int32)
    keys = list(zip(ex["layer"].tolist(), ex["head"].tolist(), ex["ctx_id"].tolist(), ex["pos"].tolist()))
    rows = {} if FORWARD_ALL else {k: r for k in set(keys) if (r := run.attention_rows.get(k)) is not None}
    missing = sorted({k for k in keys if k not in rows}, key=lambda k: (k[2], k[0], k[1], k[3]))
    run.attention_contexts = done + len({k[2] for k in missing})
    if missing:
        rows.update(_rerun(run, missing, progress))
    ex["src_pos"] = [rows[k][0] for k in keys]
    ex["weights"] = [rows[k][1] for k in keys]
    for col in ("head", "bin", "rank", "pos"):
        ex[col] = ex[col].astype(np.int32)
    ex["ctx_id"] = ex["ctx_id"].astype(np.int64)
    for layer in sorted(set(ex["layer"].tolist())):
        part = ex[ex["layer"] == layer]
        writer.write(HeadAttention, {c: part[c].to_list() if c in ("src_pos", "weights", "metric", "kind")
                                     else part[c].to_numpy() for c in HeadAttention.columns()},
                     partition={"layer": layer})
    return len(ex)


def _rerun(run: Any, missing: list[tuple[int, int, int, int]], progress: bool) -> dict:
    """The rows of ``missing`` keys (layer, head, ctx_id, pos), from their contexts run again."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from indexer.forward.runner import SiteForward, make_batch
    from indexer.inputs.contexts import Context, batches

    wanted = sorted({k[2] for k in missing})
    tokens: dict[int, list[int]] = {}
    for f in Contexts.files(run.out):
        t = pq.read_table(f, columns=["ctx_id", "token_ids"])
        t = t.filter(pc.is_in(t["ctx_id"], value_set=pa.array(wanted, type="int64")))
        tokens.update(zip(t["ctx_id"].to_pylist(), t["token_ids"].to_pylist()))
    lost = set(wanted) - set(tokens)
    if lost:
        raise RuntimeError(f"head_attention: {len(lost)} example contexts are not in the contexts table")
    by_ctx: dict[int, list[tuple[int, int, int]]] = {}
    for layer, head, ctx_id, pos in missing:
        by_ctx.setdefault(ctx_id, []).append((layer, head, pos))
    plan = [site for site in run.plan if site.name == "heads"]
    forward = SiteForward(run.model, plan, run.cfg.dtype)
    out: dict = {}
    bar = tqdm(total=len(wanted), unit="ctx", desc="head attention", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    contexts = (Context(ctx_id=c, corpus="", doc_id=-1, token_ids=np.asarray(tokens[c], np.int32)) for c in wanted)
    for group in batches(contexts, run.cfg.batch_size):
        batch = make_batch(group, run.model.info.bos_token_id, run.device, run.ctx_len)

        def cut(site: Any, features: Any, pattern: Any) -> None:
            keys, src, weights, count = cut_for(site, group, pattern, by_ctx)
            out.update((key, (src[i, :count[i]], weights[i, :count[i]])) for i, key in enumerate(keys))

        forward(batch, each=cut)
        bar.update(len(group))
    bar.close()
    return out


def cut_for(site: Any, group: list, pattern: Any, by_ctx: dict[int, list[tuple[int, int, int]]]):
    """The rows ``by_ctx`` (ctx_id -> [(layer, head, pos)]) asks of a heads site's layer in a
    batch of contexts ``group`` (its pattern [batch, head, q, k]): their keys, and ``cut_rows``'
    src_pos, weights and counts."""
    want = [(row, head, pos, (site.layer, head, c.ctx_id, pos)) for row, c in enumerate(group)
            for layer, head, pos in by_ctx.get(c.ctx_id, ()) if layer == site.layer]
    if not want:
        return [], None, None, None
    src, weights, count = cut_rows(pattern, *(np.array(col) for col in list(zip(*want))[:3]))
    return [w[3] for w in want], src, weights, count


def missing_rows(run: Any, sets: list) -> dict[int, list[tuple[int, int, int]]]:
    """ctx_id -> [(layer, head, pos)]: the head examples (of ``sets``, finalize's ExampleSets)
    whose attention row the stream did not cut, so that finalize's own re-runs cut them (one
    pass over those contexts instead of two). Empty under FORWARD_ALL."""
    from indexer.forward.sites import HEAD_METRICS

    out: dict[int, set] = {}
    if FORWARD_ALL:
        return {}
    for example_set in sets:
        if example_set.site.name != "heads":
            continue
        layer = example_set.site.layer
        heads = (example_set.feature // len(HEAD_METRICS)).tolist()
        for head, ctx_id, pos in zip(heads, example_set.ctx_id.tolist(), example_set.pos.tolist()):
            if run.attention_rows.get((layer, head, ctx_id, pos)) is None:
                out.setdefault(ctx_id, set()).add((layer, head, pos))
    return {c: sorted(v) for c, v in out.items()}
