"""The shards' recorder states merged pairwise on the workers: a tree of Dask tasks, each
reading two state files and writing their exact merge (``OUT/.shards/merged/``), one site at a
time. States travel through the shared output folder, not through Dask's memory: a shard's
state is the checkpoint it wrote anyway, and a state can be tens of GB for a big model."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from indexer.forward.sites import Site
from indexer.recorders import FeatureRecorders, default_backend
from indexer.run.checkpoint import read_state_file, write_state_file
from indexer.scaleout.worker import identity

MERGED_DIR = "merged"
RETRIES = 3


def merge_tree(client: Any, leaves: list[Any], root: Path, token: str) -> Any:
    """Submit the pairwise merges of ``leaves`` (futures of shard results, in shard order); the
    future of the root's result."""
    level, depth = list(leaves), 0
    while len(level) > 1:
        depth += 1
        pairs = [client.submit(merge_results, level[k], level[k + 1], str(root / MERGED_DIR / f"{depth}-{k // 2}.npz"),
                               key=f"neuroscope-merge-{depth}-{k // 2}-{token}", retries=RETRIES)
                 for k in range(0, len(level) - 1, 2)]
        level = pairs + level[len(level) - len(level) % 2:]
    return level[0]


def merge_results(a: dict[str, Any], b: dict[str, Any], out: str) -> dict[str, Any]:
    """Two shard results (or merged results) as one: their states merged exactly into ``out``
    (a Dask task). A result: ``state`` (its file), ``plan`` (the sites), ``shards`` and
    ``merges`` (the figures of the shards and merges under it)."""
    for part in (a, b):
        if "error" in part:
            return part
    started = time.perf_counter()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_state_file(Path(out), merged_arrays(Path(a["state"]), Path(b["state"]), a["plan"]))
    merge = {**identity(), "seconds": round(time.perf_counter() - started, 3)}
    return {"state": out, "plan": a["plan"], "shards": a["shards"] + b["shards"],
            "merges": a.get("merges", []) + b.get("merges", []) + [merge]}


def merged_arrays(a: Path, b: Path, plan: list[Site]) -> Iterator[tuple[str, np.ndarray]]:
    """The arrays of the merge of two state files, one site's state in memory at a time."""
    with np.load(io.BytesIO(read_state_file(a))) as left, np.load(io.BytesIO(read_state_file(b))) as right:
        for site in plan:
            rec = _recorders(left, site)
            rec.merge(_recorders(right, site))
            for key, value in rec.state().items():
                yield f"{site.key}/{key}", np.asarray(value)


def _recorders(npz: Any, site: Site) -> FeatureRecorders:
    prefix = f"{site.key}/"
    return FeatureRecorders.from_state({k[len(prefix):]: npz[k] for k in npz.files if k.startswith(prefix)},
                                       backend=default_backend("cpu"), device="cpu")
