"""Documents -> token contexts, as the model sees them.

A context is BOS followed by at most ``ctx_len - 1`` tokens of one document; a longer
document continues in the next context. Several corpora are interleaved round-robin, one
context at a time, so that any prefix of the stream holds every corpus in proportion.
``ctx_id`` is the context's index in that interleaved stream: deterministic, whatever the
shard, resume point or batch size.

The token budget counts the tokens of text (BOS excluded), split evenly across corpora, and
stops the stream exactly: the last context of a corpus is cut to fit. With a budget and
``order='shuffle'`` each corpus is read in a seeded order spread over all of it (see
``corpus.read_documents``); ``counters[name].documents_used`` counts the documents the stream
actually drew from (not those tokenized ahead), and when the budget ends a corpus's stream its
other counts (documents, empty documents, bad records, repairs) are set back to what had been
read up to the last document a context came from (``CorpusCounters.mark`` / ``cover``): the
manifest describes exactly the documents the index covers. A corpus read to its end counts
everything. Texts come in pieces of at most ``MAX_DOC_CHARS`` characters, tokenized one call
at a time; a document's contexts run on across its pieces.

Pre-tokenized rows (token ids) skip the tokenizer and are cut like any document; ``tokens_bos``
says what happens to a row's leading BOS: 'auto' prepends BOS only to a row that lacks it,
'always' prepends it to every row, 'never' takes each row's chunks exactly as given (their
first token stands where BOS would and is not recorded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from indexer.errors import CorpusError
from indexer.inputs.corpus import MAX_DOC_CHARS, CorpusCounters, CorpusSpec, Span, read_documents

DOCS_PER_ENCODE = 8  # small: a token budget then tokenizes little past its end
CHARS_PER_ENCODE = MAX_DOC_CHARS  # characters per tokenizer call, at most about (its memory)


@dataclass(frozen=True)
class Context:
    """One context: ``token_ids[0]`` is BOS."""

    ctx_id: int
    corpus: str
    doc_id: int
    token_ids: np.ndarray  # [n_tokens] int32

    @property
    def n_text_tokens(self) -> int:
        return len(self.token_ids) - 1


@dataclass
class ContextStream:
    """A deterministic, re-iterable stream of contexts over several corpora.

    Attributes:
        specs: the corpora, in the order given.
        tokenizer: a Hugging Face tokenizer (only ``__call__`` with a list of texts is used).
        bos_id: the token put at position 0.
        ctx_len: the context length the model sees, BOS included.
        max_tokens: budget of text tokens over all corpora (None: everything).
        skip_bad_records: count malformed records instead of failing.
        shard: ``(i, n)``: keep the contexts with ``ctx_id % n == i``.
        order: 'shuffle' or 'file'; applies with a budget (without one every document is read,
            in file order).
        seed: seeds the shuffled order.
        tokens_bos: 'auto', 'always' or 'never', for pre-tokenized rows.
        vocab_size: token ids of pre-tokenized rows must be below it (None: unchecked).
    """

    specs: Sequence[CorpusSpec]
    tokenizer: Any
    bos_id: int
    ctx_len: int
    max_tokens: int | None = None
    skip_bad_records: bool = False
    shard: tuple[int, int] = (0, 1)
    counters: dict[str, CorpusCounters] = field(default_factory=dict)
    order: str = "file"
    seed: int = 0
    tokens_bos: str = "auto"
    vocab_size: int | None = None

    @property
    def effective_order(self) -> str:
        return self.order if self.max_tokens is not None else "file"

    def __iter__(self) -> Iterator[Context]:
        return self.contexts()

    def contexts(self, wanted: set[int] | None = None) -> Iterator[Context]:
        """Every context of this shard in stream order (only ``wanted`` ids if given)."""
        self.counters = {spec.name: CorpusCounters() for spec in self.specs}
        sources = [self._corpus_contexts(spec, budget) for spec, budget in zip(self.specs, self.budgets())]
        index, n = self.shard
        for ctx_id, (corpus, doc_id, tokens) in enumerate(_round_robin(sources)):
            if ctx_id % n != index or (wanted is not None and ctx_id not in wanted):
                continue
            yield Context(ctx_id, corpus, doc_id, tokens)

    def budgets(self) -> list[int | None]:
        return token_budgets(self.max_tokens, len(self.specs))

    def corpus_chunks(self, spec: CorpusSpec, span: Span = None) -> Iterator[tuple[int, int, np.ndarray, tuple]]:
        """``(doc_id, head, text ids, mark)``: every context of one corpus before any budget cuts
        it, from the records at positions ``span`` of its read order only if given (a piece of
        a corpus tokenized apart: ``indexer.scaleout``); ``mark`` is ``counters.mark()`` of
        ``self.counters[spec.name]`` as the context's document was read."""
        counters = self.counters[spec.name]
        docs = read_documents(spec, counters, self.skip_bad_records, self.effective_order, self.seed, span)
        return self._chunks(self._encoded(_marked(docs, counters), spec.name))

    def _corpus_contexts(self, spec: CorpusSpec, budget: int | None) -> Iterator[tuple[str, int, np.ndarray]]:
        counters = self.counters[spec.name]
        left = budget
        covered = counters.mark()  # the counts up to the last document a context came from
        last_doc = None
        for doc_id, head, chunk, mark in self.corpus_chunks(spec):
            if left is not None and left <= 0:
                counters.cover(covered)  # the budget ends the stream: read-ahead is not counted
                return
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            tokens = np.empty(len(chunk) + 1, dtype=np.int32)
            tokens[0] = head
            tokens[1:] = chunk
            if doc_id != last_doc:
                counters.documents_used += 1
                last_doc = doc_id
            covered = mark
            yield spec.name, doc_id, tokens

    def _chunks(self, pieces: Iterator[tuple[int, np.ndarray, tuple, bool]]) -> Iterator[tuple[int, int, np.ndarray, tuple]]:
        """``(doc_id, head, chunk, mark)``: each document's tokens cut into contexts. The pieces of
        one text (consecutive, same doc_id) run on: only the document's last context is short."""
        doc, rest, mark, own = None, np.zeros(0, np.int64), None, False
        for doc_id, ids, piece_mark, own_start in pieces:
            if doc_id != doc:
                yield from self._cut(doc, rest, mark, own, final=True)
                doc, rest, own = doc_id, ids, own_start
            else:
                rest = np.concatenate([rest, ids])
            mark = piece_mark
            rest = yield from self._cut(doc, rest, mark, own, final=False)
        yield from self._cut(doc, rest, mark, own, final=True)

    def _cut(self, doc_id, ids: np.ndarray, mark, own_start: bool, final: bool):
        """Yield the full contexts of ``ids`` (and, if ``final``, the short last one); return the rest."""
        room = self.ctx_len if own_start else self.ctx_len - 1
        end = len(ids) if final else len(ids) - len(ids) % room
        for start in range(0, end, room):
            chunk = ids[start:start + room]
            if own_start:  # the row's first token takes BOS's place
                if len(chunk) < 2:
                    continue
                yield doc_id, int(chunk[0]), chunk[1:], mark
            else:
                yield doc_id, self.bos_id, chunk, mark
        return ids[end:]

    def _encoded(self, docs: Iterator[tuple[int, Any, tuple]], corpus: str) -> Iterator[tuple[int, np.ndarray, tuple, bool]]:
        """``(doc_id, ids, mark, own_start)``: texts tokenized a few at a time (fast tokenizers
        parallelise a batch; at most ``CHARS_PER_ENCODE`` characters per call bounds the
        tokenizer's memory); token-id rows pass through (checked against the vocabulary, their
        leading BOS handled)."""
        batch: list[tuple[int, str, tuple]] = []
        chars = 0
        for doc_id, content, mark in docs:
            if isinstance(content, np.ndarray):
                yield from self._encode(batch)
                batch, chars = [], 0
                ids = self._row_ids(corpus, doc_id, content)
                if len(ids):
                    yield doc_id, ids, mark, self.tokens_bos == "never"
                continue
            batch.append((doc_id, content, mark))
            chars += len(content)
            if len(batch) == DOCS_PER_ENCODE or chars >= CHARS_PER_ENCODE:
                yield from self._encode(batch)
                batch, chars = [], 0
        yield from self._encode(batch)

    def _row_ids(self, corpus: str, doc_id: int, ids: np.ndarray) -> np.ndarray:
        if self.vocab_size is not None and len(ids) and ids.max() >= self.vocab_size:
            if self.skip_bad_records:
                self.counters[corpus].bad_records += 1
                return ids[:0]
            raise CorpusError(
                f"corpus {corpus}: row {doc_id} holds token id {int(ids.max())}, beyond the model's vocabulary "
                f"({self.vocab_size} tokens); was it tokenized for another model? (--skip-bad-records skips such rows)"
            )
        if self.tokens_bos == "auto" and len(ids) and ids[0] == self.bos_id:
            return ids[1:]
        return ids

    def _encode(self, batch: list[tuple[int, str, tuple]]) -> Iterator[tuple[int, np.ndarray, tuple, bool]]:
        if not batch:
            return
        texts = [text for _, text, _ in batch]
        encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        del texts
        for (doc_id, _, mark), ids in zip(batch, encoded):
            if ids:
                yield doc_id, np.asarray(ids, dtype=np.int64), mark, False


def token_budgets(max_tokens: int | None, n_corpora: int) -> list[int | None]:
    """Each corpus's share of the token budget (None: no budget).

    >>> token_budgets(10, 3), token_budgets(None, 2)
    ([4, 3, 3], [None, None])
    """
    if max_tokens is None:
        return [None] * n_corpora
    share, extra = divmod(max_tokens, n_corpora)
    return [share + (i < extra) for i in range(n_corpora)]


def _marked(docs: Iterator[tuple[int, Any]], counters: CorpusCounters) -> Iterator[tuple[int, Any, tuple]]:
    """Each document with ``counters.mark()`` taken as it is read: the counts up to and including it."""
    for doc_id, content in docs:
        yield doc_id, content, counters.mark()


def _round_robin(sources: list[Iterator]) -> Iterator:
    """One item from each live source in turn, until all are exhausted."""
    live = list(sources)
    while live:
        still = []
        for source in live:
            item = next(source, None)
            if item is not None:
                still.append(source)
                yield item
        live = still


def batches(contexts: Iterator[Context], batch_size: int) -> Iterator[list[Context]]:
    """Group contexts into lists of ``batch_size`` (the last may be shorter)."""
    batch: list[Context] = []
    for ctx in contexts:
        batch.append(ctx)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
