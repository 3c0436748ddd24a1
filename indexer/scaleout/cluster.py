"""Start or join a Dask cluster, and describe it for the manifest."""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

from indexer.scaleout.spec import DaskSpec
from indexer.errors import ConfigError

CONNECT_TIMEOUT_S = 30
WORKERS_TIMEOUT_S = 120


@contextmanager
def open_client(spec: DaskSpec) -> Iterator[Any]:
    """A ``distributed.Client``: on a LocalCluster started here (closed on exit), or on the
    scheduler at ``spec.address``, once at least one worker is there."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--dask needs Dask: pip install 'neuroscope[dask]'") from None
    if spec.kind == "local":
        cluster = LocalCluster(host="127.0.0.1", dashboard_address=None, n_workers=spec.workers,
                               threads_per_worker=1, processes=True, silence_logs=logging.ERROR)
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(spec.address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise ConfigError(f"--dask {spec.address}: no Dask scheduler answers there ({type(e).__name__})") from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise ConfigError(
                f"--dask {spec.address}: the scheduler has no workers after {WORKERS_TIMEOUT_S} s"
            ) from None
        yield client
    finally:
        client.close()


def workers_of(client: Any) -> list[dict[str, Any]]:
    """The cluster's workers now: address, host, name, threads, memory limit."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return [
        {"address": address, "host": host_of(address), "name": str(w.get("name", "")),
         "nthreads": w.get("nthreads"), "memory_limit": w.get("memory_limit")}
        for address, w in sorted(info.items())
    ]


def workers_per_host(workers: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(w["host"] for w in workers))


def host_of(address: str) -> str:
    """The host of a worker address.

    >>> host_of("tcp://127.0.0.1:4567"), host_of("local")
    ('127.0.0.1', 'local')
    """
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest
