"""The shards' recorder states merged pairwise on the workers, site by site: for every site a
tree of Dask tasks, each merging that site's state from two inputs into one file
(``OUT/.shards/merged/SITE/``). Every site's merge is independent of the others', so a level
of the trees spreads over the workers instead of one task per pair holding the whole state,
and a task holds one site's state in memory, not the model's.

States travel through the shared output folder, not through Dask's memory: a shard's state is
the checkpoint it wrote anyway (read here member by member: it was written atomically by the
shard moments before), and a merged site's file is sealed and checked like any state file.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexer.forward.sites import Site
from indexer.recorders import FeatureRecorders, default_backend
from indexer.run.checkpoint import MAGIC, CorruptState, load_state_file, read_state_file, write_state_file
from indexer.scaleout.worker import identity

MERGED_DIR = "merged"
RETRIES = 3


def merge_trees(client: Any, leaves: list[Any], plan: list[Site], root: Path, token: str) -> dict[Site, Any]:
    """Submit every site's pairwise merges of ``leaves`` (futures of shard results, in shard
    order); per site, the future of its root (the one leaf itself for a single shard)."""
    trees = {}
    for site in plan:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", site.key)
        level, depth = list(leaves), 0
        while len(level) > 1:
            depth += 1
            pairs = [client.submit(merge_site, level[k], level[k + 1], site,
                                   str(root / MERGED_DIR / name / f"{depth}-{k // 2}.npz"),
                                   key=f"neuroscope-merge-{name}-{depth}-{k // 2}-{token}", retries=RETRIES)
                     for k in range(0, len(level) - 1, 2)]
            level = pairs + level[len(level) - len(level) % 2:]
        trees[site] = level[0]
    return trees


def merge_site(a: dict[str, Any], b: dict[str, Any], site: Site, out: str) -> dict[str, Any]:
    """One site's states of two results (shards' or merged) merged exactly into ``out`` (a Dask
    task). A merged result: ``state`` (its file), ``site`` and ``merges`` (figures)."""
    for part in (a, b):
        if "error" in part:
            return part
    started = time.perf_counter()
    left = site_recorders(a, site)
    left.merge(site_recorders(b, site))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_state_file(Path(out), ((f"{site.key}/{k}", np.asarray(v)) for k, v in left.state().items()))
    merge = {"site": site.key, **identity(), "seconds": round(time.perf_counter() - started, 3)}
    return {"state": out, "site": site.key, "merges": a.get("merges", []) + b.get("merges", []) + [merge]}


def site_recorders(result: dict[str, Any], site: Site) -> FeatureRecorders:
    """A site's recorders from a result's state file: a merged site's (checked), or a shard's
    whole state (that site's members only)."""
    path = Path(result["state"])
    prefix = f"{site.key}/"
    if "site" in result:
        with np.load(io.BytesIO(read_state_file(path))) as npz:
            return _from(npz, prefix)
    with open(path, "rb") as f:
        if not f.read(len(MAGIC) + 32).startswith(MAGIC):
            raise CorruptState(f"{path} has no neuroscope state header")
        with np.load(f) as npz:  # the zip after the header: its members are found from its end
            return _from(npz, prefix)


def _from(npz: Any, prefix: str) -> FeatureRecorders:
    state = {k[len(prefix):]: npz[k] for k in npz.files if k.startswith(prefix)}
    return FeatureRecorders.from_state(state, backend=default_backend("cpu"), device="cpu")


def merged_recorders(roots: dict[Site, dict[str, Any]], device: dict[Site, str]) -> dict[Site, FeatureRecorders]:
    """The job's recorders from every site's root result (in plan order), on each site's device
    (a single shard's state read once for all its sites)."""
    by_file: dict[str, list[Site]] = {}
    for site, result in roots.items():
        by_file.setdefault(result["state"], []).append(site)
    loaded: dict[Site, FeatureRecorders] = {}
    for path, sites in by_file.items():
        loaded.update(load_state_file(Path(path), sites, device)[0])
    return {site: loaded[site] for site in roots}
