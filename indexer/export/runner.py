"""``neuroscope export``: plan what to export, prepare the folder, stream the features through
the chosen format's writer under a progress bar, and write ``export.json`` last.

``export.json`` records the format, its version and source, the index, what was exported
(features per source) and what was skipped (features without any example).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm import tqdm

from indexer.errors import ConfigError
from indexer.export import delphi, files, headvis, neuron_record, neuronpedia, neuronpedia_bulk
from indexer.export.options import ExportOptions, from_args
from indexer.export.source import IndexSource


@dataclass(frozen=True)
class Format:
    """How a format plans: the features it takes ('neurons', 'heads' or 'all'), its default
    sites (None: every site it takes) and whether it takes one site only."""

    module: ModuleType
    takes: str
    default: tuple[str, ...] | None = None
    one_site: bool = False


FORMATS = {
    "neuronpedia": Format(neuronpedia, "all"),
    "neuronpedia-bulk": Format(neuronpedia_bulk, "all"),
    "neuron-record": Format(neuron_record, "neurons"),
    "delphi": Format(delphi, "neurons"),
    "headvis": Format(headvis, "heads", default=("heads/max_attn",), one_site=True),
}


def export(index_dir: Path | str, out: Path | str, options: ExportOptions) -> dict[str, Any]:
    """Export the index at ``index_dir`` into ``out``; returns the summary written to export.json."""
    out, index_dir = Path(out), Path(index_dir)
    fmt = FORMATS["neuronpedia-bulk" if options.bulk else options.format]
    with IndexSource(index_dir) as source:
        plan = source.plan(options.sites, options.layers, fmt.takes, fmt.default)
        if fmt.one_site and len({site for site, _ in plan}) > 1:
            raise ConfigError(f"--format {options.format} samples the sequences of one head metric: "
                              f"choose one with --site (one of {', '.join(sorted({s.name for s, _ in plan}))})")
        if options.source_set and len({site for site, _ in plan if not site.head}) > 1:
            raise ConfigError("--source-set names one source set: export one neuron or SAE site at a time (--site)")
        work = [(site, layer, source.indices(site, layer, options.features)) for site, layer in plan]
        work = [entry for entry in work if entry[2]]  # a (site, layer) --features leaves empty
        total = sum(len(indices) for _, _, indices in work)
        if total == 0:
            raise ConfigError(f"--features: no feature {_ranges(options.features)} in the sites and layers exported")
        kept = files.prepare(out, index_dir)
        bar = tqdm(total=total, desc=f"export {options.format}", unit="feature", disable=not options.progress,
                   file=sys.stderr)
        with bar:
            written = fmt.module.write(source, work, out, options, bar)
        manifest = source.manifest
    summary = {
        "format": options.format + (" --bulk" if options.bulk else ""), "format_version": fmt.module.VERSION,
        "format_source": fmt.module.SOURCE, "index": str(index_dir.resolve()),
        "index_created": manifest.get("created"), "model": (manifest.get("model") or {}).get("name"),
        "features": total, "plan": [{"site": s.name, "layer": layer, "features": len(ix)} for s, layer, ix in work],
        **written,
    }
    files.finish(out, summary, kept)
    return summary


def run_cli(args) -> int:
    """The ``neuroscope export`` command."""
    options = from_args(args)
    started = time.perf_counter()
    summary = export(args.dir, args.out, options)
    skipped = sum(len(v) for v in (summary.get("skipped") or {}).values())
    note = f" ({skipped} without examples skipped: listed in export.json)" if skipped else ""
    print(f"{summary['format']} export of {summary['features']} features written to {args.out} "
          f"in {time.perf_counter() - started:.1f} s{note}")
    return 0


def _ranges(features: tuple[tuple[int, int], ...] | None) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in features or ())
