"""OpenAI automated-interpretability ``NeuronRecord`` (``--format neuron-record``): one JSON
file per feature, read by ``neuron_explainer.activations.activations.load_neuron`` (and
``read_neuron_file``), so its explainer and simulator-scorer run on our examples.

Format version and source: openai/automated-interpretability ``neuron-explainer``
(``neuron_explainer/activations/activations.py``, ``fast_dataclasses/fast_dataclasses.py`` at
0f08c3d2, the code of the ``neuron-explainer`` 0.0.1 package on PyPI): a ``FastDataclass``
serialised with its ``dataclass_name``; ``NeuronRecord{neuron_id: NeuronId{layer_index,
neuron_index}, random_sample, random_sample_by_quantile, quantile_boundaries, mean, variance,
skewness, kurtosis, most_positive_activation_records}``, records being
``ActivationRecord{tokens, activations}``.

Layout: ``OUT/{site}/{layer}/{neuron}.json``: each site folder is a dataset path as
``load_neuron(layer, neuron, dataset_path)`` takes it (OpenAI's ``collated-activations``),
e.g. ``load_neuron(0, 7, "file:///abs/OUT/mlp_post")``. SAE latents: ``neuron_index`` = latent.

Mapping:
- ``most_positive_activation_records``: the top examples by rank (their window, without BOS);
  the explainer's splits take ``len // 4`` of them each (all 20 at the default top-k);
- ``random_sample_by_quantile[b]``: the uniform samples of quantile bin b (bins ascending), and
  ``quantile_boundaries`` the index's ``quantile_edges`` (bin b holds values in
  [edges[b-1], edges[b])); for an SAE latent the bins partition the tokens where it fires;
- ``random_sample``: every quantile sample, bins ascending: stratified by bin, not a uniform
  sample of tokens (the index keeps no uniform one); the scorer's splits take ``len // 3``;
- ``mean``, ``variance`` (std²): exact, over every token; ``skewness`` and ``kurtosis``
  (excess, Fisher's): from the stored histogram's bin midpoints, approximate; null if undefined;
- negative activations are written as they are (the explainer's prompt clips them to 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.export.files import write_json
from indexer.export.options import ExportOptions
from indexer.export.records import Example, Feature, finite, strings

VERSION = "NeuronRecord (openai/automated-interpretability neuron-explainer @ 0f08c3d2; PyPI neuron-explainer 0.0.1)"
SOURCE = ("https://github.com/openai/automated-interpretability/blob/main/neuron-explainer/neuron_explainer/"
          "activations/activations.py")


def activation_record(example: Example, vocab: list[str]) -> dict[str, Any]:
    cut = example.cut()
    return {"dataclass_name": "ActivationRecord", "tokens": strings(cut.token_ids, vocab), "activations": cut.values}


def neuron_record(feature: Feature, vocab: list[str]) -> dict[str, Any]:
    """The NeuronRecord of one feature, as JSON-ready dicts."""
    n_bins = len(feature.stats["bin_counts"])
    by_bin: list[list[dict]] = [[] for _ in range(n_bins)]
    for e in feature.quantiles:
        by_bin[e.bin].append(activation_record(e, vocab))
    std = finite(feature.stats["std"])
    skewness, kurtosis = feature.moments()
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {"dataclass_name": "NeuronId", "layer_index": feature.layer, "neuron_index": feature.index},
        "random_sample": [r for records in by_bin for r in records],
        "random_sample_by_quantile": by_bin,
        "quantile_boundaries": [float(x) for x in feature.stats["quantile_edges"]],
        "mean": finite(feature.stats["mean"]), "variance": std * std if std is not None else None,
        "skewness": finite(skewness), "kurtosis": finite(kurtosis),
        "most_positive_activation_records": [activation_record(e, vocab) for e in feature.top],
    }


def write(source, work, out: Path, options: ExportOptions, bar) -> dict[str, Any]:
    """Write one NeuronRecord file per feature with examples; returns the summary's entries."""
    vocab = source.vocab()
    counts: dict[str, int] = {}
    skipped: dict[str, list[int]] = {}
    for feature in source.each(work, bar):
        key = f"{feature.site.name}/{feature.layer}"
        if not feature.examples:
            skipped.setdefault(key, []).append(feature.index)
            continue
        write_json(out / feature.site.name / str(feature.layer) / f"{feature.index}.json", neuron_record(feature, vocab))
        counts[key] = counts.get(key, 0) + 1
    return {"sources": counts, "skipped": skipped}
