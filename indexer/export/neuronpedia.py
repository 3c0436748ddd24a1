"""Neuronpedia batch upload (``--format neuronpedia``): the JSON body that
``POST /api/feature/upload-batch`` takes, one file per at most 128 features of one source.

Format version and source: the route's yup schema, hijohnnylin/neuronpedia
``apps/webapp/app/api/feature/upload-batch/route.tsx`` (with ``topLogits``/``bottomLogits``, as
at commit ebb8426f, 2026-08), and the body the official Python client builds
(``neuronpedia`` 1.2.1 on PyPI, ``requests/feature_request.py: FeatureRequest.upload_batch``).

Layout: ``OUT/{source}/batch-{k}.json``, each ``{"modelId", "source", "features": [...]}``
with at most 128 features, where source = ``{layer}-{source set}``: the source set is
``--source-set`` or ``neuroscope-SITE`` (``neuroscope-mlp-post``, ``neuroscope-sae-NAME``,
``neuroscope-heads-max-attn``: one per head metric), the model id ``--model-id`` or the model's
name, lowercased. Upload a file with the client or POST it as it is.

Mapping:
- a feature is a neuron (index = neuron), an SAE latent (index = latent) or one metric of a
  head (index = head; each metric its own source set);
- ``density`` = ``frac_active``, the share of tokens with a value > 0: Neuronpedia's
  ``frac_nonzero`` counts values > 0 too. For an SAE latent that is its firing share.
- ``activations``: the top examples, then the quantile samples of each bin, each its window of
  token strings (exactly as the index's vocab holds them) and values (at most 1024 tokens).
  Activations sharing (quantileMin, quantileMax, quantileFraction) form one section of the
  feature's page: a bin's samples carry the bin's bounds and the share of all tokens in it;
  the top examples carry the range of their values and no fraction (the schema wants a
  fraction in [0, 1], and the top-k is not a share of tokens);
- negative activations (GELU, SiLU neurons; ``mlp_pre``) are written as they are: the lower
  bins have negative bounds and Neuronpedia colours only positive values;
- ``topLogits``/``bottomLogits``: the 10 tokens the feature's output boosts and suppresses
  most (``logit_effects`` for ``mlp_post``/``experts``, ``latent_logit_effects`` for SAE
  latents) once ``neuroscope analyze`` has run; otherwise null;
- a feature without any example (dead) cannot be uploaded (the schema wants >= 1 activation):
  it is left out and listed in ``export.json`` under ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from indexer.export.files import write_json
from indexer.export.options import ExportOptions, slug
from indexer.export.records import Example, Feature, Site, strings

VERSION = "upload-batch (hijohnnylin/neuronpedia route.tsx @ ebb8426f; python client neuronpedia 1.2.1)"
SOURCE = "https://github.com/hijohnnylin/neuronpedia/blob/main/apps/webapp/app/api/feature/upload-batch/route.tsx"
MAX_FEATURES = 128
MAX_TOKENS = 1024
MAX_LOGITS = 20


def model_id(manifest: dict, options: ExportOptions) -> str:
    """--model-id, or the model's name (its last path part), lowercased."""
    name = str((manifest.get("model") or {}).get("name") or "model")
    return options.model_id or slug(name.rstrip("/").rsplit("/", 1)[-1])


def source_id(site: Site, layer: int, options: ExportOptions) -> str:
    """``{layer}-{source set}``: Neuronpedia's name for one layer of a source set."""
    base = options.source_set or f"neuroscope-{slug(site.name.split('/')[0])}"
    return f"{layer}-{base}" + (f"-{slug(site.metric)}" if site.head else "")


def sections(feature: Feature) -> list[tuple[Example, float, float, float | None]]:
    """(example, section min, section max, fraction of tokens or None) for every example, top
    examples first; windows cut to MAX_TOKENS, without BOS."""
    top = [e.cut(MAX_TOKENS) for e in feature.top]
    out = [(e, min(t.activation for t in top), max(t.activation for t in top), None) for e in top]
    bins = feature.bins()
    out += [(e.cut(MAX_TOKENS), bins[e.bin].lo, bins[e.bin].hi, bins[e.bin].share) for e in feature.quantiles]
    return out


def density(feature: Feature) -> float:
    value = float(feature.stats["frac_active"])
    return value if 0.0 <= value <= 1.0 else 0.0


def logit_lists(feature: Feature) -> tuple[list[dict] | None, list[dict] | None]:
    """(topLogits, bottomLogits): ``{token, value}`` lists, or None where there are none."""
    if not feature.logits:
        return None, None
    return tuple([{"token": t, "value": float(v)} for t, v in side[:MAX_LOGITS]] or None for side in feature.logits)


def upload_feature(feature: Feature, vocab: list[str]) -> dict[str, Any] | None:
    """One entry of an upload batch's ``features``; None for a feature without examples."""
    if not feature.examples:
        return None
    top, bottom = logit_lists(feature)
    return {
        "index": feature.index, "density": density(feature), "explanations": [],
        "topLogits": top, "bottomLogits": bottom,
        "activations": [{"tokens": strings(e.token_ids, vocab), "values": e.values, "quantileMin": lo,
                         "quantileMax": hi, "quantileFraction": fraction} for e, lo, hi, fraction in sections(feature)],
    }


class Batches:
    """Groups items of consecutive features by source, MAX_FEATURES a batch; calls
    ``flush(source, batch number, items)`` for each full batch and at a change of source."""

    def __init__(self, flush: Callable[[str, int, list], None]):
        self.flush, self.source, self.items, self.number = flush, None, [], 0
        self.counts: dict[str, int] = {}

    def add(self, source: str, item: Any) -> None:
        if source != self.source:
            self._flush()
            self.source, self.number = source, 0
        self.items.append(item)
        self.counts[source] = self.counts.get(source, 0) + 1
        if len(self.items) == MAX_FEATURES:
            self._flush()

    def close(self) -> dict[str, int]:
        """Flush the last batch; returns the number of features per source."""
        self._flush()
        return self.counts

    def _flush(self) -> None:
        if self.items:
            self.flush(self.source, self.number, self.items)
            self.number, self.items = self.number + 1, []


def write(source, work, out: Path, options: ExportOptions, bar) -> dict[str, Any]:
    """Write the upload batches of every feature in ``work``; returns the summary's entries."""
    vocab, mid = source.vocab(), model_id(source.manifest, options)
    skipped: dict[str, list[int]] = {}

    def flush(sid: str, number: int, features: list) -> None:
        write_json(out / sid / f"batch-{number}.json", {"modelId": mid, "source": sid, "features": features})

    batches = Batches(flush)
    for feature in source.each(work, bar, logits=True):
        payload = upload_feature(feature, vocab)
        sid = source_id(feature.site, feature.layer, options)
        if payload is None:
            skipped.setdefault(sid, []).append(feature.index)
        else:
            batches.add(sid, payload)
    return {"model_id": mid, "sources": batches.close(), "skipped": skipped}
