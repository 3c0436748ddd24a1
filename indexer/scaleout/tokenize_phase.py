"""The client side of the tokenize phase: pieces planned (``pieces.Frontier``), dealt to the
workers, their results gathered, the stream laid out (``layout.py``).

Each worker first loads its model (``worker.preload``: the tokenizer is the model's), then
takes the pieces dealt to it: each piece goes to the worker with the fewest tokens dealt so
far and stays there (a strict restriction: no work stealing), so every worker tokenizes its
share of the stream, give or take a piece (an eighth of a share); a piece whose worker leaves is dealt
again to another. The layout and the pieces' figures are kept in ``OUT/.shards/layout.npz``: a
resumed job does not tokenize again.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from indexer.config import IndexConfig
from indexer.inputs.contexts import ContextStream
from indexer.inputs.corpus import record_count
from indexer.scaleout.cluster import WORKERS_TIMEOUT_S, workers_of
from indexer.scaleout.follow import bar
from indexer.scaleout.layout import Layout
from indexer.scaleout.pieces import Frontier, Piece
from indexer.scaleout.tokenize import tokenize_piece
from indexer.scaleout.worker import checked

RETRIES = 3
REDEAL_S = 1.0  # how often the client looks for pieces whose worker left


def tokenize_stream(client: Any, cfg: IndexConfig, stream: ContextStream, root: Path, n_shards: int,
                    hosts: dict[str, int], progress: bool) -> tuple[Layout, list[dict[str, Any]]]:
    """Tokenize the job's stream once, in pieces over the workers; its layout and the pieces'
    figures. ``stream``: this process's, for what the pieces read (they tokenize with the
    workers' own)."""
    from distributed import wait

    frontier = Frontier([record_count(s) for s in stream.specs], stream.budgets(), n_shards, sum(hosts.values()))
    dealer = _Dealer(client, (cfg.to_dict(), str(root)), hosts, frontier)
    infos: list[dict[str, Any]] = []
    shown = bar(stream.max_tokens, "tokenizing", progress)
    try:
        while not frontier.finished():
            for piece in frontier.next_pieces():
                dealer.deal(piece)
            if not dealer.inflight:
                raise RuntimeError("the tokenize plan waits for no piece")  # a planning bug
            try:
                done = wait(list(dealer.inflight), timeout=REDEAL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                dealer.redeal_orphans()
                continue
            for future in done:
                result = checked(future.result())
                frontier.add(dealer.settle(future, result["text_tokens"]), result)
                infos.append(result.pop("info"))
                shown.update(result["text_tokens"])
    finally:
        shown.close()
    return frontier.layout([s.name for s in stream.specs]), infos


class _Dealer:
    """Deals pieces to workers: to the one with the fewest tokens dealt, strictly."""

    def __init__(self, client: Any, job: tuple[dict[str, Any], str], hosts: dict[str, int], frontier: Frontier):
        self.client, self.job, self.hosts, self.frontier = client, job, hosts, frontier
        self.token = uuid.uuid4().hex[:8]
        self.dealt: dict[str, float] = {}
        self.inflight: dict[Any, tuple[Piece, str, float]] = {}  # future -> (piece, its worker, tokens expected)
        self.deals = 0

    def deal(self, piece: Piece) -> None:
        workers = [w["address"] for w in workers_of(self.client)]
        if not workers:  # all gone for now (restarting): wait for one
            self.client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
            workers = [w["address"] for w in workers_of(self.client)]
        target = min(workers, key=lambda w: (self.dealt.setdefault(w, 0.0), w))
        expected = (self.frontier.corpora[piece.corpus].tokens_per_record() or 0.0) * (piece.records or 0)
        self.dealt[target] += expected  # a first piece: 0 until it is back
        self.deals += 1
        future = self.client.submit(
            tokenize_piece, *self.job, piece, self.hosts, retries=RETRIES, workers=[target],
            allow_other_workers=False, key=f"neuroscope-tokenize-{piece.corpus}-{piece.start}-{self.deals}-{self.token}")
        self.inflight[future] = (piece, target, expected)

    def settle(self, future: Any, tokens: int) -> Piece:
        """A piece is back: its worker's count is corrected from expected to actual tokens."""
        piece, target, expected = self.inflight.pop(future)
        self.dealt[target] += tokens - expected
        return piece

    def redeal_orphans(self) -> None:
        """Deal again the pieces whose worker left before they were done."""
        present = {w["address"] for w in workers_of(self.client)}
        for future, (piece, target, expected) in list(self.inflight.items()):
            if target not in present and not future.done():
                future.cancel()
                del self.inflight[future]
                self.dealt[target] -= expected
                self.deal(piece)
