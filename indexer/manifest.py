"""manifest.json: what an index holds and how it was made. Written last, so its presence and
``status`` say whether the index is complete."""

from __future__ import annotations

import datetime as dt
from importlib import metadata
from typing import TYPE_CHECKING, Any

from indexer.recorders import hist_edges
from indexer.sites import HEAD_METRICS, HEAD_METRIC_HELP

if TYPE_CHECKING:
    from indexer.engine import Run

FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    found = {}
    for package in ("neuroscope", "torch", "transformer-lens", "transformers", "numba", "pyarrow", "duckdb"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def build_manifest(run: "Run", finalize_seconds: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    counters = run.stream.counters
    corpora = [
        {"name": spec.name, "spec": str(spec), "tokens": run.corpus_tokens.get(spec.name, 0),
         **counters.get(spec.name, _empty()).to_dict()}
        for spec in run.stream.specs
    ]
    return {
        "format": "neuroscope-index",
        "format_version": FORMAT_VERSION,
        "status": "complete",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": run.model.info.to_dict(),
        "corpora": corpora,
        "config": run.cfg.to_dict(),
        "ctx_len": run.ctx_len,
        "device": run.device,
        "sites": [{"name": s.name, "layer": s.layer, "n_features": s.n_features} for s in run.plan],
        "head_metrics": {name: HEAD_METRIC_HELP[name] for name in HEAD_METRICS},
        "quantiles": run.cfg.quantile_list(),
        "hist_edges": hist_edges().tolist(),
        "counts": {"tokens": run.tokens_done, "contexts": run.position, "batches": run.batches_done},
        "timing": {
            "stream_seconds": round(run.seconds, 3),
            "finalize_seconds": round(finalize_seconds, 3),
            "tokens_per_second": round(run.tokens_done / run.seconds, 1) if run.seconds else None,
        },
        "versions": versions(),
        **(extra or {}),
    }


def _empty():
    from indexer.corpus import CorpusCounters

    return CorpusCounters()
