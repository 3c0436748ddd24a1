"""A small synthetic index written with IndexWriter: the test fixture, and a dev seeding script.

    .venv/bin/python tests/fixtures_index.py OUT_DIR [--analyses]

Values follow simple rules so tests can check them: neuron N of layer L has max activation
``1 + L + N / 10`` (its top example of rank r: that minus ``r / 10``), except the DEAD neuron,
which never fires.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from indexer.store import schema
from indexer.store.writer import IndexWriter

SITE = "mlp_post"
LAYERS = (0, 1)
D_MLP = 6
N_HEADS = 2
METRICS = ("max_attn", "entropy")
TOP_K = 3
BINS = 2
PER_BIN = 2
DEAD = (1, 3)  # (layer, neuron)
CORPORA = {"web": range(0, 6), "code": range(6, 10)}
N_VOCAB = 50
CTX_LEN = 16
WINDOW = 5


def build_index(root: Path | str, analyses: bool = False, seed: int = 0) -> Path:
    """Write the synthetic index into ``root`` (a new or empty folder) and return it."""
    rng = np.random.default_rng(seed)
    writer = IndexWriter(root)
    writer.write(schema.Vocab, {"token_id": np.arange(N_VOCAB), "token_str": [f"t{i}" for i in range(N_VOCAB)]})
    tokens = {}
    for corpus, ids in CORPORA.items():
        for part, chunk in enumerate(np.array_split(np.array(ids), 2)):  # two part files each
            rows = [rng.integers(0, N_VOCAB, CTX_LEN) for _ in chunk]
            tokens.update(zip(chunk.tolist(), rows))
            writer.write(
                schema.Contexts,
                {"ctx_id": chunk, "doc_id": chunk // 2, "token_ids": rows, "n_tokens": np.full(len(chunk), CTX_LEN)},
                partition={"corpus": corpus},
                part=f"part-{part}",
            )
    for layer in LAYERS:
        neurons = {"neuron": np.arange(D_MLP), **_stats(D_MLP, layer, dead=DEAD)}  # site, layer: from partition
        writer.write(schema.Neurons, neurons, partition={"site": SITE, "layer": layer})
        writer.write(schema.Examples, _examples(layer, D_MLP, tokens, rng), partition={"site": SITE, "layer": layer})
        heads = _stats(N_HEADS * len(METRICS), layer)
        writer.write(schema.Heads, {**_head_key(layer, N_HEADS * len(METRICS)), **heads}, partition={"layer": layer})
        rows = _examples(layer, N_HEADS * len(METRICS), tokens, rng)
        del rows["site"]
        rows = {**_head_key(layer, rows.pop("neuron")), **rows}
        writer.write(schema.HeadExamples, rows, partition={"layer": layer})
    layer, head = np.divmod(np.arange(len(LAYERS) * N_HEADS), N_HEADS)
    scores = {c: rng.random(len(layer)) for c in ("prev_token", "induction", "duplicate_token", "bos")}
    writer.write(schema.HeadScores, {"layer": layer, "head": head, **scores})
    extra = {c: rng.random(len(layer)) for c in ("self_attention", "mean_attn_distance", "successor")}
    writer.write(schema.HeadWiki, {"layer": layer, "head": head, **scores, **extra})
    # composition of every layer-0 head into every layer-1 head; (0, 1) -> (1, 0) K-composes most
    ha, hb = np.divmod(np.arange(N_HEADS * N_HEADS), N_HEADS)
    kinds = np.repeat(["q", "k", "v"], len(ha))
    comp = rng.random(len(kinds)) * 0.5
    comp[(kinds == "k") & (np.tile(ha, 3) == 1) & (np.tile(hb, 3) == 0)] = 0.9
    writer.write(schema.HeadComposition, {"layer_a": 0, "head_a": np.tile(ha, 3), "layer_b": 1,
                                          "head_b": np.tile(hb, 3), "kind": kinds, "score": comp})
    if analyses:
        write_analyses(writer)
    writer.write_manifest({"format": "neuroscope-index", "status": "complete", "model": {"name": "synthetic"}})
    return Path(root)


def write_analyses(writer: IndexWriter) -> None:
    """A fake trigram_scores table: two rows for neuron (0, 1), the best one scored 0.9."""
    writer.write(
        schema.TrigramScores,
        {
            "site": SITE,
            "layer": [0, 0, 1, 0],
            "neuron": [1, 1, 2, 4],
            "score": [0.5, 0.9, 0.7, 0.2],
            "prev_token_str": ["a", "b", "c", "d"],
            "token_str": ["x", "y", "z", "w"],
        },
    )


def _stats(n: int, layer: int, dead: tuple[int, int] | None = None) -> dict:
    feature = np.arange(n)
    top = 1 + layer + feature / 10
    frac = np.full(n, 0.25)
    if dead and dead[0] == layer:
        top[dead[1]], frac[dead[1]] = 0.0, 0.0
    edges = np.linspace(0, 1, BINS + 1)
    return {
        "n_tokens": 1000, "mean": top / 4, "std": top / 8, "min": -0.17, "max": top,
        "frac_active": frac, "hist": np.tile([500, 300, 200], (n, 1)),
        "quantile_edges": np.tile(edges[1:], (n, 1)), "bin_counts": np.tile([900, 100], (n, 1)),
        "hist_edges": np.tile(np.linspace(-1, 3, 4), (n, 1)),
    }  # fmt: skip


def _head_key(layer: int, feature) -> dict:
    feature = np.arange(feature) if np.ndim(feature) == 0 else np.asarray(feature)
    return {"layer": layer, "head": feature // len(METRICS), "metric": np.array(METRICS)[feature % len(METRICS)]}


def _examples(layer: int, n: int, tokens: dict, rng: np.random.Generator) -> dict:
    rows: dict[str, list] = {k: [] for k in ("neuron", "kind", "bin", "rank", "activation", "ctx_id", "pos")}
    for feature in range(n):
        slots = [("top", -1, r) for r in range(TOP_K)]
        slots += [("quantile", b, r) for b in range(BINS) for r in range(PER_BIN)]
        for kind, b, r in slots:
            value = 1 + layer + feature / 10 - r / 10 if kind == "top" else (b + 1) / (BINS + 1) - r / 100
            where = (int(rng.integers(0, 10)), int(rng.integers(1, CTX_LEN)))  # ctx_id, pos
            for key, v in zip(rows, (feature, kind, b, r, value, *where)):
                rows[key].append(v)
    ids = [tokens[c] for c in rows["ctx_id"]]
    start = [max(0, p - WINDOW + 1) for p in rows["pos"]]
    return {
        "site": SITE, "layer": layer, **rows,
        "corpus": ["web" if c < 6 else "code" for c in rows["ctx_id"]],
        "doc_id": np.array(rows["ctx_id"]) // 2,
        "token_id": [t[p] for t, p in zip(ids, rows["pos"])],
        "token_str": [f"t{t[p]}" for t, p in zip(ids, rows["pos"])],
        "prev_token_str": [f"t{t[p - 1]}" for t, p in zip(ids, rows["pos"])],
        "context_text": [" ".join(f"t{i}" for i in t) for t in ids],
        "window_start": start,
        "window_token_ids": [t[s : p + 1] for t, s, p in zip(ids, start, rows["pos"])],
        "window_acts": [np.linspace(0, a, p + 1 - s) for a, s, p in zip(rows["activation"], start, rows["pos"])],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--analyses", action="store_true", help="also write a fake trigram_scores table")
    args = parser.parse_args()
    print(build_index(args.out, analyses=args.analyses))


if __name__ == "__main__":
    main()
