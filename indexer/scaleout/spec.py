"""What ``--dask`` means, and the options that make no sense with it.

``local`` or ``local:N`` starts a LocalCluster on this machine (N worker processes, one thread
each, bound to 127.0.0.1, no dashboard); ``tcp://HOST:PORT`` joins a running scheduler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from indexer.config import IndexConfig
from indexer.errors import ConfigError

SHARDS_DIR = ".shards"  # under --out: one folder per shard (checkpoints, worker notes)
JOB_FILE = "job.json"  # under SHARDS_DIR: the config and the number of shards of the job


@dataclass(frozen=True)
class DaskSpec:
    """A parsed ``--dask`` value: ``kind`` is 'local' (with ``workers``) or 'tcp' (with ``address``)."""

    kind: str
    workers: int = 0
    address: str = ""


def parse_dask(text: str) -> DaskSpec:
    """'local' -> 2 workers or the CPU count if smaller; 'local:4'; 'tcp://10.0.0.5:8786'.

    >>> parse_dask("local:3"), parse_dask("tcp://10.0.0.5:8786").address
    (DaskSpec(kind='local', workers=3, address=''), 'tcp://10.0.0.5:8786')
    """
    text = str(text).strip()
    if text == "local":
        import os

        return DaskSpec("local", workers=max(1, min(2, os.cpu_count() or 1)))
    found = re.fullmatch(r"local:(\d+)", text)
    if found and int(found.group(1)) >= 1:
        return DaskSpec("local", workers=int(found.group(1)))
    if re.fullmatch(r"tcp://[A-Za-z0-9_.\-\[\]:]+:\d+", text):
        return DaskSpec("tcp", address=text)
    raise ConfigError(f"--dask {text!r}: expected local, local:N (N >= 1 workers) or tcp://HOST:PORT")


def check_options(cfg: IndexConfig) -> DaskSpec:
    """The parsed spec, or a one-line ConfigError for options that make no sense on a cluster."""
    spec = parse_dask(cfg.dask or "")
    if tuple(cfg.shard) != (0, 1):
        raise ConfigError("--shard and --dask do not mix: --dask splits the stream into shards itself (--dask-shards)")
    if cfg.device.startswith("cuda:"):
        raise ConfigError(
            f"--device {cfg.device} with --dask: each worker uses its own device; give --device cuda "
            "(one GPU per worker, e.g. dask-cuda's LocalCUDACluster) or auto"
        )
    return spec
