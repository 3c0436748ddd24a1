"""The client's progress bar over a Dask job: the tokenize pieces' tokens, then every shard's
tokens as the shards report them (Dask events), until the job's last merges are done."""

from __future__ import annotations

import sys
import time
from typing import Any

POLL_S = 0.2


def bar(total: int | None, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, dynamic_ncols=True, disable=not progress, file=sys.stderr,
                desc=desc, smoothing=0.05)


def follow(client: Any, finals: list[Any], topic: str, total: int | None, n: int, progress: bool) -> None:
    """A progress bar over the index phase (every shard's tokens) until ``finals`` are done."""
    latest: dict[int, int] = {}

    def on_event(event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        latest[int(msg["shard"])] = int(msg["tokens"])

    client.subscribe_topic(topic, on_event)
    shown = bar(total, f"indexing ({n} shards on Dask)", progress)
    try:
        while not all(f.done() for f in finals):
            time.sleep(POLL_S)
            advance(shown, sum(latest.values()))
        time.sleep(POLL_S)  # the shards' last reports
        advance(shown, sum(latest.values()))
    finally:
        client.unsubscribe_topic(topic)
        shown.close()


def advance(shown: Any, done: int) -> None:
    """Move the bar to ``done`` tokens (back, when a shard restarts from its checkpoint)."""
    if done >= shown.n:
        shown.update(done - shown.n)
    else:
        shown.n = done
        shown.refresh()
