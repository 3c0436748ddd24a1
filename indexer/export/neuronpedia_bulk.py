"""Neuronpedia bulk import (``--format neuronpedia --bulk``): the gzipped JSONL tree that
Neuronpedia's database importer reads (``GET /api/admin/import?modelId=&sourceId=`` on a
self-hosted instance reads it from its dataset bucket and inserts each line).

Format version and source: the layout and rows written by SAEDashboard 0.8.0's
``sae_dashboard/neuronpedia/neuronpedia_export.py`` (jbloomAus/SAEDashboard @ 3ea1249a), whose
dataclasses mirror ``utils/neuronpedia-utils/neuronpedia_utils/db_models/*`` of
hijohnnylin/neuronpedia: one JSON object a line, a table's column names as keys.

Layout, per (site, layer): ``OUT/{model id}/{source}/`` with ``release.jsonl``,
``model.jsonl``, ``sourceset.jsonl``, ``source.jsonl``, ``features/batch-{k}.jsonl.gz``
(table ``Neuron``, 128 features a batch) and ``activations/batch-{k}.jsonl.gz`` (table
``Activation``). Names, density, sections and logits as in ``neuronpedia`` (the upload), except
where this format has its own convention, followed here as SAEDashboard writes it:
- the top examples' section is ``binMin`` -1, ``binMax`` the feature's max, ``binContains`` -1
  (SAEDashboard's "TOP ACTIVATIONS" group); a quantile bin's is its bounds and its share;
- ``maxValue``/``maxValueTokenIndex``/``minValue`` are over the window's values (the example's
  own token is ``qualifyingTokenIndex``); ``maxActApprox`` is the largest ``maxValue``;
- ``freq_hist_data_bar_values``/``_heights``: the centres and token counts of the stored
  histogram's bins above 0 (Neuronpedia's activation histogram counts values > 0; our bins are
  the index's fixed symlog bins, not 50 equal-width ones);
- ``id``: ``{source}:{index}:{kind}:{bin}:{rank}`` (unique, and the same on every export);
  ``createdAt``: the index's creation time, so an export is a function of its index.
Fields the index has nothing for (vectors, correlations, DFA, logit histograms) are empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.export import neuronpedia
from indexer.export.files import write_json, write_jsonl_gz
from indexer.export.options import ExportOptions
from indexer.export.records import Feature, Site, strings

VERSION = "bulk import (SAEDashboard 0.8.0 neuronpedia_export.py @ 3ea1249a; neuronpedia-utils db_models)"
SOURCE = "https://github.com/jbloomAus/SAEDashboard/blob/main/sae_dashboard/neuronpedia/neuronpedia_export.py"
_EMPTY_FEATURE = {
    "hasVector": False, "vector": [], "vectorLabel": None, "vectorDefaultSteerStrength": 10, "hookName": None,
    "topkCosSimIndices": [], "topkCosSimValues": [], "neuron_alignment_indices": [], "neuron_alignment_values": [],
    "neuron_alignment_l1": [], "correlated_neurons_indices": [], "correlated_neurons_pearson": [],
    "correlated_neurons_l1": [], "correlated_features_indices": [], "correlated_features_pearson": [],
    "correlated_features_l1": [], "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
    "decoder_weights_dist": [],
}
_EMPTY_ACTIVATION = {"dataIndex": None, "dfaValues": [], "dfaTargetIndex": None, "dfaMaxValue": None,
                     "lossValues": [], "logitContributions": None, "zIndices": None, "zValues": None}


class Rows:
    """Builds the rows of one export: the ids and times every row shares."""

    def __init__(self, manifest: dict, options: ExportOptions):
        self.manifest = manifest
        self.model_id = neuronpedia.model_id(manifest, options)
        self.creator = options.creator_id or "neuroscope"
        self.created = str(manifest.get("created") or "1970-01-01T00:00:00+00:00")
        self.options = options

    def feature(self, feature: Feature, sid: str, vocab: list[str]) -> tuple[dict, list[dict]]:
        """The ``Neuron`` row of a feature and its ``Activation`` rows."""
        activations = []
        for e, lo, hi, fraction in neuronpedia.sections(feature):
            top = e.kind == "top"
            values = e.values
            peak = max(values)
            activations.append({
                "id": f"{sid}:{feature.index}:{e.kind}:{e.bin}:{e.rank}", "tokens": strings(e.token_ids, vocab),
                "index": str(feature.index), "layer": sid, "modelId": self.model_id, "maxValue": peak,
                "maxValueTokenIndex": values.index(peak), "minValue": min(values), "values": values,
                "creatorId": self.creator, "dataSource": "neuroscope", "createdAt": self.created,
                "binMin": -1.0 if top else lo, "binMax": float(feature.stats["max"]) if top else hi,
                "binContains": -1.0 if top else fraction, "qualifyingTokenIndex": e.at, **_EMPTY_ACTIVATION,
            })
        top_logits, bottom_logits = neuronpedia.logit_lists(feature)
        heights, centres = _positive_histogram(feature.stats)
        row = {
            "modelId": self.model_id, "layer": sid, "index": str(feature.index), "creatorId": self.creator,
            "createdAt": self.created, "maxActApprox": max(a["maxValue"] for a in activations), **_EMPTY_FEATURE,
            "pos_str": [t["token"] for t in top_logits or []], "pos_values": [t["value"] for t in top_logits or []],
            "neg_str": [t["token"] for t in bottom_logits or []],
            "neg_values": [t["value"] for t in bottom_logits or []],
            "frac_nonzero": neuronpedia.density(feature), "freq_hist_data_bar_heights": heights,
            "freq_hist_data_bar_values": centres, "sourceSetName": sid.split("-", 1)[1],
        }
        return row, activations

    def metadata(self, site: Site, layer: int, sid: str) -> dict[str, dict]:
        """The four one-line files of a source folder."""
        model = self.manifest.get("model") or {}
        set_name, corpora = sid.split("-", 1)[1], [c.get("name") for c in self.manifest.get("corpora") or []]
        release = f"neuroscope-{self.model_id}"
        common = {"creatorId": self.creator, "createdAt": self.created}
        return {
            "release.jsonl": {"name": release, "description": f"neuroscope index of {model.get('name')}",
                              "creatorName": "neuroscope", "visibility": "PUBLIC", "isNewUi": False, "featured": False,
                              "descriptionShort": None, "urls": [], "creatorEmail": None, "creatorNameShort": None,
                              "defaultSourceSetName": None, "defaultSourceId": None, "defaultUmapSourceIds": [],
                              **common},
            "model.jsonl": {"id": self.model_id, "instruct": False, "displayNameShort": self.model_id,
                            "displayName": str(model.get("name") or self.model_id), "tlensId": None,
                            "dimension": model.get("d_model"), "visibility": "PUBLIC", "defaultSourceSetName": None,
                            "defaultSourceId": None, "inferenceEnabled": False, "layers": model.get("n_layers") or 0,
                            "neuronsPerLayer": model.get("d_mlp") or 0, "owner": "", "updatedAt": self.created,
                            "website": None, **common},
            "sourceset.jsonl": {"modelId": self.model_id, "name": set_name, "hasDashboards": True,
                                "visibility": "PUBLIC", "description": f"neuroscope: {site.name}", "type": "",
                                "creatorName": "neuroscope", "urls": [], "creatorEmail": None, "releaseName": release,
                                "defaultOfModelId": None, "defaultRange": 1, "defaultShowBreaks": True,
                                "showDfa": False, "showCorrelated": False, "showHeadAttribution": False,
                                "showUmap": False, **common},
            "source.jsonl": {"id": sid, "modelId": self.model_id, "setName": set_name, "hasDashboards": True,
                             "inferenceEnabled": False, "inferenceHosts": [], "saelensConfig": None,
                             "saelensRelease": None, "saelensSaeId": None, "hfRepoId": None, "hfFolderId": None,
                             "visibility": "PUBLIC", "defaultOfModelId": None, "hasUmap": False,
                             "hasUmapLogSparsity": False, "hasUmapClusters": False,
                             "num_prompts": (self.manifest.get("counts") or {}).get("contexts"),
                             "num_tokens_in_prompt": self.manifest.get("ctx_len"), "dataset": ",".join(map(str, corpora)),
                             "notes": f"exported by neuroscope from site {site.name}, layer {layer}", **common},
        }


def _positive_histogram(stats: dict) -> tuple[list[int], list[float]]:
    """(counts, bin centres) of the stored histogram's bins that lie above 0."""
    hist, edges = stats.get("hist"), stats.get("hist_edges")
    if hist is None or edges is None:
        return [], []
    keep = [(int(c), (a + b) / 2) for c, a, b in zip(hist, edges[:-1], edges[1:]) if a >= 0]
    return [c for c, _ in keep], [x for _, x in keep]


def write(source, work, out: Path, options: ExportOptions, bar) -> dict[str, Any]:
    """Write the bulk-import tree of every feature in ``work``; returns the summary's entries."""
    vocab, rows = source.vocab(), Rows(source.manifest, options)
    skipped: dict[str, list[int]] = {}
    folder = out / rows.model_id

    def flush(sid: str, number: int, items: list) -> None:
        write_jsonl_gz(folder / sid / "features" / f"batch-{number}.jsonl.gz", [row for row, _ in items])
        write_jsonl_gz(folder / sid / "activations" / f"batch-{number}.jsonl.gz", [a for _, acts in items for a in acts])

    batches = neuronpedia.Batches(flush)
    for site, layer, _ in work:
        sid = neuronpedia.source_id(site, layer, options)
        for name, row in rows.metadata(site, layer, sid).items():
            write_json(folder / sid / name, row)
    for feature in source.each(work, bar, logits=True):
        sid = neuronpedia.source_id(feature.site, feature.layer, options)
        if not feature.examples:
            skipped.setdefault(sid, []).append(feature.index)
        else:
            batches.add(sid, rows.feature(feature, sid, vocab))
    return {"model_id": rows.model_id, "sources": batches.close(), "skipped": skipped}
