"""What every analysis works from: the index (manifest, SQL, contexts, vocab), the model it was
made with (loaded lazily from the manifest's model spec), and batched forward passes that read
the neuron sites at the last token of many short sequences.

Sites are never named here: the neuron sites are the manifest's sites other than the head
metrics, so renamed or added MLP sites are analysed as they come.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from indexer.config import RANDOM_SITE  # random-direction sites: neuron sites whose features are not neurons
from indexer.errors import IndexDirError
from indexer.inputs.sae import SITE_PREFIX as SAE_PREFIX  # SAE sites: neuron sites whose features are latents
from indexer.store import chunks
from indexer.store.chunks import sequence_digest
from indexer.store.manifest import read_manifest
from indexer.store.query import open_index, run_sql

HEAD_SITE = "heads"  # the one site that is not a neuron site (its features are head metrics)
TOKENS_PER_BATCH = 8192  # padded tokens per forward pass of the short-sequence batches
# (sequence rows of a batch, its width) -> float32 [rows, width, d_model] added to the token embeddings
EmbedDelta = Callable[[np.ndarray, int], np.ndarray]
Key = tuple[str, int]  # (site, layer)
Handle = tuple[Key, int, int]  # what Reads.ask returns: (key, offset, count)


class Reads:
    """The values an analysis reads from re-run sequences: per example, a run of consecutive
    sequences (its cuts, its corrupted copies) at the example's own feature. Only those are
    computed into memory: the whole [sequence, feature] array of every site was 1.8 GB for the
    demo's trigram test, and would be hundreds of GB for a GPT-2-small shape's."""

    def __init__(self) -> None:
        self._rows: dict[Key, list[np.ndarray]] = {}
        self._features: dict[Key, list[np.ndarray]] = {}
        self._size: dict[Key, int] = {}

    def ask(self, key: Key, start: int, count: int, feature: int) -> Handle:
        """Ask for feature ``feature`` of site ``key`` at sequences start .. start + count - 1."""
        at = self._size.get(key, 0)
        self._rows.setdefault(key, []).append(np.arange(start, start + count, dtype=np.int64))
        self._features.setdefault(key, []).append(np.full(count, feature, np.int64))
        self._size[key] = at + count
        return key, at, count

    def pairs(self) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
        """Per site: (sequence, feature) of every value asked, in the order asked."""
        return {k: (np.concatenate(self._rows[k]), np.concatenate(self._features[k])) for k in self._rows}

    @staticmethod
    def of(values: dict[Key, np.ndarray], handle: Handle) -> np.ndarray:
        """The values one ``ask`` got, from what last_token_acts returned for ``pairs()``."""
        key, at, count = handle
        return values[key][at : at + count]


@dataclass
class Options:
    """Knobs shared by the analyses (the CLI fills them; defaults fit the 1M-token demo).

    Attributes:
      device: where the model runs ('cpu', 'cuda', 'auto').
      dtype: 'float32' or 'bfloat16' (autocast) for the re-run forward passes.
      top_ranks: top examples per neuron that minimal examples and the trigram test re-run.
      keep_fraction: minimal examples keep at least this fraction of the activation.
      sample_tokens: tokens of the contexts table the regex library is scored on.
      saliency: how token saliency replaces a token: 'frequent' (a frequent token of the
        contexts), 'random' (any token of the vocabulary) or 'noise' (Gaussian noise added to
        its embedding); see indexer.analyses.saliency.
      progress: show tqdm bars on stderr.
    """

    device: str = "auto"
    dtype: str = "float32"
    top_ranks: int = 5
    keep_fraction: float = 0.5
    sample_tokens: int = 100_000
    saliency: str = "frequent"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class IndexContext:
    """An index opened for analysis."""

    def __init__(self, root: Path | str, options: Options | None = None):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if self.manifest.get("status") != "complete":
            raise IndexDirError(f"{self.root}: the index is not complete (status {self.manifest.get('status')!r}); finish or resume it first")
        self.options = options or Options()
        self.conn = open_index(self.root)
        self._forwards: dict[tuple[int, ...], tuple[Any, list]] = {}
        self._fused: list[int] | None = None  # the layers whose attention runs fused, once _plan is built

    def sql(self, query: str, params: Any = None):
        """Rows of a read-only query as a DataFrame (no row cap, no time limit: our own SQL)."""
        df, _ = run_sql(self.conn, query, params=params, limit=None, timeout_s=None)
        return df

    @cached_property
    def neuron_sites(self) -> list[dict]:
        """The manifest's neuron sites, in firing order: dicts with name, layer, n_features."""
        return [s for s in self.manifest.get("sites", []) if s["name"] != HEAD_SITE]

    def sites_of_layer(self, layer: int, latents: bool = False) -> list[str]:
        """The model's own neuron sites of ``layer`` (and with ``latents``, its SAE and random
        direction sites too: features that are not the model's own neurons)."""
        return [s["name"] for s in self.neuron_sites
                if s["layer"] == layer and (latents or not (s["name"].startswith(SAE_PREFIX) or s["name"] == RANDOM_SITE))]

    def output_site(self, layer: int) -> str | None:
        """The site whose features W_out reads: the last MLP site to fire in the layer."""
        names = self.sites_of_layer(layer)
        return names[-1] if names else None

    @cached_property
    def vocab(self) -> np.ndarray:
        df = self.sql("SELECT token_id, token_str FROM vocab ORDER BY token_id")
        out = np.empty(int(df.token_id.max()) + 1 if len(df) else 0, dtype=object)
        out[df.token_id.to_numpy()] = df.token_str.to_numpy()
        return out

    def contexts(self, ctx_ids: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """ctx_id -> token ids as the model saw them (BOS first)."""
        if ctx_ids is None:
            df = self.sql("SELECT ctx_id, token_ids FROM contexts")
        else:
            ids = sorted({int(c) for c in ctx_ids})
            df = self.sql("SELECT ctx_id, token_ids FROM contexts WHERE ctx_id IN (SELECT unnest($ids))", {"ids": ids})
        return {int(c): np.asarray(t, np.int64) for c, t in zip(df.ctx_id, df.token_ids)}

    @cached_property
    def model(self) -> Any:
        from indexer.forward.runner import resolve_device
        from indexer.inputs.models import load_model

        spec = self.manifest.get("config", {}).get("model") or self.manifest.get("model", {}).get("name")
        if not spec:
            raise IndexDirError(f"{self.root}: the manifest names no model to re-run")
        return load_model(spec, device=resolve_device(self.options.device))

    @cached_property
    def sae_sites(self) -> dict[str, Any]:
        """site name -> Site with its encoder, for the SAEs the index was made with."""
        if not self.manifest.get("saes"):
            return {}
        from indexer.forward.sae_sites import sites_from_manifest

        return sites_from_manifest(self.model, self.manifest)

    @cached_property
    def random_directions(self) -> dict[int, np.ndarray]:
        """layer -> [k, d_mlp] float32: the directions of the index's ``random`` site, as stored."""
        df = self.sql("SELECT layer, neuron, direction FROM random_directions ORDER BY layer, neuron")
        return {int(layer): np.stack([np.asarray(d, np.float32) for d in g.direction])
                for layer, g in df.groupby("layer")}

    def bar(self, total: int, desc: str, unit: str = "seq"):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=sys.stderr,
                    disable=not self.options.progress, smoothing=0.05)

    def last_token_acts(self, sequences: Sequence[np.ndarray], wanted: dict[Key, tuple[np.ndarray, np.ndarray]],
                        desc: str, bar: Any = None, embed_delta: EmbedDelta | None = None) -> dict[Key, np.ndarray]:
        """The neuron sites read at the last token of every sequence, the values ``wanted``
        only (Reads.pairs: per site, (sequence, feature) pairs): site -> float32 [pairs].
        Sequences are batched by length. ``bar``: a progress bar to advance (else one of its
        own); ``embed_delta(rows, width)``: float32 [len(rows), width, d_model] added to those
        sequences' token embeddings."""
        import torch

        forward, _ = self._forward(sorted({layer for _, layer in wanted}))
        order = np.argsort([-len(s) for s in sequences], kind="stable")  # longest first: width = first row
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        ranked = {}  # site -> the pairs by their sequence's place in ``order``: (rank, feature, where asked)
        for key, (rows, features) in wanted.items():
            places = rank[rows]
            at = np.argsort(places, kind="stable")
            ranked[key] = (places[at], features[at], at)
        out = {key: np.zeros(len(rows), np.float32) for key, (rows, _) in wanted.items()}
        own = bar is None
        bar = self.bar(len(sequences), desc) if own else bar
        i = 0
        while i < len(order):
            width = len(sequences[order[i]])
            rows = order[i : i + max(1, TOKENS_PER_BATCH // max(1, width))]
            batch = self._batch([sequences[r] for r in rows], width, last=True)
            feats = forward(batch) if embed_delta is None else self._shifted(forward, batch, embed_delta(rows, width))
            for site, acts in feats.items():
                if (site.name, site.layer) not in ranked:
                    continue
                r, f, at = ranked[(site.name, site.layer)]
                lo, hi = np.searchsorted(r, [i, i + len(rows)])
                pick = (torch.from_numpy(r[lo:hi] - i).to(acts.device), torch.from_numpy(f[lo:hi]).to(acts.device))
                out[(site.name, site.layer)][at[lo:hi]] = acts[:, 0][pick].cpu().numpy()
            i += len(rows)
            bar.update(len(rows))
        if own:
            bar.close()
        return out

    def _shifted(self, forward: Any, batch: Any, delta: np.ndarray) -> dict:
        """``forward(batch)`` with ``delta`` [batch, pos, d_model] added to the token embeddings."""
        import torch

        shift = torch.from_numpy(np.ascontiguousarray(delta, np.float32)).to(batch.tokens.device)

        def add(embed: Any, hook: Any) -> Any:
            return embed + shift.to(embed.dtype)

        with self.model.bridge.hooks(fwd_hooks=[("hook_embed", add)]):
            return forward(batch)

    def resumable_last_token_acts(self, name: str, sequences: Sequence[np.ndarray], reads: Reads,
                                  desc: str, chunk: int = 16384) -> dict[Key, np.ndarray]:
        """``last_token_acts`` of ``reads.pairs()`` in chunks of sequences, each saved under
        ``analyses/_partial/NAME/`` as it finishes, so a killed analysis resumes where it
        stopped (the runner clears the folder)."""
        wanted = reads.pairs()
        out = {key: np.zeros(len(rows), np.float32) for key, (rows, _) in wanted.items()}
        total = -(-len(sequences) // chunk)
        for n, start in enumerate(range(0, len(sequences), chunk)):
            part = sequences[start : start + chunk]
            inside = {key: np.flatnonzero((rows >= start) & (rows < start + chunk)) for key, (rows, _) in wanted.items()}
            asked = {key: (wanted[key][0][at] - start, wanted[key][1][at]) for key, at in inside.items() if len(at)}
            salt = b"".join(f"{k}".encode() + r.tobytes() + f.tobytes() for k, (r, f) in sorted(asked.items()))

            def compute(part=part, n=n, asked=asked) -> dict[str, np.ndarray]:
                acts = self.last_token_acts(part, asked, f"{desc} {n + 1}/{total}") if asked else {}
                return {f"{site}/{layer}": a for (site, layer), a in acts.items()}

            saved = self.saved_chunk(name, n, sequence_digest(part, salt), compute)
            for k, values in saved.items():
                site, layer = k.rsplit("/", 1)
                out[(site, int(layer))][inside[(site, int(layer))]] = values
        return out

    def saved_chunk(self, name: str, n: int, digest: str, compute: Callable[[], dict[str, np.ndarray]]
                    ) -> dict[str, np.ndarray]:
        """Chunk ``n`` of analysis ``name``: the arrays a killed run saved under the same digest
        of its inputs (``analyses/_partial/NAME/``), else ``compute()``'s, saved as they come."""
        return chunks.saved_chunk(partial_dir(self.root, name), n, digest, compute)[0]

    def all_token_acts(self, sequences: Sequence[np.ndarray], layers: Sequence[int], desc: str):
        """Yield (index, {(site, layer): [len, neuron] float32}) for every sequence, batched."""
        forward, plan = self._forward(layers)
        bar = self.bar(sum(len(s) for s in sequences), desc, unit="tok")
        width = max((len(s) for s in sequences), default=1)
        take = max(1, TOKENS_PER_BATCH // width)
        for i in range(0, len(sequences), take):
            chunk = sequences[i : i + take]
            feats = {(s.name, s.layer): a.cpu().numpy() for s, a in forward(self._batch(chunk, width)).items()}
            for j, seq in enumerate(chunk):
                yield i + j, {k: v[j, : len(seq)] for k, v in feats.items()}
            bar.update(sum(len(s) for s in chunk))
        bar.close()

    def _forward(self, layers: Sequence[int]):
        """(SiteForward, plan) of the neuron sites of ``layers``, one per set of layers (its
        check of the narrowed MLP is made once)."""
        key = tuple(sorted(set(layers)))
        if key not in self._forwards:
            self._forwards[key] = self._new_forward(key)
        return self._forwards[key]

    @cached_property
    def _plan(self) -> list:
        """The index's neuron sites on the model, every layer, built once; and the attention the
        index ran set up on the model (``_fused``): fused where none of its sites reads it."""
        from indexer.forward.fast_attention import use_fused_attention
        from indexer.forward.manifest_plan import plan_from_manifest
        from indexer.forward.sites import Site

        stored = self.random_directions if any(s["name"] == RANDOM_SITE for s in self.neuron_sites) else None
        every = plan_from_manifest(self.model, self.manifest, None, self.sae_sites, stored)
        heads = [Site(s["name"], s["layer"], s["n_features"]) for s in self.manifest.get("sites", [])
                 if s["name"] == HEAD_SITE]
        self._fused = use_fused_attention(self.model.bridge, heads + every)
        return every

    def _new_forward(self, layers: Sequence[int]):
        from indexer.forward.runner import SiteForward

        plan = [site for site in self._plan if site.layer in layers]
        if not plan:
            raise IndexDirError(f"{self.root}: no neuron site of layer(s) {sorted(set(layers))} was indexed")
        return SiteForward(self.model, plan, self.options.dtype), plan

    def _batch(self, sequences: Sequence[np.ndarray], width: int, last: bool = False):
        """The sequences padded with BOS to ``width``; ``last``: features wanted at each one's
        last token only (computed only there)."""
        import torch

        from indexer.forward.runner import Batch

        bos = self.model.info.bos_token_id
        tokens = np.full((len(sequences), width), bos, np.int64)
        for row, seq in enumerate(sequences):
            tokens[row, : len(seq)] = seq
        device = str(next(self.model.bridge.parameters()).device)
        lengths = torch.tensor([len(s) for s in sequences])
        return Batch(tokens=torch.from_numpy(tokens).to(device), lengths=lengths, ctx_ids=lengths * 0, contexts=[],
                     read_at=(lengths - 1).to(device) if last else None)

    def close(self) -> None:
        self.conn.close()


def partial_dir(root: Path, name: str) -> Path:
    """Where an unfinished analysis keeps its finished chunks."""
    return Path(root) / "analyses" / "_partial" / name


def top_examples(ix: IndexContext, ranks: int, kinds: str = "'top'") -> Any:
    """The top examples of rank < ``ranks`` of every neuron site with a positive activation."""
    return ix.sql(
        f"""SELECT site, layer, neuron, kind, bin, rank, activation, corpus, ctx_id, pos, token_id, token_str,
                   prev_token_str
            FROM examples WHERE kind IN ({kinds}) AND rank < $ranks AND activation > 0
            ORDER BY site, layer, neuron, kind, bin, rank""",
        {"ranks": ranks},
    )
