"""Which documents to tokenize, in which pieces: the tokenize phase's plan, made on the client
as the pieces' results come in (no Dask here).

A piece is a range ``[start, stop)`` of one corpus's read positions (file order, or the run's
seeded shuffle: ``indexer.inputs.corpus.read_documents``). A corpus whose records can be read
from any position (``record_count`` knows their number) is cut into many pieces, tokenized in
parallel; another (.json, .txt, a hub stream) is one piece read from its start, which stops
once a context starts past the corpus's budget.

With a token budget the documents a corpus needs are not known before they are tokenized: a
first piece of ``PROBE_DOCS`` documents per corpus measures its tokens per document, and the
next pieces are sized to hold about ``1 / PIECES_PER_SHARD`` of a shard's tokens each, just
enough of them to cover the budget and one context past it (the stream's end must be seen to
count the documents exactly). When the pieces come back short, more are planned.

Documents' lengths are heavy-tailed (a few books or generated files hold most of a corpus's
tokens), so the estimate can be far off. Two limits keep the tokens tokenized near the
stream's: at most one piece per worker is out per corpus, and a piece stops once a context
starts at the budget less the tokens already known to come before it (``_Corpus.stop_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from indexer.scaleout.layout import Layout, corpus_part, lay_out, needs_more

PROBE_DOCS = 8
PIECES_PER_SHARD = 2  # pieces of half a shard: the tokenizing spreads evenly over the workers


@dataclass(frozen=True)
class Piece:
    """Records ``[start, stop)`` of corpus ``corpus`` (``stop`` None: to the corpus's end, read
    from its start; ``stop_tokens``: stop once a context starts at that many text tokens)."""

    corpus: int
    start: int
    stop: int | None = None
    stop_tokens: int | None = None

    @property
    def span(self) -> tuple[int, int] | None:
        return None if self.stop is None else (self.start, self.stop)

    @property
    def records(self) -> int | None:
        return None if self.stop is None else self.stop - self.start


@dataclass
class _Corpus:
    records: int | None  # read positions; None: one piece from the start
    budget: int | None
    next_start: int = 0
    started: bool = False
    last_size: int = PROBE_DOCS
    inflight: dict[int, Piece] = field(default_factory=dict)
    done: dict[int, dict[str, Any]] = field(default_factory=dict)  # start -> result

    @property
    def sequential(self) -> bool:
        return self.records is None

    def tokens_done(self) -> int:
        """Text tokens of the pieces back."""
        return sum(r["text_tokens"] for r in self.done.values())

    def tokens_per_record(self) -> float | None:
        read = sum(r["records"] for r in self.done.values())
        return self.tokens_done() / read if read else None

    def stop_tokens(self) -> int | None:
        """Where a piece planned now may stop: the budget less the text tokens known to come
        before it (the pieces back, all before it in read order). Those still out add more,
        so a context starting there starts at the budget or past it: the stream's end."""
        return None if self.budget is None else max(0, self.budget - self.tokens_done())

    def failed(self) -> bool:
        return any(r.get("corpus_error") for r in self.done.values())

    def finished(self) -> bool:
        if self.inflight or not self.started:
            return False
        if self.sequential or self.failed() or self.next_start >= self.records:
            return True
        return not needs_more(self.results(), self.budget)

    def results(self) -> list[dict[str, Any]]:
        return [self.done[s] for s in sorted(self.done)]


class Frontier:
    """The pieces to tokenize: ``next_pieces()`` says what to submit now, ``add`` takes a
    result back, ``finished`` says when the stream's every context is tokenized."""

    def __init__(self, records: list[int | None], budgets: list[int | None], n_shards: int, n_workers: int = 1):
        self.corpora = [_Corpus(n, b) for n, b in zip(records, budgets)]
        self.n_pieces = max(1, n_shards * PIECES_PER_SHARD)
        self.max_inflight = max(1, n_workers)  # per corpus: what a wrong estimate can overshoot by

    def next_pieces(self) -> list[Piece]:
        out = []
        for index, c in enumerate(self.corpora):
            if not c.started:
                c.started = True
                if c.sequential:
                    out.append(self._track(c, Piece(index, 0, None, c.budget)))
                else:  # an empty corpus too: its piece reads nothing but says how it was read
                    out.append(self._track(c, Piece(index, 0, min(c.records, PROBE_DOCS))))
        target = self._piece_tokens()
        if target is None:  # a first piece is out: no size to plan by yet
            return out
        for index, c in enumerate(self.corpora):
            if c.sequential or c.failed() or c.next_start >= c.records:
                continue
            out += self._extend(index, c, target)
        return out

    def add(self, piece: Piece, result: dict[str, Any]) -> None:
        c = self.corpora[piece.corpus]
        del c.inflight[piece.start]
        c.done[piece.start] = result

    def finished(self) -> bool:
        return all(c.finished() for c in self.corpora)

    def results(self, corpus: int) -> list[dict[str, Any]]:
        """One corpus's piece results in read order."""
        return self.corpora[corpus].results()

    def fully_read(self, corpus: int) -> bool:
        """Whether the pieces reach the corpus's end."""
        c = self.corpora[corpus]
        if c.sequential:
            return all(r.get("exhausted") for r in c.done.values())
        return c.next_start >= c.records and not c.inflight

    def layout(self, names: list[str]) -> Layout:
        """The stream laid out from every piece tokenized (once ``finished``)."""
        files: list[str] = []
        parts = []
        for index, c in enumerate(self.corpora):
            results = c.results()
            ids = list(range(len(files), len(files) + len(results)))
            files += [r["file"] for r in results]
            parts.append(corpus_part(results, ids, c.budget, self.fully_read(index), names[index]))
        return lay_out(parts, names, files)

    def _piece_tokens(self) -> float | None:
        """Text tokens per piece to aim at; None until every corpus cut in pieces has an estimate."""
        expected = 0.0
        for c in self.corpora:
            if c.sequential:
                expected += c.budget or 0
                continue
            if not c.records:
                continue
            per_record = c.tokens_per_record()
            if per_record is None:
                return None
            whole = per_record * c.records
            expected += whole if c.budget is None else min(whole, c.budget)
        return max(1.0, expected / self.n_pieces)

    def _extend(self, index: int, c: _Corpus, target: float) -> list[Piece]:
        per_record = c.tokens_per_record() or 0.0
        want = math.inf if c.budget is None else c.budget + max(per_record, 1.0)  # + one record: the end seen
        expected = c.tokens_done() + per_record * sum(p.records for p in c.inflight.values())
        stop = c.stop_tokens()  # the same for every piece planned now: none of them is back
        out = []
        while c.next_start < c.records and (
                (expected < want and len(c.inflight) < self.max_inflight) or not (c.inflight or out or c.finished())):
            size = round(target / per_record) if per_record > 0 else 2 * c.last_size
            size = max(1, min(size, c.records - c.next_start))
            out.append(self._track(c, Piece(index, c.next_start, c.next_start + size, stop)))
            expected += size * per_record
        return out

    @staticmethod
    def _track(c: _Corpus, piece: Piece) -> Piece:
        c.inflight[piece.start] = piece
        if piece.stop is not None:
            c.next_start = piece.stop
            c.last_size = piece.stop - piece.start
        return piece
