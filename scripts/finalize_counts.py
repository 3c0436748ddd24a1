"""How many contexts finalize ran the model over, against how many a finalize that re-runs
every kept context (the one before the context store and captured windows) would (JSON).

    PYTHONPATH=. .venv/bin/python scripts/finalize_counts.py DIR

DIR: a finished index. ``before``: the distinct contexts its examples (top-k and samples,
neurons and heads) use; ``after``: ``manifest.json`` → ``timing.finalize_forward_contexts``;
``top_only``/``samples``: the contexts that hold only top-k examples / some quantile sample.
Counts only, no timing: safe on a busy machine.
"""

from __future__ import annotations

import json
import sys

from indexer.api import Index


def counts(folder: str) -> dict[str, int | None]:
    with Index.open(folder) as ix:
        rows = "SELECT ctx_id, kind FROM examples UNION ALL SELECT ctx_id, kind FROM head_examples"
        got = ix.sql(f"SELECT count(DISTINCT ctx_id) AS kept, count(DISTINCT ctx_id) FILTER (WHERE kind = 'quantile') "
                     f"AS samples FROM ({rows})").iloc[0]
        return {"before": int(got["kept"]), "after": ix.manifest["timing"].get("finalize_forward_contexts"),
                "samples": int(got["samples"]), "top_only": int(got["kept"] - got["samples"]),
                "contexts": ix.manifest["counts"]["contexts"]}


if __name__ == "__main__":
    print(json.dumps(counts(sys.argv[1])))
