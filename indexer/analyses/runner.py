"""`neuroscope analyze`: run the analyses of an index, each writing its tables under
``DIR/analyses/`` when it finishes.

Resumable and selective: when an analysis finishes, its tables are written (atomically, part
file by part file) and then a marker ``analyses/_done/NAME.json`` (with its time); a later run
skips analyses whose marker is there unless ``force``. Long analyses (minimal, trigram, saliency) also
save finished chunks of their forward passes under ``analyses/_partial/NAME/``, so a killed
run resumes mid-analysis; the chunks are removed once the analysis is done. The index itself
is never touched.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

from indexer.analyses import agreement, experts, flags, latents, logits, minimal, regex, saliency, trigram
from indexer.analyses.common import IndexContext, Options, partial_dir
from indexer.errors import ConfigError
from indexer.store.writer import IndexWriter, atomic_write_bytes

ANALYSES: dict[str, ModuleType] = {m.NAME: m for m in (flags, logits, latents, agreement, regex, trigram, minimal,
                                                      saliency, experts)}


def parse_only(text: str | None) -> list[str]:
    """'minimal,regex' -> ['minimal', 'regex'] in run order; None or 'all' -> every analysis."""
    if text is None or text.strip() == "all":
        return list(ANALYSES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANALYSES]
    if unknown or not names:
        raise ConfigError(f"--only {text!r}: unknown {', '.join(unknown) or '(none given)'}; expected {', '.join(ANALYSES)}")
    return [n for n in ANALYSES if n in names]


def done_marker(root: Path, name: str) -> Path:
    return Path(root) / "analyses" / "_done" / f"{name}.json"


def analyze(index_dir: Path | str, only: str | None = None, force: bool = False,
            options: Options | None = None) -> dict[str, dict]:
    """Run the chosen analyses; returns name -> {'status': 'done'|'skipped', 'seconds': ...}."""
    root = Path(index_dir)
    ix = IndexContext(root, options)
    report: dict[str, dict] = {}
    try:
        for name in parse_only(only):
            marker = done_marker(root, name)
            if marker.is_file() and not force:
                report[name] = {"status": "skipped", **json.loads(marker.read_text())}
                continue
            marker.unlink(missing_ok=True)
            started = time.perf_counter()
            tables = ANALYSES[name].run(ix)
            writer = IndexWriter(root)
            rows = {}
            for table, columns in tables.items():
                writer.write(table, columns)
                rows[table.NAME] = len(next(iter(columns.values()), []))
            seconds = round(time.perf_counter() - started, 2)
            atomic_write_bytes(marker, json.dumps({"seconds": seconds, "rows": rows}).encode())
            shutil.rmtree(partial_dir(root, name), ignore_errors=True)
            report[name] = {"status": "done", "seconds": seconds, "rows": rows}
            if ix.options.progress:
                print(f"analyze: {name} done in {seconds:.1f} s ({rows})", file=sys.stderr)
    finally:
        ix.close()
    return report
