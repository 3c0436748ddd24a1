"""EleutherAI delphi latent records (``--format delphi``): what delphi's explainers and scorers
take for a latent, as JSON lines that the README's snippet turns into ``LatentRecord``s.

Format version and source: EleutherAI/delphi ``delphi/latents/latents.py`` at 3c2e1393 (the
code of ``eai-delphi`` 0.1.3 on PyPI): ``LatentRecord{latent: Latent{module_name,
latent_index}, examples, not_active, train, test, per_token_frequency, ...}``, its examples
``ActivatingExample{tokens, activations, str_tokens, quantile, normalized_activations}`` and
``NonActivatingExample{tokens, activations, str_tokens, distance}``. Explainers read
``record.train``; scorers read ``record.test`` and ``record.not_active``
(``delphi/explainers/explainer.py``, ``delphi/scorers/classifier/classifier.py``). delphi's own
cache cannot hold dense neurons (it keeps every non-zero activation), so we hand over the
records it builds from that cache instead (delphi's ``constructor`` + ``sampler``).

Layout: ``OUT/{module}.jsonl``, one line per latent, module = ``layers.{layer}.{site}`` (``:``
of ``sae:NAME`` written as ``.``): ``{"latent": {"module_name", "latent_index"}, "site",
"layer", "per_token_frequency", "train": [...], "test": [...], "not_active": [...]}``, each
example ``{"tokens": [ids], "str_tokens": [...], "activations": [...], "quantile", "ctx_id",
"start"}`` (``start``: the context position of its first token).

Mapping:
- ``train``: the top examples by rank (delphi's ``train_type="top"``), quantile 0;
- ``test``: the quantile samples whose value is > 0, highest bin first, with delphi's quantile
  numbering (0 = highest): bin b of B is quantile B - b; delphi's ``examples`` = train + test
  by max activation, descending (the snippet sorts them);
- ``not_active``: from the feature's own windows, the stretches of at least 8 tokens where it
  is <= 0 at every token (the longest of each window, at most 32 tokens, ending where the
  stretch ends), one per context, at most 50 (delphi's ``n_non_activating``): exact values,
  hard negatives from the same documents (like delphi's ``neighbours`` source); a dense neuron
  may have few or none;
- ``per_token_frequency`` = ``frac_active``, the share of tokens with a value > 0;
- negative activations stay as they are (delphi's prompt normalisation clips them to 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.export.files import atomic_file, dumps
from indexer.export.options import ExportOptions
from indexer.export.records import Example, Feature, Site, strings

VERSION = "LatentRecord (EleutherAI/delphi delphi/latents/latents.py @ 3c2e1393; PyPI eai-delphi 0.1.3)"
SOURCE = "https://github.com/EleutherAI/delphi/blob/main/delphi/latents/latents.py"
MIN_NOT_ACTIVE, MAX_NOT_ACTIVE, N_NOT_ACTIVE = 8, 32, 50


def module_name(site: Site, layer: int) -> str:
    """``layers.0.mlp_post``, ``layers.0.sae.NAME``: delphi writes ``{module}_latent{i}`` files."""
    return f"layers.{layer}.{site.name.replace(':', '.')}"


def example(e: Example, vocab: list[str], quantile: int) -> dict[str, Any]:
    return {"tokens": e.token_ids, "str_tokens": strings(e.token_ids, vocab), "activations": e.values,
            "quantile": quantile, "ctx_id": e.ctx_id, "start": e.start}


def not_active(feature: Feature, vocab: list[str]) -> list[dict[str, Any]]:
    """Stretches of the feature's windows where it does not fire (every value <= 0)."""
    found, seen = [], set()
    for e in (x.cut() for x in feature.examples):
        if e.ctx_id in seen:
            continue
        best, run_start = (0, 0), None
        for i, v in enumerate([*e.values, 1.0]):  # a sentinel ends the last stretch
            if v <= 0 and run_start is None:
                run_start = i
            elif v > 0 and run_start is not None:
                best, run_start = max(best, (i - run_start, i)), None
        length, end = best
        if length >= MIN_NOT_ACTIVE:
            first = end - min(length, MAX_NOT_ACTIVE)
            ids = e.token_ids[first:end]
            found.append({"tokens": ids, "str_tokens": strings(ids, vocab), "activations": e.values[first:end],
                          "distance": 0.0, "ctx_id": e.ctx_id, "start": e.start + first})
            seen.add(e.ctx_id)
        if len(found) == N_NOT_ACTIVE:
            break
    return found


def latent_record(feature: Feature, vocab: list[str]) -> dict[str, Any]:
    n_bins = len(feature.stats["bin_counts"])
    test = sorted((e for e in feature.quantiles if e.activation > 0), key=lambda e: (-e.bin, e.rank))
    return {
        "latent": {"module_name": module_name(feature.site, feature.layer), "latent_index": feature.index},
        "site": feature.site.name, "layer": feature.layer,
        "per_token_frequency": float(feature.stats["frac_active"]),
        "train": [example(e.cut(), vocab, 0) for e in feature.top],
        "test": [example(e.cut(), vocab, n_bins - e.bin) for e in test],
        "not_active": not_active(feature, vocab),
    }


def write(source, work, out: Path, options: ExportOptions, bar) -> dict[str, Any]:
    """One JSON-lines file per (site, layer); returns the summary's entries."""
    vocab = source.vocab()
    counts: dict[str, int] = {}
    skipped: dict[str, list[int]] = {}
    for site, layer, indices in work:
        name = module_name(site, layer)
        counts[name] = 0
        with atomic_file(out / f"{name}.jsonl") as f:  # streamed: one latent in memory at a time
            for feature in source.each([(site, layer, indices)], bar):
                if feature.examples:
                    f.write((dumps(latent_record(feature, vocab)) + "\n").encode())
                    counts[name] += 1
                else:
                    skipped.setdefault(name, []).append(feature.index)
    return {"sources": counts, "skipped": skipped}
